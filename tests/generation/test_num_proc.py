"""``ecgqa generate --num-proc``: records measured in a process pool give exactly the one-process output; and
the PTB-XL reader's reports (unknown SCP codes, ECGs without a recording date, a missing scp_statements.csv)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ecgqa.data.attributes import Statements, derive, measure_record, measure_records
from ecgqa.generation import datasets as D
from ecgqa.generation import sampling
from ecgqa.generation.engine import add_signal_labels, generate, left_out_lines
from ecgqa.generation.ptbxl import InputError, ptbxl_sources, read_ptbxl

N_ECGS = 12  # bundled records measured per run


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecgqa", *args], capture_output=True, text=True)


def _root(folder: Path, sample_paths, db: pd.DataFrame, statements: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    src = sample_paths.ptbxl_records
    db.to_csv(folder / "ptbxl_database.csv", index=False)
    if statements:
        (folder / "scp_statements.csv").symlink_to(src / "scp_statements.csv")
    (folder / "records500").symlink_to(src / "records500")
    return folder


@pytest.fixture(scope="module")
def bundled_db(sample_paths) -> pd.DataFrame:
    return pd.read_csv(sample_paths.ptbxl_records / "ptbxl_database.csv")


@pytest.fixture(scope="module")
def small_root(tmp_path_factory, sample_paths, bundled_db) -> Path:
    return _root(tmp_path_factory.mktemp("ptbxl_small"), sample_paths, bundled_db.head(N_ECGS))


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ --num-proc


def test_measure_records_in_two_processes_equals_one_by_one(small_root):
    folder = small_root / "records500" / "00000"
    ids = pd.read_csv(small_root / "ptbxl_database.csv")["ecg_id"]
    paths = [folder / f"{e:05d}_hr" for e in ids] + [folder / "no_such_record"]
    pooled = measure_records(paths, num_proc=2, progress=False)
    assert len(pooled) == len(paths) and pooled[-1] is None  # order kept; an unreadable record is None
    for path, m in zip(paths[:-1], pooled, strict=False):
        assert m == measure_record(path), path  # every field, exactly
    assert sum(m.qrs_axis is not None and m.status["rr interval"] is not None for m in pooled[:-1]) >= N_ECGS - 2


def test_read_ptbxl_num_proc_2_gives_the_same_labels(small_root, sample_paths):
    one, left_one = read_ptbxl(small_root, progress=False, num_proc=1)
    two, left_two = read_ptbxl(small_root, progress=False, num_proc=2)
    assert one.labels == two.labels and left_one == left_two
    pd.testing.assert_frame_equal(one.ecgs, two.ecgs)
    # and they are the labels of each record measured and derived directly
    db = pd.read_csv(small_root / "ptbxl_database.csv", index_col="ecg_id")
    statements = Statements.read(sample_paths.ptbxl_records / "scp_statements.csv")
    e = int(db.index[3])
    direct = derive(db.loc[e].to_dict() | {"ecg_id": e}, statements, measure_record(one.ecgs.at[e, "record"]),
                    release_rules=True)  # fmt: skip
    assert two.labels[e] == direct
    assert any(v == 1 for k, v in direct["entire"].items() if " the normal range of " in k)


def test_add_signal_labels_num_proc_2_gives_the_same_labels(tmp_path, sample_paths, bundled_db):
    folder = tmp_path / "table"
    folder.mkdir()
    (folder / "records").symlink_to(sample_paths.ptbxl_records / "records500" / "00000")
    head = bundled_db.head(N_ECGS)
    pd.DataFrame(
        {
            "ecg_id": head["ecg_id"],
            "patient_id": head["patient_id"].astype(int),
            "recorded_at": head["recording_date"],
            "record": [f"records/{e:05d}_hr" for e in head["ecg_id"]],
            "sinus rhythm": [int("'SR'" in c) for c in head["scp_codes"]],
        }
    ).to_csv(folder / "ecgs.csv", index=False)
    inputs = [D.read_table(folder / "ecgs.csv", None, progress=False)[0] for _ in range(2)]
    assert add_signal_labels(inputs[0], progress=False, num_proc=1) == N_ECGS
    assert add_signal_labels(inputs[1], progress=False, num_proc=2) == N_ECGS
    assert inputs[0].labels == inputs[1].labels
    assert all("within the normal range of qt interval" in row["entire"] for row in inputs[1].labels.values())
    # generate() measures before run(): same release either way
    outs = [tmp_path / f"out{n}" for n in (1, 2)]
    for n, out in zip((1, 2), outs, strict=True):
        generate(D.read_table(folder / "ecgs.csv", None, progress=False)[0], out, progress=False, num_proc=n)
    assert _files(outs[0]) == _files(outs[1])
    assert json.loads((outs[0] / "generation.json").read_text())["n_samples"]["train"] > 0


@pytest.mark.slow  # two generate runs measuring 12 records (~20 s)
def test_cli_num_proc_2_writes_the_same_release(tmp_path, small_root):
    outs = [tmp_path / f"out{n}" for n in (1, 2)]
    for n, out in zip((1, 2), outs, strict=True):
        r = _run("generate", "ptbxl", "--records", str(small_root), "--out", str(out), "-q", "--num-proc", str(n))
        assert r.returncode == 0, r.stderr
    files = _files(outs[0])
    assert files == _files(outs[1])
    report = json.loads(files["generation.json"])
    assert not {"39", "50"} & set(report["skipped_templates"])  # numeric templates were generated


def test_bad_num_proc_is_one_line(tmp_path, small_root, sample_paths):
    out = tmp_path / "out"
    for value, args in (
        ("0", ("generate", "ptbxl", "--records", str(small_root), "--out", str(out))),
        ("257", ("generate", "ptbxl", "--records", str(small_root), "--out", str(out))),
        ("-2", ("generate", "check", "--release", str(sample_paths.ptbxl_release), "--records", str(small_root))),
    ):
        r = _run(*args, "--num-proc", value)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip() == (
            f"error: --num-proc {value}: give a number of measuring processes between 1 and 256 (1 measures "
            "in this process)"
        )
    assert not out.exists()
    with pytest.raises(InputError, match="--num-proc 1.5"):
        generate("ptbxl", tmp_path / "api", records=small_root, num_proc=1.5)


# ------------------------------------------------------------------------------- PTB-XL reader's reports


def test_unknown_scp_codes_are_reported(tmp_path, sample_paths, bundled_db):
    db = bundled_db.head(20).copy()
    first, second = int(db.loc[2, "ecg_id"]), int(db.loc[5, "ecg_id"])
    db.loc[2, "scp_codes"] = db.loc[2, "scp_codes"].replace("{", "{'XYZ': 100.0, 'QQQ': 0.0, ", 1)
    db.loc[5, "scp_codes"] = db.loc[5, "scp_codes"].replace("{", "{'XYZ': 50.0, ", 1)
    root = _root(tmp_path / "root", sample_paths, db)
    inp, left_out = read_ptbxl(root, measure=False, progress=False)
    assert left_out["unknown_scp_codes"] == {"XYZ": [first, second], "QQQ": [first]}
    assert first in inp.labels  # the ECG is kept; only the codes are not used
    out = tmp_path / "out"
    r = _run("generate", "ptbxl", "--records", str(root), "--out", str(out), "-q", "--no-measure")
    assert r.returncode == 0, r.stderr
    assert "unknown_scp_codes: 2 codes ignored (XYZ: 2 ECGs, QQQ: 1 ECG); see generation.json" in r.stderr
    report = json.loads((out / "generation.json").read_text())
    assert report["left_out"]["unknown_scp_codes"] == {"XYZ": [first, second], "QQQ": [first]}
    # the bundled metadata has none: nothing reported
    assert "unknown_scp_codes" not in read_ptbxl(_root(tmp_path / "clean", sample_paths, bundled_db.head(20)),
                                                 measure=False, progress=False)[1]  # fmt: skip


def test_an_unparseable_recording_date_is_listed_and_only_leaves_consecutive_pairs(tmp_path, sample_paths, bundled_db):
    db = bundled_db.copy()
    counts = db["patient_id"].value_counts()
    patient = counts[counts >= 2].index[0]  # a patient with two ECGs or more: one consecutive pair at least
    mine = db.index[db["patient_id"] == patient]
    db.loc[mine[0], "recording_date"] = "not a date"
    victim = int(db.loc[mine[0], "ecg_id"])
    root = _root(tmp_path / "root", sample_paths, db)
    inp, left_out = read_ptbxl(root, measure=False, progress=False)
    assert left_out["no_recording_date"] == [victim]
    assert victim in inp.ecgs.index and pd.isna(inp.ecgs.at[victim, "recorded_at"])
    ids = [int(e) for e in inp.ecgs.index]
    pairs = sampling.consecutive_pairs(inp.ecgs, ids)
    assert not any(victim in p for p in pairs)
    others = [int(db.loc[i, "ecg_id"]) for i in mine[1:]]
    assert len(others) < 2 or any(set(p) <= set(others) for p in pairs)
    assert left_out_lines(left_out) == [
        f"left out 1 ECG (no_recording_date: from consecutive pairs only): {victim}; see generation.json"
    ]


def test_recording_dates_parse_the_column_once_as_each_value_alone():
    """The column is parsed at once, and what that parse misses (another format than the first value's) on its
    own: every row gets what ``pd.to_datetime(value, errors="coerce")`` gives it."""
    from ecgqa.generation.ptbxl import recording_dates

    raw = ["1984-11-09 09:17:34", "", None, "not a date", "1984-11-10", float("nan"), "1990-01-01 00:00:00"]
    db = pd.DataFrame({"recording_date": raw}, index=range(10, 17))
    got = recording_dates(db)
    assert list(got.index) == list(db.index)
    for value, date in zip(raw, got, strict=True):
        alone = pd.to_datetime(value, errors="coerce")
        assert (pd.isna(date) and pd.isna(alone)) or date == alone, value
    assert got[14] == pd.Timestamp("1984-11-10")  # the first value's format does not fit it: parsed alone
    assert recording_dates(db.drop(columns="recording_date")).isna().all()


def test_read_ptbxl_shares_equal_label_rows_between_ecgs(small_root, sample_paths):
    inp, _ = read_ptbxl(small_root, measure=False, progress=False)
    rows = [r for labels in inp.labels.values() for r in labels.values()]
    assert len({id(r) for r in rows}) < len(rows) / 2  # most lead rows are equal, and shared
    db = pd.read_csv(small_root / "ptbxl_database.csv", index_col="ecg_id")
    statements = Statements.read(sample_paths.ptbxl_records / "scp_statements.csv")
    for e in inp.labels:  # and every ECG's labels are still its own derivation
        assert inp.labels[e] == derive(db.loc[e].to_dict() | {"ecg_id": e}, statements, None, release_rules=True)


def test_missing_scp_statements_is_one_line_for_generate_and_check(tmp_path, sample_paths, bundled_db):
    root = _root(tmp_path / "root", sample_paths, bundled_db.head(10), statements=False)
    for args in (
        ("generate", "ptbxl", "--records", str(root), "--out", str(tmp_path / "out"), "--no-measure"),
        ("generate", "check", "--release", str(sample_paths.ptbxl_release), "--records", str(root), "--no-measure"),
    ):
        r = _run(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: no scp_statements.csv in {root}"), r.stderr
    # found next to --metadata when the root has none
    meta_dir = tmp_path / "meta"
    meta_dir.mkdir()
    (meta_dir / "scp_statements.csv").symlink_to(sample_paths.ptbxl_records / "scp_statements.csv")
    bundled_db.head(10).to_csv(meta_dir / "ptbxl_database.csv", index=False)
    assert ptbxl_sources(root, meta_dir / "ptbxl_database.csv") == (
        meta_dir / "ptbxl_database.csv",
        meta_dir / "scp_statements.csv",
    )
    with pytest.raises(InputError, match=f"no scp_statements.csv in {root} nor in {tmp_path}"):
        ptbxl_sources(root, tmp_path / "elsewhere.csv")


def test_left_out_lines_for_codes():
    lines = left_out_lines(
        {
            "no_record": [5, 6],
            "unmapped_dx_codes": {"164889003": 3, "59118001": 1},
            "release_statuses": {"source": "release", "ecgs_from_release": 4},  # a report, not codes: no line
        }
    )
    assert lines == [
        "left out 2 ECGs (no_record): 5, 6; see generation.json",
        "unmapped_dx_codes: 2 codes ignored (164889003: 3 ECGs, 59118001: 1 ECG); see generation.json",
    ]
