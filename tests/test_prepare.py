"""`ecgqa prepare`: the prepared directory checked against wfdb and the release CSVs, plus robustness."""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import wfdb

from ecgqa.constants import LEADS
from ecgqa.prepared import PreparedData
from ecgqa.prepare import PrepareError, prepare
from mapping.mapper import map_release

MIMIC_ORDER = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]


# --------------------------------------------------------------------- independent reference helpers


def read_rdsamp(record: Path) -> np.ndarray:
    """(12, T) in LEADS order, straight from wfdb (no ecgqa code); PTB-XL headers spell AVR/AVL/AVF."""
    sig, fields = wfdb.rdsamp(str(record))
    names = [n.upper() for n in fields["sig_name"]]
    return sig.T[[names.index(lead.upper()) for lead in LEADS]]


def reference_encoding(release: Path):
    """Answer classes and template classes read with csv/ast, to re-derive every label in the test."""
    with (release / "answers.csv").open(newline="") as f:
        classes = [r["class"] for r in csv.DictReader(f) if r["class"] != "none"]
    with (release / "answers_for_each_template.csv").open(newline="") as f:
        templates = {int(r["template_id"]): ast.literal_eval(r["classes"]) for r in csv.DictReader(f)}
    index = {c: i for i, c in enumerate(classes)}

    def encode(sample):
        answer = sorted(index[a] for a in sample["answer"] if a != "none")
        if sample["question_type"].endswith("choose"):
            names = [a if a in index else a.split(" of ")[0] for a in sample["attribute"]]
        else:
            names = [c for c in templates[sample["template_id"]] if c != "none"]
        valid = sorted({index[n] for n in names})
        scope, kind = sample["question_type"].split("-")
        qt1 = ["single", "comparison_consecutive", "comparison_irrelevant"].index(scope)
        qt2 = 3 * qt1 + ["verify", "choose", "query"].index(kind)
        atypes = ["scp_code", "noise", "stage_of_infarction", "extra_systole", "heart_axis", "numeric_feature"]
        qt3 = 6 * qt2 + atypes.index(sample["attribute_type"])
        return answer, valid, (qt1, qt2, qt3)

    return classes, encode


def load_samples(folder: Path) -> list[dict]:
    out = []
    for path in sorted(folder.glob("*.json")):
        out.extend(json.loads(path.read_text()))
    return out


def make_release(dest: Path, src: Path, shards: dict[str, list[dict]]) -> Path:
    """A release folder: the CSVs of ``src`` plus hand-made template shards {split: samples}."""
    dest.mkdir(parents=True)
    for name in ("answers.csv", "answers_for_each_template.csv"):
        shutil.copy(src / name, dest / name)
    for split, samples in shards.items():
        (dest / "template" / split).mkdir(parents=True)
        (dest / "template" / split / "0.json").write_text(json.dumps(samples))
    return dest


def copy_ptbxl_records(dest: Path, src_root: Path, ids: list[int]) -> Path:
    folder = dest / "records500" / "00000"
    folder.mkdir(parents=True)
    for i in ids:
        for ext in (".hea", ".dat"):
            shutil.copy(src_root / "records500" / "00000" / f"{i:05d}_hr{ext}", folder / f"{i:05d}_hr{ext}")
    return dest


def qa(sid, tid, qtype, atype, question, answer, ecg_id, attribute):
    return {"template_id": tid, "question_id": tid * 10, "sample_id": sid, "question_type": qtype,
            "attribute_type": atype, "question": question, "answer": answer, "ecg_id": ecg_id, "attribute": attribute}


# ------------------------------------------------------------------------------------ bundled sample


def test_every_stored_signal_equals_wfdb_rdsamp(prepared_qa, sample_paths):
    data = PreparedData(prepared_qa)
    assert data.signals.dtype == np.float16 and data.signals.shape == (len(data.ecg_ids), 12, 5000)
    for row, ecg_id in enumerate(data.ecg_ids):
        ref = read_rdsamp(sample_paths.ptbxl_records / "records500" / "00000" / f"{int(ecg_id):05d}_hr")
        np.testing.assert_allclose(data.signals[row].astype(np.float32), ref, rtol=1e-3, atol=2e-3)


