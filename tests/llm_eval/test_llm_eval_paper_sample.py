"""The ECG-QA paper's published LLM sample (the shipped id list, which sample by default, clear errors) and the
order the harness asked its questions and listed their options in."""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from ecgqa.evaluation import paper_sample
from llm_eval.paper import build_paper_prompt
from llm_eval.sampling import resolve_sample, select_sample
from tests.llm_eval.paper_helpers import _shipped_ids, q

# ----------------------------------------------------------------------------- the published sample


def test_the_shipped_list_is_the_published_one():
    data = paper_sample.PAPER_SAMPLE_FILE.read_bytes()
    assert (
        hashlib.sha256(data).hexdigest()
        == paper_sample.PAPER_SAMPLE_SHA256
        == ("01c805f4cb4cb0aab6da13102710e189d71b1e518bd3db23e1e3b80fc4acb569")
    )
    ids = _shipped_ids()
    assert paper_sample.paper_sample_ids() == ids and len(ids) == 8154 == len(set(ids))
    assert ids == sorted(ids) and (ids[0], ids[-1]) == (6, 81529)
    assert paper_sample.ids_sha256(ids) == paper_sample.PAPER_SAMPLE_SHA256
    source = (paper_sample.PAPER_SAMPLE_FILE.parent / "SOURCE.md").read_text()
    assert "CC BY 4.0" in source and "a5cdb46" in source and paper_sample.PAPER_SAMPLE_SHA256 in source
    assert paper_sample.applies("ptbxl", "test")
    assert not paper_sample.applies("ptbxl", "valid") and not paper_sample.applies("mimic-iv-ecg", "test")


def test_a_corrupted_list_is_an_error(tmp_path, monkeypatch):
    bad = tmp_path / "sampled_ecgqa_ids.txt"
    shutil.copy(paper_sample.PAPER_SAMPLE_FILE, bad)
    with bad.open("a") as f:
        f.write("99999\n")
    monkeypatch.setattr(paper_sample, "PAPER_SAMPLE_FILE", bad)
    with pytest.raises(paper_sample.PaperSampleError, match=r"sampled_ecgqa_ids.txt: sha256 .* is not the published"):
        paper_sample.paper_sample_ids()
    monkeypatch.setattr(paper_sample, "PAPER_SAMPLE_FILE", tmp_path / "gone.txt")
    with pytest.raises(paper_sample.PaperSampleError, match="gone.txt: cannot read"):
        paper_sample.paper_sample_ids()


def test_which_sample_by_default_and_clear_errors():
    assert resolve_sample(None, "ptbxl", "test") == "paper"
    assert resolve_sample(None, "ptbxl", "valid") == "draw"
    assert resolve_sample(None, "mimic-iv-ecg", "test") == "draw"
    assert resolve_sample("draw", "ptbxl", "test") == "draw"
    assert resolve_sample(None, "ptbxl", "test", ids_file=True) == "ids-file"
    with pytest.raises(
        ValueError,
        match="--sample paper: the published LLM sample lists PTB-XL test questions only, "
        "and this data is mimic-iv-ecg test",
    ):
        resolve_sample("paper", "mimic-iv-ecg", "test")
    with pytest.raises(ValueError, match="--ids-file names the questions itself"):
        resolve_sample("paper", "ptbxl", "test", ids_file=True)


def test_paper_sample_selects_the_listed_questions_and_counts_the_missing():
    listed = _shipped_ids()
    rng = np.random.default_rng(3)
    present = sorted(int(i) for i in rng.choice(listed, 40, replace=False))
    others = [i for i in range(81530, 81560)]  # test ids the list does not hold
    qs = [q(i, "single-verify", f"question {i}?", ("no", "yes"), ("no",)) for i in present + others]
    rng.shuffle(qs)
    sel = select_sample(qs, "paper")
    assert [x.sample_id for x in sel.questions] == present
    assert len(sel.missing) == len(set(listed) - set(present)) == 8154 - 40
    assert set(sel.missing) == set(listed) - set(present)
    assert sel.sha256 == paper_sample.PAPER_SAMPLE_SHA256 and sel.n_listed == 8154
    draw = select_sample(qs, "draw")
    ids = "".join(f"{x.sample_id}\n" for x in draw.questions).encode()
    assert draw.sha256 == hashlib.sha256(ids).hexdigest() and draw.missing == ()


