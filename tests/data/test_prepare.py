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

from ecgqa.data.constants import LEADS
from ecgqa.data.prepare import PrepareError, prepare
from ecgqa.data.prepared import DROPPED, META, SIGNALS, PreparedData
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
    return {
        "template_id": tid,
        "question_id": tid * 10,
        "sample_id": sid,
        "question_type": qtype,
        "attribute_type": atype,
        "question": question,
        "answer": answer,
        "ecg_id": ecg_id,
        "attribute": attribute,
    }


# ------------------------------------------------------------------------------------ bundled sample


@pytest.mark.slow
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
        "ptbxl",
        "template",
        "qa",
        500,
        5000,
    )
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
        qa(
            1,
            41,
            "single-choose",
            "numeric_feature",
            "Which range does the qt interval of this ECG fall in, above the normal range or within the normal range?",
            ["within the normal range"],
            [2],
            ["above the normal range of qt interval", "within the normal range of qt interval"],
        ),
        qa(
            2,
            22,
            "single-choose",
            "heart_axis",
            "Which heart axis does this ECG show, left axis deviation or normal heart axis?",
            ["left axis deviation"],
            [5],
            ["normal heart axis", "left axis deviation"],
        ),
        qa(
            3, 7, "single-query", "scp_code", "What rhythm does this ECG show?", ["sinus rhythm"], [2], ["sinus rhythm"]
        ),
        qa(
            4,
            24,
            "single-query",
            "stage_of_infarction",
            "What stage of myocardial infarction does this ECG show?",
            ["none"],
            [5],
            ["early stage of myocardial infarction"],
        ),
        qa(
            5,
            43,
            "comparison_consecutive-verify",
            "scp_code",
            "Does the recent ECG show any symptoms that were not in the previous ECG?",
            ["no"],
            [2, 5],
            None,
        ),
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
    # spelled out from docs/benchmark.md for the cases the issue names
    assert [classes[i] for i in rows[1]["valid_classes"]] == ["above the normal range", "within the normal range"]
    assert [classes[i] for i in rows[1]["answer"]] == ["within the normal range"]
    assert [classes[i] for i in rows[2]["valid_classes"]] == ["left axis deviation", "normal heart axis"]
    assert rows[4]["answer"] == [] and len(rows[4]["valid_classes"]) == 3  # none → all-zero; template 24 minus none
    assert (rows[5]["qt1"], rows[5]["qt2"], rows[5]["qt3"]) == (1, 3, 18)
    assert rows[5]["attribute"] == [] and rows[5]["attribute_ids"] == []
    assert [int(data.ecg_ids[i]) for i in rows[5]["ecg_rows"]] == [2, 5]
    np.testing.assert_allclose(
        data.signals[data.row_of(5)].astype(np.float32),
        read_rdsamp(records / "records500/00000/00005_hr"),
        rtol=1e-3,
        atol=2e-3,
    )


def test_rerun_is_a_noop_and_force_rebuilds(handmade):
    _, _, mapped, out, _ = handmade
    before = (out / SIGNALS).stat().st_mtime_ns, json.loads((out / META).read_text())
    again = prepare(mapped, out, progress=False)
    assert again.get("_noop") is True and again["content_hash"] == before[1]["content_hash"]
    assert (out / SIGNALS).stat().st_mtime_ns == before[0]
    rebuilt = prepare(mapped, out, progress=False, force=True)
    assert "_noop" not in rebuilt and rebuilt["content_hash"] == before[1]["content_hash"]
    assert (out / SIGNALS).stat().st_mtime_ns != before[0]
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
    import ecgqa.data.prepare as prep

    _, _, mapped, out, _ = handmade
    good = json.loads((out / META).read_text())
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
    assert json.loads((out / META).read_text()) == good
    assert PreparedData(out).signals.shape[0] == 2
    assert not list(out.parent.glob(".*build-*"))


def test_killed_run_leftover_is_never_taken_for_a_complete_build(handmade, tmp_path):
    _, _, mapped, _, _ = handmade
    out = tmp_path / "prep"
    leftover = tmp_path / ".prep.build-999999999"  # a pid that cannot be alive
    leftover.mkdir()
    np.save(leftover / SIGNALS, np.zeros((1, 12, 10), dtype=np.float16))
    with pytest.raises(ValueError, match="not a complete prepared directory"):
        PreparedData(leftover)
    prepare(mapped, out, progress=False)
    assert not leftover.exists() and PreparedData(out).meta["n_ecgs"] == 2


# ------------------------------------------------------------------------------------- bad records