def test_unique_ecgs_stored_once(prepared_qa, sample_paths):
    data = PreparedData(prepared_qa)
    ids = set()
    for split in ("train", "valid"):
        for s in load_samples(sample_paths.ptbxl_release / "template" / split):
            ids.update(s["ecg_id"])
    assert data.meta["n_ecgs"] == len(ids) == len(data.ecg_ids) == 198
    assert sorted(ids) == data.ecg_ids.tolist()


def test_labels_match_an_independent_computation(prepared_qa, sample_paths):
    data = PreparedData(prepared_qa)
    classes, encode = reference_encoding(sample_paths.ptbxl_release)
    assert data.classes == classes and len(classes) == 103
    attributes = data.meta["attributes"]
    for split in ("train", "valid"):
        samples = {s["sample_id"]: s for s in load_samples(sample_paths.ptbxl_release / "template" / split)}
        table = data.split(split)
        assert len(table) == len(samples) == data.meta["splits"][split]
        for row in table:
            s = samples[row["sample_id"]]
            answer, valid, codes = encode(s)
            assert row["answer"] == answer and row["valid_classes"] == valid
            assert (row["qt1"], row["qt2"], row["qt3"]) == codes
            assert row["ecg_id"] == s["ecg_id"] and row["question"] == s["question"]
            assert [int(data.ecg_ids[r]) for r in row["ecg_rows"]] == s["ecg_id"]
            assert row["attribute"] == (s["attribute"] or [])
            assert [attributes[i] for i in row["attribute_ids"]] == row["attribute"]


def test_meta_describes_the_build(prepared_qa, mapped_sample):
    meta = PreparedData(prepared_qa).meta
    assert (meta["version"], meta["variant"], meta["task"], meta["rate"], meta["signal_length"]) == (
        "ptbxl", "template", "qa", 500, 5000)
    assert meta["splits"] == {"train": 413, "valid": 38}
    assert meta["attributes"] == sorted(meta["attributes"])
    src = {s["path"]: s for s in meta["sources"]}
    shard = mapped_sample / "template" / "train" / "120000.json"
    assert src["template/train/120000.json"]["sha256"] == hashlib.sha256(shard.read_bytes()).hexdigest()
    assert src["template/train/120000.json"]["bytes"] == shard.stat().st_size


def test_upperbound_build_of_the_sample(prepared_upperbound, sample_paths):
    data = PreparedData(prepared_upperbound)
    with (sample_paths.grounding / "ptbxl" / "grounding_class.csv").open(newline="") as f:
        grounding = [r["class"] for r in csv.DictReader(f)]
    assert data.classes == data.meta["grounding_classes"] == grounding and len(grounding) == 83
    assert len(data.meta["answer_classes"]) == 103
    # every train question is "Does this ECG show <noise>[ in lead X]?" → one label on lead X (or the entire ECG)
    samples = {s["sample_id"]: s for s in load_samples(sample_paths.ptbxl_release / "template" / "train")}
    rows = list(data.split("train"))
    seen = set()
    for row in rows:
        s = samples[row["sample_id"]]
        parts = s["question"].rstrip("?").split(" in lead ")
        lead = parts[1] if len(parts) == 2 else "entire"
        assert row["lead_group"] == lead and row["ecg_id"] == s["ecg_id"]
        assert [grounding[c] for c in row["label_classes"]] == s["attribute"]
        assert row["label_values"] == [int(s["answer"] == ["yes"])]
        assert int(data.ecg_ids[row["ecg_rows"][0]]) == s["ecg_id"][0]
        seen.add((s["ecg_id"][0], lead, s["attribute"][0]))
    assert len(rows) == len(seen)  # no (ecg, subset, attribute) twice
    assert data.meta["splits"]["valid"] == 0  # comparison questions have no upperbound samples