def test_a_published_sample_with_no_question_in_the_data_is_an_error(prepared_qa, tmp_path, monkeypatch):
    """PTB-XL test data holding none of the listed ids: one clear error for llm-eval and score, nothing written
    (not an empty report with EM "0.0" / None)."""
    import ecgqa
    from llm_eval.run import run_llm_eval

    monkeypatch.setattr(paper_sample, "applies", lambda version, split: True)  # the bundle's valid split as "test"
    monkeypatch.setattr(paper_sample, "paper_sample_ids", lambda: [1, 2, 3])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with pytest.raises(
        ValueError, match=r"none of the 3 ids of the published LLM sample is a question of .*--sample draw"
    ):
        run_llm_eval(
            prepared_qa,
            None,
            "m",
            tmp_path / "run",
            inputs="none",
            split="valid",
            base_url="http://127.0.0.1:9/v1",
            progress=False,
        )
    assert not (tmp_path / "run").exists()
    answers = tmp_path / "a.jsonl"
    answers.write_text('{"sample_id": 1, "reply": "yes"}\n')
    with pytest.raises(ValueError, match=r"--sample paper: none of the 3 ids of the paper's LLM sample is a question"):
        ecgqa.score(prepared_qa, "valid", answers, tmp_path / "score", sample="paper")
    assert not (tmp_path / "score").exists()


def test_as_published_questions_are_asked_in_the_harness_manifest_order():
    """The original script wrote its sampled manifest stratum by stratum (qt3 0..53), each stratum in
    random.sample's order; the harness asked its rows in fairseq's ``ordered_indices`` order, a
    ``np.random.permutation`` drawn under ``numpy_seed(1)`` (its dataset shuffles by default).
    paper-as-published plans in that order (the D2 cache makes a prompt depend on it), and says when it
    cannot know it."""
    import itertools
    import random

    from ecgqa.data.constants import ATTRIBUTE_TYPES
    from llm_eval.sampling import Selection, harness_order

    kinds = [
        f"{scope}-{kind}"
        for scope in ("single", "comparison_consecutive", "comparison_irrelevant")
        for kind in ("verify", "choose", "query")
    ]
    rng = np.random.default_rng(7)
    manifest = []  # manifest order; sample ids deliberately not ascending in it
    for n, (qtype, atype) in enumerate(itertools.product(kinds, ATTRIBUTE_TYPES[:3])):
        for _k in range(15 + n % 7):
            manifest.append(
                q(
                    int(rng.integers(0, 10**6)) * 100 + len(manifest),
                    qtype,
                    f"q{len(manifest)}?",
                    ("no", "yes"),
                    attribute_type=atype,
                )
            )
    # written out from random_sample.py: random.seed(42); {key: random.sample(fnames, round(n / 10))}; file order
    by_key = {}
    for x in manifest:
        by_key.setdefault(x.qt3, []).append(x.sample_id)
    random.seed(42)
    expected = [
        i for key in range(54) for i in random.sample(by_key.get(key, []), round(len(by_key.get(key, [])) / 10))
    ]
    assert expected != sorted(expected)
    # fairseq-signals: `with numpy_seed(cfg.common.seed): indices = dataset.ordered_indices()`, seed 1 by
    # default, and ordered_indices returns np.random.permutation(len(self)) when shuffling (the default).
    state = np.random.get_state()
    np.random.seed(1)
    permutation = np.random.permutation(len(expected))
    np.random.set_state(state)
    asked = [expected[i] for i in permutation]
    assert asked != expected

    drawn = select_sample(manifest, "draw")
    ordered, how = harness_order(manifest, drawn)
    assert [x.sample_id for x in ordered] == asked and how.startswith("harness")
    assert "RandomState(1).permutation" in how
    # the harness's own sampled manifest as --ids-file: its rows, in the same permutation
    from llm_eval.sampling import IdList

    rows = [manifest.index(next(x for x in manifest if x.sample_id == i)) for i in expected]
    given = select_sample(manifest, "ids-file", ids=IdList(rows, "manifest_index"))
    ordered, how = harness_order(manifest, given)
    assert [x.sample_id for x in ordered] == asked and how.startswith("harness: the --ids-file manifest")
    # an id list the draw does not give: ascending, and the report is told why
    other = Selection(sorted(manifest, key=lambda x: x.sample_id)[:5], "ids-file", "")
    ordered, how = harness_order(manifest, other)
    assert [x.sample_id for x in ordered] == sorted(x.sample_id for x in manifest)[:5] and how.startswith("ascending")


# ----------------------------------------------------------------------------- the harness's option order


def _template_lists(path: Path) -> dict[int, list[str]]:
    """answers_for_each_template.csv read independently: template id -> its class list as written."""
    import ast

    with path.open(newline="") as f:
        return {int(r["template_id"]): ast.literal_eval(r["classes"]) for r in csv.DictReader(f)}