def test_bad_records_fail_after_full_scan_or_are_dropped(tmp_path, sample_paths):
    samples = [
        qa(
            10,
            26,
            "single-verify",
            "noise",
            "Does this ECG show static noise in lead I?",
            ["no"],
            [2],
            ["static noise"],
        ),
        qa(
            11,
            26,
            "single-verify",
            "noise",
            "Does this ECG show static noise in lead V1?",
            ["yes"],
            [6],
            ["static noise"],
        ),
        qa(
            12,
            26,
            "single-verify",
            "noise",
            "Does this ECG show static noise in lead V2?",
            ["no"],
            [7],
            ["static noise"],
        ),
        qa(
            13,
            26,
            "single-verify",
            "noise",
            "Does this ECG show static noise in lead V3?",
            ["no"],
            [2],
            ["static noise"],
        ),
    ]
    release = make_release(tmp_path / "release", sample_paths.ptbxl_release, {"train": samples})
    records = copy_ptbxl_records(tmp_path / "ptbxl", sample_paths.ptbxl_records, [2])
    folder = records / "records500" / "00000"
    nan = np.random.default_rng(0).normal(size=(5000, 12))
    nan[100:200, 4] = np.nan
    wfdb.wrsamp(
        "00006_hr",
        fs=500,
        units=["mV"] * 12,
        sig_name=list(LEADS),
        p_signal=nan,
        fmt=["16"] * 12,
        adc_gain=[1000.0] * 12,
        baseline=[0] * 12,
        write_dir=str(folder),
    )
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
    report = json.loads((out / DROPPED).read_text())
    assert sorted(report["samples"]["train"]) == [11, 12] and sorted(report["bad_records"]) == ["6", "7"]
    np.testing.assert_allclose(
        data.signals[0].astype(np.float32), read_rdsamp(folder / "00002_hr"), rtol=1e-3, atol=2e-3
    )