# ---------------------------------------------------------------------------- hand-made QA fixtures


@pytest.fixture(scope="module")
def handmade(tmp_path_factory, sample_paths):
    """Question types absent from the sample, mapped onto real bundled records."""
    tmp = tmp_path_factory.mktemp("handmade")
    samples = [
        qa(1, 41, "single-choose", "numeric_feature",
           "Which range does the qt interval of this ECG fall in, above the normal range or within the normal range?",
           ["within the normal range"], [2], ["above the normal range of qt interval",
                                             "within the normal range of qt interval"]),
        qa(2, 22, "single-choose", "heart_axis", "Which heart axis does this ECG show, left axis deviation or "
           "normal heart axis?", ["left axis deviation"], [5], ["normal heart axis", "left axis deviation"]),
        qa(3, 7, "single-query", "scp_code", "What rhythm does this ECG show?", ["sinus rhythm"], [2], ["sinus rhythm"]),
        qa(4, 24, "single-query", "stage_of_infarction", "What stage of myocardial infarction does this ECG show?",
           ["none"], [5], ["early stage of myocardial infarction"]),
        qa(5, 43, "comparison_consecutive-verify", "scp_code",
           "Does the recent ECG show any symptoms that were not in the previous ECG?", ["no"], [2, 5], None),
    ]
    release = make_release(tmp / "release", sample_paths.ptbxl_release, {"train": samples})
    records = copy_ptbxl_records(tmp / "ptbxl", sample_paths.ptbxl_records, [2, 5])
    mapped = tmp / "mapped"
    map_release("ptbxl", release, records, mapped, progress=False)
    out = tmp / "prepared"
    prepare(mapped, out, num_proc=2, progress=False)  # a real process pool
    return release, records, mapped, out, samples


def test_handmade_question_types_are_encoded(handmade):
    release, records, _, out, samples = handmade
    data = PreparedData(out)
    classes, encode = reference_encoding(release)
    rows = {r["sample_id"]: r for r in data.split("train")}
    for s in samples:
        answer, valid, codes = encode(s)
        r = rows[s["sample_id"]]
        assert (r["answer"], r["valid_classes"], (r["qt1"], r["qt2"], r["qt3"])) == (answer, valid, codes)
    # spelled out from ECGQA.md for the cases the issue names
    assert [classes[i] for i in rows[1]["valid_classes"]] == ["above the normal range", "within the normal range"]
    assert [classes[i] for i in rows[1]["answer"]] == ["within the normal range"]
    assert [classes[i] for i in rows[2]["valid_classes"]] == ["left axis deviation", "normal heart axis"]
    assert rows[4]["answer"] == [] and len(rows[4]["valid_classes"]) == 3  # none → all-zero; template 24 minus none
    assert (rows[5]["qt1"], rows[5]["qt2"], rows[5]["qt3"]) == (1, 3, 18)
    assert rows[5]["attribute"] == [] and rows[5]["attribute_ids"] == []
    assert [int(data.ecg_ids[i]) for i in rows[5]["ecg_rows"]] == [2, 5]
    np.testing.assert_allclose(data.signals[data.row_of(5)].astype(np.float32),
                               read_rdsamp(records / "records500/00000/00005_hr"), rtol=1e-3, atol=2e-3)


def test_rerun_is_a_noop_and_force_rebuilds(handmade):
    _, _, mapped, out, _ = handmade
    before = (out / "signals.npy").stat().st_mtime_ns, json.loads((out / "meta.json").read_text())
    again = prepare(mapped, out, progress=False)
    assert again.get("_noop") is True and again["content_hash"] == before[1]["content_hash"]
    assert (out / "signals.npy").stat().st_mtime_ns == before[0]
    rebuilt = prepare(mapped, out, progress=False, force=True)
    assert "_noop" not in rebuilt and rebuilt["content_hash"] == before[1]["content_hash"]
    assert (out / "signals.npy").stat().st_mtime_ns != before[0]
    other = prepare(mapped, out, progress=False, rate=100)  # different options → different hash, rebuilt
    assert other["content_hash"] != before[1]["content_hash"] and PreparedData(out).signals.shape[-1] == 1000
    prepare(mapped, out, progress=False)  # back to 500 Hz for the other tests


