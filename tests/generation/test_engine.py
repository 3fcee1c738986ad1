"""The engine's fast paths against :func:`ecgqa.generation.answers.answer` called on every ECG (or pair).

The engine computes each question's answer once per distinct combination of the label entries it reads
(``answers.reads``) and, for comparison queries, once per transition pattern; these tests compare its
answer groups with the plain loop over every unit, for every question of every template, on the bundled
sample's real labels plus numeric-feature and heart-axis labels that :func:`ecgqa.data.attributes.derive`
gives for seeded measurement statuses (every status, unmeasurable ones included).
"""

from __future__ import annotations

import random

import pytest

from ecgqa.data.attributes import AXIS_CLASSES, Statements, derive
from ecgqa.data.features import FEATURES
from ecgqa.data.measure import Measurements
from ecgqa.generation import answers as A
from ecgqa.generation import engine as E
from ecgqa.generation import sampling
from ecgqa.generation.ptbxl import read_ptbxl
from ecgqa.generation.templates import load_templates

N_ECGS = 60


@pytest.fixture(scope="module")
def measured_input(tmp_path_factory, sample_paths):
    """The first N_ECGS bundled ECGs with derived labels, plus signal labels from seeded statuses."""
    import pandas as pd

    root = tmp_path_factory.mktemp("ptbxl_subset")
    src = sample_paths.ptbxl_records
    pd.read_csv(src / "ptbxl_database.csv").head(N_ECGS).to_csv(root / "ptbxl_database.csv", index=False)
    (root / "scp_statements.csv").symlink_to(src / "scp_statements.csv")
    (root / "records500").symlink_to(src / "records500")
    inp, _ = read_ptbxl(root, measure=False, progress=False)
    rng = random.Random(0)
    nothing = Statements(frozenset(), frozenset(), frozenset(), {})
    for e in inp.labels:
        status = {f: rng.choice(["below", "within", "above", None]) for f in FEATURES}
        if rng.random() < 0.1:
            status = dict.fromkeys(FEATURES)  # an unmeasurable record
        m = Measurements(status=status, qrs_axis=rng.choice([None, -60.0, -10.0, 45.0, 120.0, -150.0]))
        entire = derive({}, nothing, m, release_rules=True)["entire"]
        signal = {k: v for k, v in entire.items() if " the normal range of " in k or k in AXIS_CLASSES}
        inp.labels[e]["entire"] = inp.labels[e]["entire"] | signal  # a new row: the reader shares equal rows
    return inp


def _plain_groups(q, units, inp, classes, taken=()):
    groups: dict[tuple[str, ...], list[int]] = {}
    for i in range(len(units)):
        if i in taken:
            continue
        ecgs = units.ecgs(i)
        rows = [inp.labels[e] for e in ecgs]
        ans = A.answer(
            q.template, q.values, q.lead, rows, ecgs=ecgs, has_likelihood=inp.has_likelihood, classes=classes
        )
        if ans is not None:
            groups.setdefault(tuple(sorted(ans)), []).append(i)
    return groups


def test_grouped_answers_equal_answer_on_every_unit(measured_input):
    inp = measured_input
    templates = load_templates()
    todo, skipped, classes = E.plan(inp, templates)
    assert not {"39", "40", "41", "42", "20", "21", "22", "68"} & set(skipped)  # signal templates are asked
    cols = E._Columns(inp.labels, [int(e) for e in inp.ecgs.index])
    split_of = sampling.split_by_patient(inp.ecgs, 42)
    ids = sorted(e for e, s in split_of.items() if s == "train")
    rng = random.Random(1)
    scopes = {
        "single": E._make_units(ids, cols, pairs=False),
        "comparison_consecutive": E._make_units(sampling.consecutive_pairs(inp.ecgs, ids), cols, pairs=True),
        "comparison_irrelevant": E._make_units(sampling.irrelevant_pairs(inp.ecgs, ids, rng), cols, pairs=True),
    }
    assert all(len(u) > 10 for u in scopes.values())
    checked = set()
    for q in todo:
        units = scopes[q.template.scope]
        taken = set(rng.sample(range(len(units)), 5)) if q.template.kind == "choose" else None
        got = E._group_by_answer(q, units, cols, inp, classes, taken)
        assert got == _plain_groups(q, units, inp, classes, taken or ()), (q.template.id, q.values, q.lead)
        checked.add(q.template.id)
    # every generated template was compared, comparison queries (the transition path) included
    assert {47, 48, 49, 54, 61, 62, 63, 68, 70, 40, 41, 42, 22, 25, 34} <= checked