def test_signal_reads_are_submitted_in_bounded_windows(tmp_path, monkeypatch):
    """With --num-proc, results must not pile up in RAM: the pool never gets every record at once."""
    import ecgqa.data.prepare as prep

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
    from ecgqa.data.prepare import detect_version

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
        wfdb.wrsamp(
            str(study),
            fs=500,
            units=["mV"] * 12,
            sig_name=MIMIC_ORDER,
            p_signal=sig,
            fmt=["16"] * 12,
            adc_gain=[1000.0] * 12,
            baseline=[0] * 12,
            write_dir=str((root / rel).parent),
        )
        rows.append({"subject_id": subject, "study_id": study, "file_name": study, "ecg_time": "", "path": rel})
        signals[study] = sig.T
    with (root / "record_list.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    samples = [
        qa(
            1,
            4,
            "single-verify",
            "scp_code",
            "Does this ECG show symptoms of myocardial infarction in anterior leads?",
            ["yes"],
            [40689238],
            ["Myocardial infarction in anterior leads"],
        ),
        qa(
            2,
            26,
            "single-verify",
            "noise",
            "Does this ECG show broad R wave in lateral leads?",
            ["no"],
            [40689239],
            ["Broad R wave in lateral leads"],
        ),
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


@pytest.mark.slow
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


# ------------------------------------------------------------------ outputs we may replace (issue 13)


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path → its bytes (folders implied)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _tiny_mapped(tmp_path: Path, sample_paths, samples_by_split: dict[str, list[dict]], ids=(2, 5)) -> Path:
    release = make_release(tmp_path / "release", sample_paths.ptbxl_release, samples_by_split)
    records = copy_ptbxl_records(tmp_path / "ptbxl", sample_paths.ptbxl_records, list(ids))
    mapped = tmp_path / "mapped"
    map_release("ptbxl", release, records, mapped, progress=False)
    return mapped


def _noise(sid, ecg, lead="I", answer="no"):
    return qa(
        sid,
        26,
        "single-verify",
        "noise",
        f"Does this ECG show static noise in lead {lead}?",
        [answer],
        [ecg],
        ["static noise"],
    )


def test_out_holding_user_files_is_refused_and_kept(handmade, tmp_path, capsys):
    from ecgqa.cli import main
    from ecgqa.files import OutputDirError

    _, _, mapped, _, _ = handmade
    mine = tmp_path / "important"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.txt").write_text("my thesis")
    (mine / "sub" / "data.csv").write_text("precious")
    before = _tree(mine)
    with pytest.raises(
        OutputDirError, match=r"important already holds 2 entries \(sub/, thesis.txt\) but no meta.json"
    ):
        prepare(mapped, mine, progress=False)
    assert _tree(mine) == before and not list(tmp_path.glob(".important.*"))
    # a user's meta.json that is not ours does not count as our marker
    (mine / "meta.json").write_text('{"title": "my notes"}')
    with pytest.raises(OutputDirError, match="its meta.json was not written by this tool"):
        prepare(mapped, mine, progress=False)
    # a file at --out, through the CLI: one line, rc 2, the file intact
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert main(["prepare", str(mapped), "--out", str(target), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out ") and "is a file" in err and err.count("\n") == 1
    assert target.read_text() == "keep me" and not list(tmp_path.glob(".notes.txt.*"))


def test_out_dot_is_a_clear_error(handmade, tmp_path, monkeypatch, capsys):
    from ecgqa.cli import main

    _, _, mapped, _, _ = handmade
    work = tmp_path / "work"
    work.mkdir()
    (work / "script.py").write_text("print(1)")
    monkeypatch.chdir(work)
    assert main(["prepare", str(mapped), "--out", ".", "-q"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "current folder" in err
    assert (work / "script.py").read_text() == "print(1)"


def test_prepare_replaces_its_own_output_and_an_empty_folder(handmade, tmp_path):
    _, _, mapped, _, _ = handmade
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare(mapped, empty, progress=False)
    assert PreparedData(empty).meta["n_ecgs"] == 2
    prepare(mapped, empty, progress=False, rate=100)  # ours: rebuilt in place
    assert PreparedData(empty).rate == 100 and PreparedData(empty).signal_length == 1000


def test_stale_build_folders_are_cleaned(handmade, tmp_path):
    import subprocess
    import sys

    _, _, mapped, _, _ = handmade
    dead = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
        ).stdout
    )
    prepare(mapped, tmp_path / "prep", progress=False)
    for name in (f".prep.build-{dead}", f".prep.old-{dead}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / SIGNALS).write_bytes(b"x")
    prepare(mapped, tmp_path / "prep", progress=False, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prep"]
    # a run killed between the two renames of a fallback swap: the output waits aside and is put back
    (tmp_path / "prep").rename(tmp_path / f".prep.old-{dead}")
    assert prepare(mapped, tmp_path / "prep", progress=False).get("_noop") is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prep"]


# ------------------------------------------------------------------------- same inputs, same bytes


@pytest.mark.slow
def test_prepare_is_byte_identical_across_runs(prepared_qa, mapped_sample, tmp_path):
    """A second build of the bundled sample equals the session fixture's, file by file (tokenizer included)."""
    again = tmp_path / "again"
    prepare(mapped_sample, again, variant="template", task="qa", rate=500, progress=False)
    first, second = _tree(prepared_qa), _tree(again)
    assert sorted(first) == sorted(second)
    assert "tokenizer/tokenizer.json" in first and "questions/train/state.json" in first
    for name in first:
        assert first[name] == second[name], name


@pytest.mark.parametrize("task, tokenizer", [("qa", "trained"), ("upperbound", "bert")])
def test_other_builds_are_byte_identical_too(handmade, tmp_path, task, tokenizer):
    _, _, mapped, _, _ = handmade
    a, b = tmp_path / "a", tmp_path / "b"
    prepare(mapped, a, task=task, tokenizer=tokenizer, progress=False)
    prepare(mapped, b, task=task, tokenizer=tokenizer, progress=False, num_proc=2)
    assert _tree(a) == _tree(b)


@pytest.mark.slow  # three interpreters importing transformers (~20 s)
def test_trained_tokenizer_is_deterministic_across_processes(tmp_path):
    """Python's string hashing differs per process (PYTHONHASHSEED); the vocabulary must not."""
    import subprocess
    import sys

    code = (
        "import sys, json; from ecgqa.data.vocab import train_wordpiece; "
        "from ecgqa import sample; import glob\n"
        "qs = [s['question'] for f in sorted(glob.glob(str(sample.paths().ptbxl_release / 'template/train/*.json'))) "
        "for s in json.load(open(f))]\n"
        "tok = train_wordpiece(qs); tok.save_pretrained(sys.argv[1])"
    )
    outs = []
    for seed in ("1", "2", "3"):
        out = tmp_path / seed
        env = {**os.environ, "PYTHONHASHSEED": seed, "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=env, capture_output=True)
        outs.append(_tree(out))
    assert outs[0] == outs[1] == outs[2] and "tokenizer.json" in outs[0]


# -------------------------------------------------------------------------------- question tokenizer


def test_default_tokenizer_is_bert_base_uncased(prepared_qa):
    from ecgqa.data.vocab import BERT_VOCAB

    lines = BERT_VOCAB.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 30522 and BERT_VOCAB.stat().st_size == 231508
    assert hashlib.sha256(BERT_VOCAB.read_bytes()).hexdigest() == (
        "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
    )
    assert [lines[i] for i in (0, 100, 101, 102, 103)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert (lines[1996], lines[7592], lines[2088], lines[1037]) == ("the", "hello", "world", "a")
    data = PreparedData(prepared_qa)
    tok = data.tokenizer
    assert len(tok) == 30522 and tok.pad_token_id == 0 and tok.unk_token_id == 100
    assert tok.tokenize("ECG") == ["ec", "##g"]
    assert tok("Does this ECG show sinus rhythm?")["input_ids"] == [
        101,
        2515,
        2023,
        14925,
        2290,
        2265,
        8254,
        2271,
        6348,
        1029,
        102,
    ]
    info = data.info.tokenizer
    assert (info.kind, info.vocab_size) == ("bert-base-uncased", 30522)
    assert info.vocab_sha256 == hashlib.sha256(BERT_VOCAB.read_bytes()).hexdigest()


def test_trained_tokenizer_sees_the_train_split_only(tmp_path, sample_paths):
    train = [_noise(1, 2), _noise(2, 5, lead="II")]
    valid = [
        qa(
            3,
            26,
            "single-verify",
            "noise",
            "Does this electrocardiogram show baseline drift?",
            ["no"],
            [5],
            ["baseline drift"],
        )
    ]
    mapped = _tiny_mapped(tmp_path, sample_paths, {"train": train, "valid": valid})
    out = tmp_path / "prep"
    prepare(mapped, out, tokenizer="trained", progress=False)
    data = PreparedData(out)
    vocab = data.tokenizer.get_vocab()
    assert data.info.tokenizer.kind == "trained" and data.meta["splits"] == {"train": 2, "valid": 1}
    for word in ("does", "static", "noise", "lead"):
        assert word in vocab  # whole words of the train questions
    for word in ("electrocardiogram", "baseline", "drift"):
        assert word not in vocab  # only in valid: spelled from characters, never a whole token
    assert data.tokenizer.tokenize("dish") == ["d", "##i", "##s", "##h"]  # unseen word, seen characters
    assert data.tokenizer.tokenize("drift") == ["[UNK]"]  # "r" and "f" occur in no train question


# -------------------------------------------------------------------- clear errors (issue 13, P5-P7, P16)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--seconds", "0", "--seconds 0.0: give a signal length between 1 and 120 seconds"),
        ("--seconds", "-1", "--seconds -1.0: give a signal length"),
        ("--seconds", "nan", "--seconds nan: give a signal length"),
        ("--rate", "7", "--rate 7: give a sample rate in Hz between 50 and 10000"),
        ("--rate", "0", "--rate 0: give a sample rate"),
        ("--rate", "-500", "--rate -500: give a sample rate"),
        ("--num-proc", "0", "--num-proc 0: give a number of record readers between 1 and 256"),
        ("--num-proc", "-3", "--num-proc -3: give a number of record readers"),
    ],
)
def test_bad_options_are_one_line_errors(handmade, tmp_path, capsys, option, value, message):
    from ecgqa.cli import main

    _, _, mapped, _, _ = handmade
    out = tmp_path / "prep"
    assert main(["prepare", str(mapped), "--out", str(out), option, value, "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not out.exists()


def test_bad_sample_values_fail_in_map_naming_file_and_sample(tmp_path, sample_paths):
    from ecgqa.data.release import ReleaseError

    for i, (change, message) in enumerate(
        [
            ({"ecg_id": None}, "ecg_id must be a non-empty list of integer ids, not null"),
            ({"ecg_id": [2.9]}, r"ecg_id must be .*not \[2\.9\]"),
            ({"ecg_id": ["2"]}, r'ecg_id must be .*not \["2"\]'),
            ({"question": None}, "question must be a non-empty string, not null"),
            ({"sample_id": "x"}, r'sample_id must be an integer, not "x"'),
            ({"answer": "yes"}, r'answer must be a non-empty list of class names .*not "yes"'),
        ]
    ):
        samples = [_noise(1, 2), {**_noise(2, 2), **change}]
        release = make_release(tmp_path / f"r{i}", sample_paths.ptbxl_release, {"train": samples})
        with pytest.raises(ReleaseError, match=r"0\.json: sample #1 \(sample_id .*\): " + message):
            map_release("ptbxl", release, sample_paths.ptbxl_records, tmp_path / f"m{i}", progress=False)
        assert not (tmp_path / f"m{i}").exists()


def test_duplicate_sample_ids_across_shards_of_a_split_are_refused(tmp_path, sample_paths):
    mapped = _tiny_mapped(tmp_path, sample_paths, {"train": [_noise(1, 2), _noise(3, 2)], "valid": [_noise(1, 5)]})
    # a second train shard repeating sample 3 of the first: refused, naming both shards
    shard = json.loads((mapped / "template" / "train" / "0.json").read_text())
    (mapped / "template" / "train" / "1.json").write_text(json.dumps([{**shard[0], "sample_id": 7}, shard[1]]))
    with pytest.raises(PrepareError, match=r"train/1\.json: sample_id 3 appears twice \(also in .*train/0\.json\)"):
        prepare(mapped, tmp_path / "prep", progress=False)


def test_sample_ids_repeat_across_splits_as_in_the_real_release(tmp_path, sample_paths):
    # The real releases number samples per split (PTB-XL train 0-267,538, valid 0-64,662): the same id in
    # train and valid is two different samples, and both are kept.
    mapped = _tiny_mapped(tmp_path, sample_paths, {"train": [_noise(1, 2)], "valid": [_noise(1, 5, answer="yes")]})
    meta = prepare(mapped, tmp_path / "prep", progress=False)
    assert meta["splits"] == {"train": 1, "valid": 1}
    data = PreparedData(tmp_path / "prep")
    assert data.split("train")["ecg_id"] == [[2]] and data.split("valid")["ecg_id"] == [[5]]
    assert data.split("train")["sample_id"] == data.split("valid")["sample_id"] == [1]


def test_empty_split_and_all_records_bad_are_clear_errors(tmp_path, sample_paths):
    mapped = _tiny_mapped(tmp_path, sample_paths, {"train": [_noise(1, 2)], "valid": []})
    with pytest.raises(PrepareError, match=r"split\(s\) \['valid'\] hold no samples; leave them out of --splits"):
        prepare(mapped, tmp_path / "prep", progress=False)
    meta = prepare(mapped, tmp_path / "prep", splits=["train"], progress=False)
    assert meta["splits"] == {"train": 1}
    # every record truncated: --drop-bad has nothing left
    for dat in (tmp_path / "ptbxl").rglob("*.dat"):
        dat.write_bytes(dat.read_bytes()[:100])
    with pytest.raises(PrepareError, match=r"every one of the 1 records is bad, so nothing is left to prepare"):
        prepare(mapped, tmp_path / "prep2", splits=["train"], drop_bad=True, progress=False)
    assert not (tmp_path / "prep2").exists()


def test_trained_tokenizer_needs_the_train_split(tmp_path, sample_paths):
    mapped = _tiny_mapped(tmp_path, sample_paths, {"train": [_noise(1, 2)], "valid": [_noise(2, 5)]})
    with pytest.raises(PrepareError, match="--tokenizer trained learns its vocabulary from the train split"):
        prepare(mapped, tmp_path / "prep", splits=["valid"], tokenizer="trained", progress=False)
    assert prepare(mapped, tmp_path / "prep", splits=["valid"], progress=False)["splits"] == {"valid": 1}


def test_disk_full_is_one_line_and_keeps_the_old_output(handmade, tmp_path, monkeypatch, capsys):
    import errno

    from ecgqa.cli import main
    from ecgqa.data import prepared

    _, _, mapped, out, _ = handmade
    before = _tree(out)

    def full(self, row):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(prepared.SignalStoreWriter, "append", full)
    assert main(["prepare", str(mapped), "--out", str(out), "--force", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on the device while writing ") and "signals.npy" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert _tree(out) == before and not list(out.parent.glob(f".{out.name}.*"))


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_honour_the_umask(handmade, tmp_path, mask, file_mode, dir_mode):
    import stat

    release, records, mapped, _, _ = handmade
    old = os.umask(mask)
    try:
        out = tmp_path / "prep"
        prepare(mapped, out, progress=False)
        remapped = tmp_path / "mapped"
        map_release("ptbxl", release, records, remapped, progress=False)
    finally:
        os.umask(old)
    for root in (out, remapped):
        for p in [root, *root.rglob("*")]:
            want = dir_mode if p.is_dir() else file_mode
            assert stat.S_IMODE(p.stat().st_mode) == want, (p, oct(p.stat().st_mode))