def test_repaired_record_is_picked_up_without_force(handmade):
    _, records, mapped, out, _ = handmade
    dat = next(records.glob("records500/*/00002_hr.dat"))
    original = dat.read_bytes()
    try:
        # lead I, first sample := 1000 ADC units = 1.0 mV (format 16, gain 1000/mV, baseline 0)
        dat.write_bytes((1000).to_bytes(2, "little", signed=True) + original[2:])
        meta = prepare(mapped, out, progress=False)
        assert "_noop" not in meta
        data = PreparedData(out)
        assert float(data.signals[data.row_of(2), 0, 0]) == 1.0
        assert prepare(mapped, out, progress=False).get("_noop") is True
    finally:
        dat.write_bytes(original)
        prepare(mapped, out, progress=False)
    data = PreparedData(out)
    expected = wfdb.rdsamp(str(dat.with_suffix("")))[0][0, 0]
    assert float(data.signals[data.row_of(2), 0, 0]) == pytest.approx(expected, abs=1e-3)


def test_interrupted_run_leaves_no_half_written_store(handmade, monkeypatch):
    import ecgqa.prepare as prep

    _, _, mapped, out, _ = handmade
    good = json.loads((out / "meta.json").read_text())
    calls = {"n": 0}
    real = prep._store_row

    def crash_mid_write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash while writing the signal store")
        return real(*args, **kwargs)

    monkeypatch.setattr(prep, "_store_row", crash_mid_write)
    fresh = out.parent / "fresh"
    with pytest.raises(KeyboardInterrupt):
        prepare(mapped, fresh, progress=False)
    assert not fresh.exists()
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        prepare(mapped, out, progress=False, force=True)
    # the previous complete build is untouched and no build folder is left behind
    assert json.loads((out / "meta.json").read_text()) == good
    assert PreparedData(out).signals.shape[0] == 2
    assert not list(out.parent.glob(".*build-*"))


def test_killed_run_leftover_is_never_taken_for_a_complete_build(handmade, tmp_path):
    _, _, mapped, _, _ = handmade
    out = tmp_path / "prep"
    leftover = tmp_path / ".prep.build-999999999"  # a pid that cannot be alive
    leftover.mkdir()
    np.save(leftover / "signals.npy", np.zeros((1, 12, 10), dtype=np.float16))
    with pytest.raises(ValueError, match="not a complete prepared directory"):
        PreparedData(leftover)
    prepare(mapped, out, progress=False)
    assert not leftover.exists() and PreparedData(out).meta["n_ecgs"] == 2


# ------------------------------------------------------------------------------------- bad records