def test_a_missing_label_fails_on_the_same_ecg_as_the_plain_loop(measured_input):
    inp = measured_input
    templates = load_templates()
    ids = sorted(int(e) for e in inp.ecgs.index)
    victim = ids[7]
    saved = inp.labels[victim]["entire"]  # shared with other ECGs (RowPool): replaced, not changed
    inp.labels[victim]["entire"] = {k: v for k, v in saved.items() if k != "atrial fibrillation"}
    try:
        cols = E._Columns(inp.labels, ids)
        pairs = [(ids[0], ids[1]), (ids[2], victim), (victim, ids[3])]
        for tid, values in ((1, ("atrial fibrillation",)), (61, ()), (57, ("atrial fibrillation",))):
            t = templates[tid]
            q = E.Question(t, values, None)
            units = E._make_units(ids if t.scope == "single" else pairs, cols, pairs=t.scope != "single")
            with pytest.raises(A.AnswerError, match=rf"template {tid}.*'atrial fibrillation'") as plain:
                _plain_groups(q, units, inp, None)
            first = victim if t.scope == "single" else ids[2]  # a pair's error names its first ECG
            assert str(plain.value).startswith(f"ECG {first}, ")
            with pytest.raises(A.AnswerError) as fast:
                E._group_by_answer(q, units, cols, inp, None, None)
            assert str(fast.value) == str(plain.value)
    finally:
        inp.labels[victim]["entire"] = saved


