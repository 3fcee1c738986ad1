"""Trust checks of an ``ecgqa generate ptbxl`` release, each against something the generator did not write:
the ECG-QA release's own option lists, the split files, the PTB-XL metadata read here with pandas, and
``ecgqa generate check`` recomputing every answer and text of the generated release (self-consistency).

The question-id rules are also run on the bundled ECG-QA release, so they hold the generator to the
release's own convention."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest

from ecgqa.data.release import SPLITS, AnswerSpace, load_shard, shards
from ecgqa.generation.check import check_release


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecgqa", *args], capture_output=True, text=True)


def _samples(release: Path, variant: str = "template") -> dict[str, list[dict]]:
    """split → samples, read through the release reader (``ecgqa.data.release``), not the writer."""
    out: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for path in shards(release, (variant,)):
        out[path.parent.name].extend(load_shard(path))
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory, sample_paths) -> Path:
    """A PTB-XL root with 60 bundled ECGs: every ECG of the 7 patients with several, then the first others."""
    out = tmp_path_factory.mktemp("ptbxl_trust")
    src = sample_paths.ptbxl_records
    db = pd.read_csv(src / "ptbxl_database.csv")
    repeat = db["patient_id"].map(db["patient_id"].value_counts()) > 1
    keep = pd.concat([db[repeat], db[~repeat].head(60 - int(repeat.sum()))]).sort_values("ecg_id")
    keep.to_csv(out / "ptbxl_database.csv", index=False)
    (out / "scp_statements.csv").symlink_to(src / "scp_statements.csv")
    (out / "records500").symlink_to(src / "records500")
    return out


@pytest.fixture(scope="module")
def release(tmp_path_factory, root) -> Path:
    out = tmp_path_factory.mktemp("trust") / "ptbxl"
    r = _run("generate", "ptbxl", "--records", str(root), "--out", str(out), "--no-measure", "-q")
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def samples(release) -> dict[str, list[dict]]:
    return _samples(release)


@pytest.fixture(scope="module")
def metadata(root) -> pd.DataFrame:
    return pd.read_csv(root / "ptbxl_database.csv", index_col="ecg_id")


def test_answers_are_options_of_the_release_templates(release, samples, sample_paths):
    """Every answer is one of its template's options in ECG-QA's own answers_for_each_template.csv."""
    official = AnswerSpace.from_release(sample_paths.ptbxl_release)
    written = AnswerSpace.from_release(release)
    for tid, options in written.template_classes.items():
        assert set(options) == set(official.template_classes[tid]), tid
    n = 0
    for split, rows in samples.items():
        for s in rows:
            where = f"{split} sample {s['sample_id']} (template {s['template_id']})"
            answer = s["answer"]
            assert set(answer) <= set(official.template_classes[s["template_id"]]), where
            assert len(set(answer)) == len(answer) and ("none" not in answer or answer == ["none"]), where
            if s["question_type"].endswith("choose"):  # one of the two options asked, both, or none
                assert set(answer) <= {*s["attribute"], "none"}, where
            n += 1
    assert n > 1000


def test_every_ecg_is_in_its_splits_tsv(release, samples, root):
    split_of = {}
    for split in SPLITS:
        lines = (release / f"{split}_ecgs.tsv").read_text().splitlines()
        assert [int(line.split("\t")[0]) for line in lines] == list(range(len(lines)))  # index<TAB>ecg_id
        for line in lines:
            assert split_of.setdefault(int(line.split("\t")[1]), split) == split  # in one split only
    assert set(split_of) == set(pd.read_csv(root / "ptbxl_database.csv")["ecg_id"])
    for split, rows in samples.items():
        for s in rows:
            for e in s["ecg_id"]:
                assert split_of[e] == split, f"{split} sample {s['sample_id']}: ECG {e} is in {split_of[e]}"


def test_comparison_pairs_follow_the_metadata(samples, metadata):
    """Consecutive: one patient, earlier → later recording; irrelevant: two patients (pandas on the CSV)."""
    date = pd.to_datetime(metadata["recording_date"])
    patient = metadata["patient_id"]
    seen = defaultdict(set)
    for split, rows in samples.items():
        for s in rows:
            kind = s["question_type"].split("-")[0]
            if not kind.startswith("comparison"):
                assert len(s["ecg_id"]) == 1
                continue
            a, b = s["ecg_id"]
            where = f"{split} sample {s['sample_id']}: ECGs {a}, {b}"
            if kind == "comparison_consecutive":
                assert patient[a] == patient[b] and date[a] < date[b], where
            else:
                assert kind == "comparison_irrelevant" and patient[a] != patient[b], where
            seen[kind].add((a, b))
    # every earlier → later pair of a patient in one split is there (the release pairs any two, not only adjacent)
    assert seen["comparison_consecutive"] and len(seen["comparison_irrelevant"]) > 50
    split_of = {e: split for split, rows in samples.items() for s in rows for e in s["ecg_id"]}
    want = {
        (a, b)
        for a in split_of
        for b in split_of
        if patient[a] == patient[b] and date[a] < date[b] and split_of[a] == split_of[b]
    }
    assert seen["comparison_consecutive"] <= want and len(want) >= 10


def test_paraphrased_samples_are_the_template_samples_reworded(release, samples):
    """Same sample_id → every field equal but the question text (as in the release's two variants)."""
    template = {(split, s["sample_id"]): s for split, rows in samples.items() for s in rows}
    n = n_same = 0
    for split, rows in _samples(release, "paraphrased").items():
        for s in rows:
            t = template[(split, s["sample_id"])]
            assert {k: v for k, v in s.items() if k != "question"} == {k: v for k, v in t.items() if k != "question"}
            if s["question"] == t["question"]:  # the release keeps the template wording as one of a few patterns
                n_same += 1
            n += 1
    assert n > 50 and n_same < n / 4


_LEAD = re.compile(r" in lead \w+")


def _question_ids_are_consistent(by_split: dict[str, list[dict]]) -> int:
    """One text → one question_id in every split; one question_id → one (template, question up to the lead,
    options): the release numbers a lead question's twelve leads with one id (template 26, 28)."""
    id_of: dict[str, int] = {}
    what_of: dict[int, tuple] = {}
    for split, rows in by_split.items():
        for s in rows:
            where = f"{split} sample {s['sample_id']}"
            text = s["question"]
            assert id_of.setdefault(text, s["question_id"]) == s["question_id"], (where, text)
            if s["question_type"].endswith("choose"):  # either option order: the options identify it
                options = frozenset(s["attribute"])
                head = _LEAD.sub("", text).split(",")[0]
                what = (s["template_id"], head, options)
            else:
                what = (s["template_id"], _LEAD.sub("", text))
            assert what_of.setdefault(s["question_id"], what) == what, (where, what_of[s["question_id"]], what)
    return len(what_of)


def test_question_ids_are_consistent_across_splits(samples):
    assert _question_ids_are_consistent(samples) > 100


def test_question_id_rules_hold_on_the_ecgqa_release(sample_paths):
    assert _question_ids_are_consistent(_samples(sample_paths.ptbxl_release)) == 11


def test_generate_check_agrees_fully_with_a_generated_release(release, root, samples, tmp_path):
    """Self-consistency: ``generate check`` recomputes every answer and text of the generated release."""
    r = _run("generate", "check", "--release", str(release), "--records", str(root), "--no-measure", "-q",
             "--json", str(tmp_path / "check.json"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["samples_checked"] == sum(len(rows) for rows in samples.values())
    templates = {s["template_id"] for rows in samples.values() for s in rows}
    assert {row["template_id"] for row in report["per_template"]} == templates and len(templates) > 30
    for row in report["per_template"]:
        assert row["agree"] == row["text_agree"] == row["attribute_agree"] == row["checked"] > 0, row
        assert not row["disagree_ids"] and not row["errors"] and row["not_askable"] == row["error"] == 0, row
    assert "disagreeing" not in r.stdout and "(100.0 %)" in r.stdout


def test_generate_check_names_a_changed_generated_answer(release, root, tmp_path):
    """The self-check is not vacuous: one flipped answer in the generated release is found and named."""
    import shutil

    copy = tmp_path / "ptbxl"
    shutil.copytree(release, copy)
    shard = shards(copy, ("template",), ("valid",))[0]
    rows = load_shard(shard)
    victim = next(s for s in rows if s["answer"] in (["yes"], ["no"]) and s["question_type"] == "single-verify")
    victim["answer"] = ["no"] if victim["answer"] == ["yes"] else ["yes"]
    shard.write_text(json.dumps(rows))
    report = check_release(copy, root, measure=False, progress=False)
    bad = {(r["template_id"], sid) for r in report["per_template"] for sid in r["disagree_ids"]}
    assert bad == {(victim["template_id"], victim["sample_id"])}


@pytest.mark.slow  # measures 20 records twice
def test_generate_check_agrees_on_measured_templates(tmp_path, root):
    """With measurements (numeric features, heart axis): the 20 ECGs of the patients with several ECGs."""
    small = tmp_path / "ptbxl"
    small.mkdir()
    db = pd.read_csv(root / "ptbxl_database.csv")
    db[db["patient_id"].duplicated(keep=False)].to_csv(small / "ptbxl_database.csv", index=False)
    for name in ("scp_statements.csv", "records500"):
        (small / name).symlink_to((root / name).resolve())
    out = tmp_path / "release"
    r = _run("generate", "ptbxl", "--records", str(small), "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    report = check_release(out, small, progress=False)
    rows = {row["template_id"]: row for row in report["per_template"]}
    assert {22, 39, 50, 64, 68} <= set(rows), sorted(rows)  # numeric / axis templates were generated and checked
    assert report["samples_checked"] == sum(len(v) for v in _samples(out).values())
    for row in rows.values():
        assert row["agree"] == row["text_agree"] == row["attribute_agree"] == row["checked"] > 0, row


def test_single_questions_name_their_attribute_as_the_release_does(samples):
    for split, rows in samples.items():
        for s in rows:
            if s["question_type"].startswith("single"):
                assert s["attribute"], f"{split} sample {s['sample_id']} (template {s['template_id']}): no attribute"
            if s["template_id"] == 28:
                assert s["attribute"] == ["any kind of noises"], s


@pytest.mark.slow  # maps and prepares the generated release
def test_a_generated_release_prepares_for_the_upperbound_task(release, root, tmp_path):
    mapped, prepared = tmp_path / "mapped", tmp_path / "prepared"
    r = _run("map", "ptbxl", str(release), "--records", str(root), "--out", str(mapped), "-q")
    assert r.returncode == 0, r.stderr
    r = _run("prepare", str(mapped), "--out", str(prepared), "--task", "upperbound", "-q")
    assert r.returncode == 0, r.stderr


def test_the_leads_of_a_lead_question_share_its_question_id(samples):
    ids = defaultdict(set)
    for rows in samples.values():
        for s in rows:
            if s["template_id"] in (26, 28):
                ids[(s["template_id"], _LEAD.sub("", s["question"]))].add(s["question_id"])
    assert ids and all(len(v) == 1 for v in ids.values()), {k: sorted(v) for k, v in ids.items()}


def test_every_attribute_is_what_the_release_writes_for_its_template(samples):
    """Each sample's attribute against ``data/release_attributes.json``, read here and applied to the slot
    values parsed off the question text (not through the engine's ``attribute_of``)."""
    from ecgqa.generation.templates import DATA, load_templates, swap_words

    spec = {int(k): v for k, v in json.loads((DATA / "release_attributes.json").read_text())["templates"].items()}
    templates = load_templates("ptbxl")
    seen = set()
    for split, rows in samples.items():
        for s in rows:
            t, entry = templates[s["template_id"]], spec[s["template_id"]]
            where = f"{split} sample {s['sample_id']} (template {t.id})"
            m = t.pattern().match(s["question"])
            values = list(dict.fromkeys(v for tok, v in zip(t.tokens, m.groups(), strict=True) if tok != "${lead}"))
            if entry["kind"] == "null":
                assert s["attribute"] is None, where
            elif entry["kind"] == "fixed":
                assert s["attribute"] == entry["value"], where
            elif entry["kind"] == "slot" and t.kind == "choose":  # values in the text's order (slot-wise)
                a, b = s["attribute"]
                lead = dict(zip(t.tokens, m.groups(), strict=True)).get("${lead}")
                # the release's word swap (template 37's doubled word) is the one way the text may differ
                assert s["question"] in (t.fill((a, b), lead), swap_words(t.fill((b, a), lead), b, a)), where
                assert s["answer"] in ([v for v in (a, b) if v in s["answer"]], ["none"]), where
            elif entry["kind"] == "slot":
                assert s["attribute"] == values, where
            seen.add(entry["kind"])
    assert {"null", "fixed", "slot"} <= seen