def test_bad_records_fail_after_full_scan_or_are_dropped(tmp_path, sample_paths):
    samples = [
        qa(10, 26, "single-verify", "noise", "Does this ECG show static noise in lead I?", ["no"], [2], ["static noise"]),
        qa(11, 26, "single-verify", "noise", "Does this ECG show static noise in lead V1?", ["yes"], [6], ["static noise"]),
        qa(12, 26, "single-verify", "noise", "Does this ECG show static noise in lead V2?", ["no"], [7], ["static noise"]),
        qa(13, 26, "single-verify", "noise", "Does this ECG show static noise in lead V3?", ["no"], [2], ["static noise"]),
    ]
    release = make_release(tmp_path / "release", sample_paths.ptbxl_release, {"train": samples})
    records = copy_ptbxl_records(tmp_path / "ptbxl", sample_paths.ptbxl_records, [2])
    folder = records / "records500" / "00000"
    nan = np.random.default_rng(0).normal(size=(5000, 12))
    nan[100:200, 4] = np.nan
    wfdb.wrsamp("00006_hr", fs=500, units=["mV"] * 12, sig_name=list(LEADS), p_signal=nan, fmt=["16"] * 12,
                adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(folder))
    shutil.copy(folder / "00002_hr.hea", folder / "00007_hr.hea")
    (folder / "00007_hr.hea").write_text((folder / "00002_hr.hea").read_text().replace("00002_hr", "00007_hr"))
    (folder / "00007_hr.dat").write_bytes((folder / "00002_hr.dat").read_bytes()[:1000])  # truncated
    mapped = tmp_path / "mapped"
    map_release("ptbxl", release, records, mapped, progress=False)

    out = tmp_path / "prepared"
    with pytest.raises(PrepareError) as err:
        prepare(mapped, out, progress=False)
    msg = str(err.value)
    assert "2 bad records" in msg and "6: record" in msg and "NaN" in msg and "7: record" in msg and "--drop-bad" in msg
    assert not out.exists()
    listed = json.loads((tmp_path / "prepared.bad_records.json").read_text())
    assert sorted(listed) == ["6", "7"]

    meta = prepare(mapped, out, progress=False, drop_bad=True)
    data = PreparedData(out)
    assert data.ecg_ids.tolist() == [2] and data.signals.shape[0] == 1
    assert sorted(data.split("train")["sample_id"]) == [10, 13]
    assert meta["dropped"]["bad_records"] == 2 and meta["dropped"]["samples_train"] == 2
    report = json.loads((out / "dropped.json").read_text())
    assert sorted(report["samples"]["train"]) == [11, 12] and sorted(report["bad_records"]) == ["6", "7"]
    np.testing.assert_allclose(data.signals[0].astype(np.float32), read_rdsamp(folder / "00002_hr"),
                               rtol=1e-3, atol=2e-3)


def test_signal_reads_are_submitted_in_bounded_windows(tmp_path, monkeypatch):
    """With --num-proc, results must not pile up in RAM: the pool never gets every record at once."""
    import ecgqa.prepare as prep

    submitted = []

    class FakePool:
        def __init__(self, n):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def imap(self, fn, iterable, chunksize=1):
            batch = list(iterable)  # a real Pool's task feeder takes everything it is given
            submitted.append(len(batch))
            return map(fn, batch)

    class FakeContext:
        Pool = FakePool

    import multiprocessing

    monkeypatch.setattr(multiprocessing, "get_context", lambda *a: FakeContext())
    paths = {i: str(tmp_path / f"missing{i}") for i in range(200, 0, -1)}  # unreadable: listed as bad, in order
    ids, bad, _ = prep._write_signals(tmp_path, paths, 500, 10, num_proc=2, progress=False)
    assert sum(submitted) == 200 and max(submitted) < 200 and len(submitted) > 1
    assert list(bad) == sorted(paths) and len(ids) == 0


def test_unknown_answer_space_size_is_an_error_not_ptbxl(tmp_path):
    from ecgqa.prepare import detect_version

    (tmp_path / "answers.csv").write_text("index,class\n0,yes\n1,no\n2,none\n")
    with pytest.raises(PrepareError, match=r"answers.csv: 2 answer classes.*--version"):
        detect_version(tmp_path)


def test_upperbound_conversion_errors_name_the_shard(tmp_path, sample_paths):
    bad = qa(21, 26, "single-verify", "noise", "Does this ECG show static noise?", ["no"], [2], None)
    release = make_release(tmp_path / "release", sample_paths.ptbxl_release, {"train": [bad]})
    records = copy_ptbxl_records(tmp_path / "ptbxl", sample_paths.ptbxl_records, [2])
    mapped = tmp_path / "mapped"
    map_release("ptbxl", release, records, mapped, progress=False)
    with pytest.raises(PrepareError, match=r"template/train/0\.json: sample 21"):
        prepare(mapped, tmp_path / "out", task="upperbound", progress=False)


