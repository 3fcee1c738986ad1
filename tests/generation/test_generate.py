"""``ecgqa generate ptbxl`` on the bundled sample's real records: answers, sampling rules, layout, pipeline."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
import pytest

from ecgqa.generation import answers as A
from ecgqa.generation import sampling
from ecgqa.generation.ptbxl import read_ptbxl
from ecgqa.generation.templates import DATA, load_templates

_LEAD = re.compile(r" in lead \w+")
N_ECGS = 60  # the first rows of the bundled metadata: small enough for a fast real run


@pytest.fixture(scope="module")
def subset(tmp_path_factory, sample_paths) -> Path:
    """A PTB-XL root of the bundled records whose metadata holds the first N_ECGS rows (records linked)."""
    root = tmp_path_factory.mktemp("ptbxl_subset")
    src = sample_paths.ptbxl_records
    db = pd.read_csv(src / "ptbxl_database.csv")
    db.head(N_ECGS).to_csv(root / "ptbxl_database.csv", index=False)
    (root / "scp_statements.csv").symlink_to(src / "scp_statements.csv")
    (root / "records500").symlink_to(src / "records500")
    return root


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecgqa", *args], capture_output=True, text=True)


def _load(out: Path, variant: str = "template") -> dict[str, list[dict]]:
    got = {}
    for split in sampling.SPLITS:
        rows = []
        for p in sorted((out / variant / split).glob("*.json")):
            rows.extend(json.loads(p.read_text()))
        got[split] = rows
    return got


@pytest.fixture(scope="module")
def generated(tmp_path_factory, subset) -> Path:
    out = tmp_path_factory.mktemp("gen") / "release"
    r = _run("generate", "ptbxl", "--records", str(subset), "--out", str(out), "--no-measure", "-q")
    assert r.returncode == 0, r.stderr
    assert "samples" in r.stdout
    return out


@pytest.fixture(scope="module")
def metadata(subset) -> pd.DataFrame:
    return pd.read_csv(subset / "ptbxl_database.csv", index_col="ecg_id")


def test_layout_is_the_release_layout(generated, metadata):
    names = {p.name for p in generated.iterdir()}
    assert {
        "template",
        "paraphrased",
        "answers.csv",
        "answers_for_each_template.csv",
        "train_ecgs.tsv",
        "valid_ecgs.tsv",
        "test_ecgs.tsv",
        "generation.json",
    } <= names
    report = json.loads((generated / "generation.json").read_text())
    samples = _load(generated)
    split_ids = {}
    for split, rows in samples.items():
        assert [s["sample_id"] for s in rows] == list(range(len(rows)))  # contiguous from 0, as the release
        assert report["n_samples"][split] == len(rows)
        tsv = [line.split("\t") for line in (generated / f"{split}_ecgs.tsv").read_text().splitlines()]
        split_ids[split] = {int(e) for _, e in tsv}
        assert {e for s in rows for e in s["ecg_id"]} <= split_ids[split]
    # a patient's ECGs all sit in one split
    patient_split = {}
    for split, ids in split_ids.items():
        for e in ids:
            p = metadata.loc[e, "patient_id"]
            assert patient_split.setdefault(p, split) == split
    assert sum(len(v) for v in split_ids.values()) == N_ECGS
    total = sum(sum(c.values()) for c in report["counts"].values())
    assert total == sum(report["n_samples"].values())
    assert report["seed"] == 42 and report["caps"] == "release"
    assert {"17", "18", "19"} <= set(report["skipped_templates"])
    assert any(src.endswith("ptbxl_database.csv") for src in report["sources"])


def test_answers_are_in_the_options_and_metadata_answers_are_true(generated, metadata):
    templates = load_templates()
    noise_cols = ["static_noise", "burst_noise", "baseline_drift", "electrodes_problems"]
    checked = Counter()
    for _split, rows in _load(generated).items():
        for s in rows:
            t = templates[s["template_id"]]
            assert set(s["answer"]) <= set(t.options), s
            assert s["question_type"] == t.question_type
            row = metadata.loc[s["ecg_id"][0]]
            if t.id == 29:  # any kind of noises: any of the four columns filled (computed here from the CSV)
                filled = any(isinstance(row[c], str) and row[c].strip() for c in noise_cols)
                assert s["answer"] == ["yes" if filled else "no"]
                checked[29] += 1
            if t.id == 35:  # any kind of extra systoles: extra_beats filled
                assert s["answer"] == ["yes" if isinstance(row["extra_beats"], str) else "no"]
                checked[35] += 1
            if t.id == 2:  # normal ecg: NORM among the scp codes (at any likelihood)
                assert s["answer"] == ["yes" if "NORM" in ast.literal_eval(row["scp_codes"]) else "no"]
                checked[2] += 1
    assert checked[29] > 10 and checked[2] > 10 and checked[35] > 10


def test_release_caps_and_choose_reuse(generated):
    spec = json.loads((DATA / "release_caps.json").read_text())["caps"]
    per_question = defaultdict(Counter)
    choose_used = defaultdict(set)
    for split, rows in _load(generated).items():
        for s in rows:
            kind = s["question_type"].split("-")[1]
            # a lead question's twelve leads share one id; each text is sampled on its own
            lead = tuple(_LEAD.findall(s["question"]))
            per_question[(split, s["question_id"], s["question_type"], lead)][tuple(s["answer"])] += 1
            if kind == "choose":
                key = (split, s["template_id"], tuple(s["ecg_id"]))
                assert key not in choose_used[split], "an ECG reused within a choose template"
                choose_used[split].add(key)
    assert per_question
    capped = Counter()
    for (split, _qid, qtype, _lead), counts in per_question.items():
        if split == "train":
            assert len(counts) >= 2  # a train question needs two non-empty answer groups
        caps = {k: v["value"] for k, v in spec[split][qtype].items() if isinstance(v, dict)}
        if qtype.endswith("verify"):
            yes, no = counts.get(("yes",), 0) + counts.get(("not sure",), 0), counts.get(("no",), 0)
            assert counts.get(("yes",), 0) <= caps["yes"] and no <= min(caps["no"], 5 * yes), (split, qtype, counts)
            capped[split] += counts.get(("yes",), 0) == caps["yes"]
        else:  # choose: per option, per "both", per "none"; query: per answer set, "none" its own cap
            for answer, n in counts.items():
                assert n <= caps["none" if answer == ("none",) else "per_answer_set"], (split, qtype, answer, n)
    assert capped["train"] > 0  # the caps are reached, not only respected


def test_lead_questions_share_one_id_across_their_leads_and_splits(generated):
    text_of, ids_of_template = {}, defaultdict(set)
    for rows in _load(generated).values():
        for s in rows:
            ids_of_template[s["template_id"]].add(s["question_id"])
            if s["question_type"].endswith("choose"):
                continue  # a choose text comes in either option order
            assert text_of.setdefault(s["question_id"], _LEAD.sub("", s["question"])) == _LEAD.sub("", s["question"])
    # the counter still advances by twelve per lead question: ids of lead templates are twelve apart
    for tid in (26, 28):
        ids = sorted(ids_of_template[tid])
        assert ids and all((b - a) % 12 == 0 for a, b in zip(ids, ids[1:], strict=False)), (tid, ids)


def test_comparison_pairs(generated, metadata):
    for rows in _load(generated).values():
        for s in rows:
            if s["question_type"].startswith("comparison_consecutive"):
                a, b = (metadata.loc[e] for e in s["ecg_id"])
                assert a["patient_id"] == b["patient_id"]
                assert pd.Timestamp(a["recording_date"]) <= pd.Timestamp(b["recording_date"])
            elif s["question_type"].startswith("comparison_irrelevant"):
                a, b = (metadata.loc[e] for e in s["ecg_id"])
                assert a["patient_id"] != b["patient_id"]


def test_paraphrased_variant_has_the_same_samples(generated):
    tpl = {(split, s["sample_id"]): s for split, rows in _load(generated).items() for s in rows}
    para = [(split, s) for split, rows in _load(generated, "paraphrased").items() for s in rows]
    # every template has its release paraphrases (17-19 are not generated): every sample has its twin
    assert len(para) == len(tpl) and {s["template_id"] for _, s in para} == {t["template_id"] for t in tpl.values()}
    same = 0
    for split, s in para:
        t = tpl[(split, s["sample_id"])]
        assert s["answer"] == t["answer"] and s["ecg_id"] == t["ecg_id"]
        if s["question"] == t["question"]:  # the release keeps the template's wording as one of its patterns
            same += 1
    assert same < len(para) / 4


@pytest.mark.slow
def test_deterministic_and_seeded(tmp_path, subset, generated):
    again = tmp_path / "again"
    r = _run("generate", "ptbxl", "--records", str(subset), "--out", str(again), "--no-measure", "-q")
    assert r.returncode == 0, r.stderr
    for p in (generated / "template").rglob("*.json"):
        assert p.read_bytes() == (again / p.relative_to(generated)).read_bytes()
    ecgs = read_ptbxl(subset, measure=False, progress=False)[0].ecgs
    assert sampling.split_by_patient(ecgs, 42) == sampling.split_by_patient(ecgs, 42)
    assert sampling.split_by_patient(ecgs, 42) != sampling.split_by_patient(ecgs, 7)


@pytest.mark.slow
def test_balanced_yes_equals_no(tmp_path, subset):
    out = tmp_path / "balanced"
    r = _run("generate", "ptbxl", "--records", str(subset), "--out", str(out), "--no-measure", "--balanced", "-q")
    assert r.returncode == 0, r.stderr
    per_text = defaultdict(Counter)
    for rows in _load(out).values():
        for s in rows:
            if s["question_type"].endswith("verify"):
                per_text[(s["question_id"], s["question"])][s["answer"][0]] += 1
    assert per_text
    for counts in per_text.values():
        assert counts["yes"] == counts["no"] > 0 and counts["not sure"] == 0


@pytest.mark.slow
def test_release_split_is_used_when_given(tmp_path, subset, sample_paths):
    out = tmp_path / "split"
    r = _run(
        "generate", "ptbxl", "--records", str(subset), "--out", str(out), "--no-measure", "-q",
        "--splits", str(sample_paths.ptbxl_release),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    release = sampling.read_release_split(sample_paths.ptbxl_release)
    for split in sampling.SPLITS:
        for line in (out / f"{split}_ecgs.tsv").read_text().splitlines():
            assert release[int(line.split("\t")[1])] == split


def test_foreign_output_folder_is_refused(tmp_path, subset):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    r = _run("generate", "ptbxl", "--records", str(subset), "--out", str(out), "--no-measure", "-q")
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr
    assert (out / "notes.txt").read_text() == "keep me"


def test_bad_split_folder_is_one_line(tmp_path, subset):
    train = tmp_path / "train_ecgs.tsv"
    train.write_text("0\t1\n1\tabc\n")
    r = _run("generate", "ptbxl", "--records", str(subset), "--out", str(tmp_path / "o"), "--no-measure", "-q",
             "--splits", str(tmp_path))  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr == f"error: {train}, line 2: '1\\tabc' is not 'index<TAB>ecg_id'\n"
    assert not (tmp_path / "o").exists()
    train.write_text("0\t1\n")  # train is fine now: the missing valid file is named
    with pytest.raises(sampling.SplitError, match=f"--splits {tmp_path}: no valid_ecgs.tsv"):
        sampling.read_release_split(tmp_path)


def test_missing_label_is_an_error_naming_ecg_and_template():
    t = load_templates()[27]
    with pytest.raises(A.AnswerError, match=r"ECG 7, template 27.*'static noise'"):
        A.answer(t, ("static noise",), None, [{"entire": {}}], ecgs=[7])
    t1 = load_templates()[1]
    rows = [{"entire": {"left ventricular hypertrophy": None}}]
    assert A.answer(t1, ("left ventricular hypertrophy",), None, rows, ecgs=[3]) == ["not sure"]
    with pytest.raises(A.AnswerError, match="ECG 3, template 1"):
        A.answer(t1, ("left ventricular hypertrophy",), None, rows, ecgs=[3], has_likelihood=False)


@pytest.mark.slow
def test_generated_release_goes_through_map_and_prepare(tmp_path, generated, subset):
    mapped, prepared = tmp_path / "mapped", tmp_path / "prepared"
    r = _run("map", "ptbxl", str(generated), "--records", str(subset), "--out", str(mapped), "-q")
    assert r.returncode == 0, r.stderr
    r = _run("prepare", str(mapped), "--out", str(prepared), "-q")
    assert r.returncode == 0, r.stderr
    from ecgqa.data.prepared import PreparedData

    data = PreparedData(prepared)
    report = json.loads((generated / "generation.json").read_text())
    assert data.info.splits == {k: v for k, v in report["n_samples"].items() if v}
    assert data.info.n_ecgs == sum(report["n_ecgs"].values())


def _numeric_rows(abnormal: set[str], unknown: set[str] = frozenset()) -> dict:
    entire = {}
    for f in A.NUMERIC:
        entire[f"within the normal range of {f}"] = None if f in unknown else int(f not in abnormal)
    return {"entire": entire}


def test_numeric_comparison_answers_follow_the_transitions():
    t = load_templates()
    first = _numeric_rows({"qt interval", "rr interval"}, unknown={"pr interval"})
    second = _numeric_rows({"rr interval", "qrs duration"})
    rows = [first, second]
    assert A.answer(t[68], (), None, rows) == ["qt interval"]  # abnormal → normal
    assert A.answer(t[69], (), None, rows) == ["qrs duration"]  # normal → abnormal
    assert A.answer(t[70], (), None, rows) == ["rr interval"]  # abnormal in both
    assert A.answer(t[64], ("qt interval",), None, rows) == ["yes"]
    assert A.answer(t[67], ("p duration",), None, rows) == ["yes"]  # normal in both
    assert A.answer(t[66], ("pr interval",), None, rows) is None  # not measurable in the first: not asked
    nothing = [_numeric_rows(set(), unknown=set(A.NUMERIC))] * 2
    assert A.answer(t[68], (), None, nothing) is None


@pytest.mark.slow
def test_a_mapped_dataset_goes_straight_to_prepare(tmp_path, subset):
    """A non-PTB-XL GenerationInput (few classes, no likelihoods, no lead labels): ecg_path in every sample,
    record names in generation.json, and ``prepare`` reads the output without ``map``."""
    from ecgqa.data.prepared import PreparedData
    from ecgqa.generation.engine import generate
    from ecgqa.generation.source import GenerationInput

    inp, _ = read_ptbxl(subset, measure=False, progress=False)
    keep = {"sinus rhythm", "atrial fibrillation", "complete right bundle branch block", "normal ecg"}
    labels = {
        e: {"entire": {c: (1 if v is None else v) for c, v in rows["entire"].items() if c in keep}}
        for e, rows in inp.labels.items()
    }
    ecgs = inp.ecgs.assign(record_name=[f"rec-{e}" for e in inp.ecgs.index])
    table = GenerationInput(
        "table", ecgs, labels, frozenset(keep), has_likelihood=False, lead_labels=False, mapped=True
    )
    out = tmp_path / "table"
    report = generate(table, out, measure=False, progress=False)
    assert report["record_names"]["2"] == "rec-2"
    assert {"5", "9", "14", "26", "34"} <= set(report["skipped_templates"])
    samples = [s for rows in _load(out).values() for s in rows]
    assert samples
    for s in samples:
        assert len(s["ecg_path"]) == len(s["ecg_id"])
        assert all(Path(p).with_suffix(".hea").is_file() for p in s["ecg_path"])
        assert "not sure" not in s["answer"]
        if s["template_id"] == 1:
            assert s["attribute"][0] in keep
    prepared = tmp_path / "prepared"
    r = _run("prepare", str(out), "--out", str(prepared), "-q")
    assert r.returncode == 0, r.stderr
    assert PreparedData(prepared).info.splits == {k: v for k, v in report["n_samples"].items() if v}


def test_a_metadata_row_without_patient_id_is_an_error_naming_it(tmp_path, subset):
    """A PTB-XL row with no patient_id (the split is by patient) is one line naming the file and the ECG."""
    db = pd.read_csv(subset / "ptbxl_database.csv")
    db.loc[4, "patient_id"] = None
    bad = tmp_path / "ptbxl_database.csv"
    db.to_csv(bad, index=False)
    out = tmp_path / "out"
    r = _run("generate", "ptbxl", "--records", str(subset), "--metadata", str(bad), "--out", str(out), "--no-measure")
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert f"{bad}: ecg_id {int(db.loc[4, 'ecg_id'])}: no patient_id" in r.stderr
    assert not out.exists()
    ecgs = pd.DataFrame({"patient_id": [1.0, float("nan")]}, index=pd.Index([3, 9], name="ecg_id"))
    with pytest.raises(sampling.SplitError, match="ecg_id 9: no patient_id"):
        sampling.split_by_patient(ecgs)


def test_ecgs_left_out_are_said_on_stderr(tmp_path, subset):
    """A metadata row whose record is absent is left out, and the run says so (not only in generation.json)."""
    db = pd.read_csv(subset / "ptbxl_database.csv")
    extra = db.iloc[[0]].assign(ecg_id=21799)  # a real PTB-XL id whose record the bundled sample lacks
    meta = tmp_path / "ptbxl_database.csv"
    pd.concat([db, extra]).to_csv(meta, index=False)
    out = tmp_path / "out"
    r = _run("generate", "ptbxl", "--records", str(subset), "--metadata", str(meta), "--out", str(out), "-q",
             "--no-measure")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "left out 1 ECG (no_record): 21799" in r.stderr
    assert json.loads((out / "generation.json").read_text())["left_out"]["no_record"] == [21799]
