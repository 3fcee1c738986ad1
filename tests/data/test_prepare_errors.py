"""`ecgqa prepare` on bad input: bad records, bad options and sample values, each a clear error; the CLI's
bundled-sample default."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import wfdb

from ecgqa.data.constants import LEADS
from ecgqa.data.prepare import PrepareError, prepare
from ecgqa.data.prepared import DROPPED, PreparedData
from mapping.mapper import map_release
from tests.data.prepare_helpers import (
    copy_ptbxl_records,
    make_release,
    noise_question,
    qa,
    read_rdsamp,
    tiny_mapped,
)

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
        samples = [noise_question(1, 2), {**noise_question(2, 2), **change}]
        release = make_release(tmp_path / f"r{i}", sample_paths.ptbxl_release, {"train": samples})
        with pytest.raises(ReleaseError, match=r"0\.json: sample #1 \(sample_id .*\): " + message):
            map_release("ptbxl", release, sample_paths.ptbxl_records, tmp_path / f"m{i}", progress=False)
        assert not (tmp_path / f"m{i}").exists()


def test_duplicate_sample_ids_across_shards_of_a_split_are_refused(tmp_path, sample_paths):
    mapped = tiny_mapped(
        tmp_path, sample_paths, {"train": [noise_question(1, 2), noise_question(3, 2)], "valid": [noise_question(1, 5)]}
    )
    # a second train shard repeating sample 3 of the first: refused, naming both shards
    shard = json.loads((mapped / "template" / "train" / "0.json").read_text())
    (mapped / "template" / "train" / "1.json").write_text(json.dumps([{**shard[0], "sample_id": 7}, shard[1]]))
    with pytest.raises(PrepareError, match=r"train/1\.json: sample_id 3 appears twice \(also in .*train/0\.json\)"):
        prepare(mapped, tmp_path / "prep", progress=False)


def test_sample_ids_repeat_across_splits_as_in_the_real_release(tmp_path, sample_paths):
    # The real releases number samples per split (PTB-XL train 0-267,538, valid 0-64,662): the same id in
    # train and valid is two different samples, and both are kept.
    mapped = tiny_mapped(
        tmp_path, sample_paths, {"train": [noise_question(1, 2)], "valid": [noise_question(1, 5, answer="yes")]}
    )
    meta = prepare(mapped, tmp_path / "prep", progress=False)
    assert meta["splits"] == {"train": 1, "valid": 1}
    data = PreparedData(tmp_path / "prep")
    assert data.split("train")["ecg_id"] == [[2]] and data.split("valid")["ecg_id"] == [[5]]
    assert data.split("train")["sample_id"] == data.split("valid")["sample_id"] == [1]


def test_empty_split_and_all_records_bad_are_clear_errors(tmp_path, sample_paths):
    mapped = tiny_mapped(tmp_path, sample_paths, {"train": [noise_question(1, 2)], "valid": []})
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
    mapped = tiny_mapped(tmp_path, sample_paths, {"train": [noise_question(1, 2)], "valid": [noise_question(2, 5)]})
    with pytest.raises(PrepareError, match="--tokenizer trained learns its vocabulary from the train split"):
        prepare(mapped, tmp_path / "prep", splits=["valid"], tokenizer="trained", progress=False)
    assert prepare(mapped, tmp_path / "prep", splits=["valid"], progress=False)["splits"] == {"valid": 1}