# ------------------------------------------------------------------------------------------- MIMIC


def test_mimic_layout_lead_order_and_upperbound(tmp_path, sample_paths):
    """No MIMIC waveforms are public: small WFDB records in the MIMIC layout (aVF stored before aVL)."""
    rng = np.random.default_rng(1)
    root = tmp_path / "mimic"
    rows, signals = [], {}
    for subject, study in ((10000032, 40689238), (10000033, 40689239)):
        rel = f"files/p1000/p{subject}/s{study}/{study}"
        (root / rel).parent.mkdir(parents=True)
        sig = np.round(rng.normal(size=(5000, 12)), 3)
        wfdb.wrsamp(str(study), fs=500, units=["mV"] * 12, sig_name=MIMIC_ORDER, p_signal=sig, fmt=["16"] * 12,
                    adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str((root / rel).parent))
        rows.append({"subject_id": subject, "study_id": study, "file_name": study, "ecg_time": "", "path": rel})
        signals[study] = sig.T
    with (root / "record_list.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    samples = [
        qa(1, 4, "single-verify", "scp_code", "Does this ECG show symptoms of myocardial infarction in anterior leads?",
           ["yes"], [40689238], ["Myocardial infarction in anterior leads"]),
        qa(2, 26, "single-verify", "noise", "Does this ECG show broad R wave in lateral leads?",
           ["no"], [40689239], ["Broad R wave in lateral leads"]),
    ]
    samples[0]["template_id"] = samples[1]["template_id"] = 1  # valid_classes of template 1: no / not sure / yes
    release = make_release(tmp_path / "release", sample_paths.mimic_release, {"test": samples})
    mapped = tmp_path / "mapped"
    map_release("mimic-iv-ecg", release, root, mapped, progress=False)

    qa_out = tmp_path / "qa"
    meta = prepare(mapped, qa_out, progress=False)
    data = PreparedData(qa_out)
    assert meta["version"] == "mimic-iv-ecg" and len(data.classes) == 187
    for study, sig in signals.items():
        stored = data.signals[data.row_of(study)].astype(np.float32)
        by_name = sig[[MIMIC_ORDER.index(lead) for lead in LEADS]]  # reorder by name, not position
        np.testing.assert_allclose(stored, by_name, rtol=1e-3, atol=2e-3)
        assert not np.allclose(stored[4], sig[4], atol=0.1)  # stored aVL is not the header's 5th channel

    ub = tmp_path / "ub"
    meta = prepare(mapped, ub, task="upperbound", progress=False)
    data = PreparedData(ub)
    assert len(data.classes) == 164
    rows = {r["sample_id"]: r for r in data.split("test")}
    assert rows[1]["lead_group"] == "anterior"
    assert [data.classes[c] for c in rows[1]["label_classes"]] == ["Myocardial infarction"]
    assert rows[1]["label_values"] == [1]
    assert rows[2]["lead_group"] == "lateral"  # the class names its leads (U1, as upstream)
    assert [data.classes[c] for c in rows[2]["label_classes"]] == ["Broad R wave in lateral leads"]


# --------------------------------------------------------------------------------------------- CLI


def test_cli_prepare_defaults_to_the_bundled_sample(tmp_path, capsys):
    from ecgqa.cli import main

    out = tmp_path / "prep"
    assert main(["prepare", "--out", str(out), "--task", "upperbound", "-q"]) == 0
    assert "413" in capsys.readouterr().out
    assert PreparedData(out).meta["task"] == "upperbound"
    assert main(["prepare", "--out", str(out), "--task", "upperbound", "-q"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["prepare", str(tmp_path / "missing"), "--version", "ptbxl", "--out", str(out), "-q"]) == 2
    assert os.path.isdir(out)