@pytest.mark.parametrize("version", ["ptbxl", "mimic-iv-ecg"])
def test_paper_options_are_listed_in_the_template_order_as_the_harness_did(sample_paths, version):
    """fairseq-signals' preprocessing stored a non-choose question's valid classes as its template's list
    (answers_for_each_template.csv, "none" removed) and sorted only choose questions; the harness printed
    them in that order. Class-index order differs for templates 6, 11, 18, 47, 48, 49, 61, 62 and 63."""
    from ecgqa.data.release import AnswerSpace
    from llm_eval.sampling import questions_from_rows

    folder = sample_paths.release / version
    space = AnswerSpace.from_release(folder)
    lists = _template_lists(folder / "answers_for_each_template.csv")
    differ = []  # templates whose list order is not class-index order
    rows = []
    for tid, names in sorted(lists.items()):
        kept = [c for c in names if c != "none"]
        if len(kept) < 2:
            continue
        sample = {"question_type": "single-query", "template_id": tid, "attribute": []}
        rows.append(
            {
                "sample_id": tid,
                "question": f"Which of these, template {tid}?",
                "question_type": "single-query",
                "attribute_type": "scp_code",
                "template_id": tid,
                "answer": [],
                "valid_classes": space.valid_classes(sample),
                "ecg_id": [16],
            }
        )
    choose = {
        "sample_id": 999,
        "question": "Which one, b or a?",
        "question_type": "single-choose",
        "attribute_type": "scp_code",
        "template_id": 6,
        "answer": [],
        "valid_classes": [5, 2],
        "ecg_id": [16],
    }
    questions = questions_from_rows([*rows, choose], list(space.classes), space.template_classes)
    for x in questions:
        line = next(t for t in build_paper_prompt(x, [])[0]["content"].splitlines() if t.startswith("Options: "))
        if x.question_type.endswith("choose"):
            assert line == "Options: " + ", ".join([space.classes[2], space.classes[5]]) + ", None"
            continue
        want = [c for c in lists[x.template_id] if c != "none"]
        assert line == "Options: " + ", ".join(want) + ", None"
        if want != sorted(want, key=space.classes.index):
            differ.append(x.template_id)
        assert sorted(x.options, key=space.classes.index) == list(x.options)  # scoring keeps class order
    if version == "ptbxl":
        assert differ == [6, 11, 18, 47, 48, 49, 61, 62, 63]
    else:  # MIMIC-IV-ECG's class order has capitals first: other templates differ too
        assert len(differ) > 9


def test_prepared_data_gets_the_template_lists_only_from_the_file_it_was_built_from(sample_paths):
    from ecgqa.files import sha256_file
    from llm_eval.sampling import template_classes_of

    path = sample_paths.ptbxl_release / "answers_for_each_template.csv"
    meta = {"version": "ptbxl", "sources": [{"path": "answers_for_each_template.csv", "sha256": sha256_file(path)}]}
    got = template_classes_of(meta)
    assert {k: list(v) for k, v in got.items()} == _template_lists(path)
    other = {**meta, "sources": [{"path": "answers_for_each_template.csv", "sha256": "0" * 64}]}
    assert template_classes_of(other) is None  # another release file: its order is not known
    assert template_classes_of({"version": "ptbxl"}) is None


def test_as_published_replies_are_parsed_with_the_options_in_the_listed_order(tmp_path):
    """The harness built its reply pattern from valid_classes in their stored order: where one name is a prefix
    of another, the one listed first wins at a position. paper-as-published parses in the prompt's order."""
    import dataclasses

    from llm_eval.prompts import prompt_hash
    from llm_eval.run import PromptItem, score_items
    from llm_eval.store import Response, ResponseStore

    base = q(7, "single-query", "Which of these?", ("st elevation", "st"), ("st elevation",))
    listed = dataclasses.replace(base, listed_options=("st", "st elevation"))
    store = ResponseStore(tmp_path / "s.sqlite")
    rows = {}
    for name, x in (("class order", base), ("listed", listed)):
        messages = build_paper_prompt(x, [])
        item = PromptItem(x, messages, prompt_hash(messages))
        store.put("m", item.hash, messages, Response("st elevation"))
        ((row, transcript),) = score_items([item], store, "m", {}, "classifier", "paper-as-published")
        rows[name] = (row, transcript)
    store.close()
    # (st elevation)|(st)|(none) finds "st elevation"; (st)|(st elevation)|(none) finds "st" first, as upstream.
    assert rows["class order"][0].predicted == ["st elevation"] and rows["class order"][0].correct
    assert rows["listed"][0].predicted == ["st"] and not rows["listed"][0].correct
    assert rows["listed"][1]["options"] == ["st", "st elevation", "None"]
    assert "Options: st, st elevation, None" in rows["listed"][1]["messages"][0]["content"]