def _release_bytes(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _shards(out, variant, split):
    """The samples of one split's shards, in name order; checks the names on the way: a template shard is
    named by its first sample_id, a paraphrased one by its first sample's position (as before streaming)."""
    import json

    rows = []
    for p in sorted((out / variant / split).glob("*.json")):
        part = json.loads(p.read_text())
        first = part[0]["sample_id"] if variant == "template" else len(rows)
        assert p.name == f"{first:05d}.json"
        rows.extend(part)
    return rows


def test_num_proc_gives_the_same_release_byte_for_byte(tmp_path, measured_input):
    """Templates run in 2 forked processes write exactly what 1 process writes (every file, every byte)."""
    from ecgqa.generation.engine import GENERATOR_VERSION, generate

    outs = {}
    for n in (1, 2):
        outs[n] = tmp_path / f"np{n}"
        generate(measured_input, outs[n], measure=False, progress=False, num_proc=n)
    one, two = _release_bytes(outs[1]), _release_bytes(outs[2])
    assert len(one) > 10 and one.keys() == two.keys()
    assert [k for k in one if one[k] != two[k]] == []
    import json

    report = json.loads(one["generation.json"])
    assert report["generator_version"] == GENERATOR_VERSION
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    assert not (outs[1] / ".parts").exists()


def test_shards_fill_one_at_a_time_with_the_release_names(tmp_path, measured_input, monkeypatch):
    """Small shards (as if 10,000 were 4,000): the same samples, split over shards named by their first
    sample_id, sample_ids contiguous; paraphrased samples keep their template sample's id."""
    from ecgqa.generation import writer
    from ecgqa.generation.engine import generate

    whole = tmp_path / "whole"
    generate(measured_input, whole, measure=False, progress=False)
    monkeypatch.setattr(writer, "SHARD", 4_000)
    small = tmp_path / "small"
    report = generate(measured_input, small, measure=False, progress=False)
    assert report["n_samples"]["train"] > 2 * 4_000  # several shards, the last one partial
    for split in sampling.SPLITS:
        rows = _shards(small, "template", split)
        assert rows == _shards(whole, "template", split)
        assert [s["sample_id"] for s in rows] == list(range(report["n_samples"][split]))
        assert len(list((small / "template" / split).glob("*.json"))) == -(-len(rows) // 4_000)
        para = _shards(small, "paraphrased", split)
        by_id = {s["sample_id"]: s for s in rows}
        assert para and all(by_id[p["sample_id"]]["answer"] == p["answer"] for p in para)
        assert {k: v for k, v in para[0].items() if k != "question"} == {
            k: v for k, v in by_id[para[0]["sample_id"]].items() if k != "question"
        }


def test_paraphrases_are_filled_with_the_values_check_reads_back(tmp_path, measured_input):
    """Each paraphrased text is one of its template's harvested patterns filled with the slot values that
    ``generate check`` reads back from the template sample (``check.slot_values``)."""
    from ecgqa.generation.check import slot_values
    from ecgqa.generation.engine import generate
    from ecgqa.generation.templates import paraphrase_pool, paraphrases, swap_words

    out = tmp_path / "gen"
    generate(measured_input, out, measure=False, progress=False, num_proc=2)
    templates, patterns = load_templates(), paraphrases()
    n = n_test_pool = 0
    for split in sampling.SPLITS:
        by_id = {s["sample_id"]: s for s in _shards(out, "template", split)}
        for p in _shards(out, "paraphrased", split):
            s = by_id[p["sample_id"]]
            t = templates[s["template_id"]]
            values, lead = slot_values(t, s)
            pool = paraphrase_pool(patterns[t.id], split)
            expected = {t.fill(values, lead, text=pat) for pat in pool}
            if t.kind == "choose":  # a swapped question: the word swap of the unswapped text (template 37)
                a, b = values[-2:]
                expected |= {swap_words(t.fill((*values[:-2], b, a), lead, text=pat), b, a) for pat in pool}
            assert p["question"] in expected, p
            if split == "test" and "test" in patterns[t.id]:
                assert pool == patterns[t.id]["test"]
                n_test_pool += 1
            n += 1
    assert n > 100 and n_test_pool > 0


def test_a_failure_in_a_worker_keeps_the_previous_release(tmp_path, measured_input):
    """An answer error raised in a worker process reaches the caller, names the ECG, and leaves the earlier
    output and no staging folder behind."""
    from dataclasses import replace

    from ecgqa.generation.engine import generate

    out = tmp_path / "out"
    generate(measured_input, out, measure=False, progress=False, num_proc=2)
    before = _release_bytes(out)
    labels = {e: {r: dict(v) for r, v in rows.items()} for e, rows in measured_input.labels.items()}
    victim = sorted(labels)[3]
    del labels[victim]["entire"]["sinus rhythm"]
    with pytest.raises(A.AnswerError, match=rf"ECG {victim}, template \d+.*'sinus rhythm'"):
        generate(replace(measured_input, labels=labels), out, measure=False, progress=False, num_proc=2)
    assert _release_bytes(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_row_pool_shares_equal_rows_only():
    from ecgqa.generation.source import RowPool

    pool = RowPool()
    a = pool({"entire": {"x": 1, "y": None}, "I": {"static noise": 0}})
    b = pool({"entire": {"x": 1, "y": 0}, "I": {"static noise": 0}})
    c = pool({"entire": {"x": 1, "y": None}, "I": {"static noise": [1]}})  # unhashable: kept as is
    assert b["I"] is a["I"] and c["entire"] is a["entire"]
    assert b["entire"] is not a["entire"] and b["entire"] == {"x": 1, "y": 0}
    assert c["I"] == {"static noise": [1]} and c["I"] is not a["I"]
    assert len(pool) == 3


def test_consecutive_pairs_every_earlier_later_pair_per_patient():
    """Brute force over a table with string patient ids, equal recording times (kept in ``ids`` order), an
    ECG without a time and one left out of ``ids``."""
    import pandas as pd

    t = pd.Timestamp
    ecgs = pd.DataFrame(
        {
            "patient_id": ["b", "a", "b", "a", "b", "c", "a", "b"],
            "recorded_at": [t("2001"), t("2000"), t("1999"), t("2000"), pd.NaT, t("2003"), t("1998"), t("1999")],
        },
        index=pd.Index([10, 11, 12, 13, 14, 15, 16, 17], name="ecg_id"),
    )
    ids = [10, 11, 12, 13, 14, 15, 16]  # 17 is in another split
    got = sampling.consecutive_pairs(ecgs, ids)
    expected = []
    for p in sorted(set(ecgs.loc[ids, "patient_id"])):
        mine = [e for e in ids if ecgs.at[e, "patient_id"] == p and not pd.isna(ecgs.at[e, "recorded_at"])]
        mine.sort(key=lambda e: ecgs.at[e, "recorded_at"])  # stable: equal times keep the ids order
        expected += [(a, b) for i, a in enumerate(mine) for b in mine[i + 1 :]]
    assert got == expected == [(16, 11), (16, 13), (11, 13), (12, 10)]
    assert sampling.consecutive_pairs(ecgs, [14, 17]) == [] and sampling.consecutive_pairs(ecgs, []) == []
