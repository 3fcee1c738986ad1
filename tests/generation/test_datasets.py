"""Other datasets (``ecgqa.generation.datasets``): fixtures written in each dataset's exact format from the
bundled PTB-XL records (converted, labels mapped from their SCP codes), read back, generated, prepared."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import wfdb
from scipy.signal import resample_poly

from ecgqa.data.constants import LEADS
from ecgqa.generation import datasets as D
from ecgqa.generation.ptbxl import InputError

N = 40  # bundled ECGs per fixture
#: SCP statement → the SNOMED code a Challenge header would carry (the first code of snomed_ecgqa.csv)
SCP_TO_SNOMED: dict[str, str] = {}
for _row in pd.read_csv(D.SNOMED_MAP, dtype=str).itertuples():
    if isinstance(_row.scp, str):
        SCP_TO_SNOMED.setdefault(_row.scp, _row.snomed)
CODE15_SCP = {"1dAVb": "1AVB", "RBBB": "CRBBB", "LBBB": "CLBBB", "SB": "SBRAD", "ST": "STACH", "AF": "AFIB"}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecgqa", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def ptbxl(sample_paths) -> pd.DataFrame:
    db = pd.read_csv(sample_paths.ptbxl_records / "ptbxl_database.csv", index_col="ecg_id")
    db["codes"] = db["scp_codes"].map(ast.literal_eval)
    root = sample_paths.ptbxl_records
    db["path"] = [str(root / "records500" / f"{e // 1000 * 1000:05d}" / f"{e:05d}_hr") for e in db.index]
    return db.head(N)


def _signal(path: str) -> np.ndarray:
    """(T, 12) mV in LEADS order, read with wfdb directly."""
    sig, fields = wfdb.rdsamp(path)
    names = [n.upper() for n in fields["sig_name"]]
    return sig[:, [names.index(lead.upper()) for lead in LEADS]]


# ------------------------------------------------------------------------------------ physionet fixture


def write_challenge_record(folder: Path, name: str, signal_mv: np.ndarray, fs: int, dx: list[str]) -> None:
    """A PhysioNet Challenge 2020/2021 record: MATLAB v4 ``val`` (int16, 12 × T, 1000 adu/mV) + WFDB header
    whose first line is date-first and whose comments carry ``#Dx:`` SNOMED codes."""
    val = np.round(signal_mv.T * 1000).astype(np.int16)
    scipy.io.savemat(folder / f"{name}.mat", {"val": val}, format="4")
    lines = [f"{name} 12 {fs} {val.shape[1]} 05-Feb-2020 11:39:16"]
    for i, lead in enumerate(LEADS):
        checksum = int(val[i].astype(np.int64).sum()) % 65536
        checksum -= 65536 if checksum > 32767 else 0
        lines.append(f"{name}.mat 16+24 1000/mV 16 0 {val[i, 0]} {checksum} 0 {lead}")
    lines += ["#Age: 56", "#Sex: Female", f"#Dx: {','.join(dx)}", "#Rx: Unknown", "#Hx: Unknown", "#Sx: Unknown"]
    (folder / f"{name}.hea").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def physionet(tmp_path_factory, ptbxl) -> Path:
    root = tmp_path_factory.mktemp("physionet") / "WFDB"
    root.mkdir()
    for k, (ecg_id, row) in enumerate(ptbxl.iterrows(), start=1):
        dx = [SCP_TO_SNOMED[c] for c in row["codes"] if c in SCP_TO_SNOMED]
        if k == 3:
            dx.append("27885002")  # complete heart block: no ECG-QA class
        write_challenge_record(root, f"HR{ecg_id:05d}", _signal(row["path"]), 500, dx or ["27885002"])
    return root


def test_physionet_reader_maps_snomed_to_the_scp_classes(physionet, ptbxl):
    inp, left_out = D.read_physionet(physionet, progress=False)
    assert len(inp.ecgs) == N and inp.mapped and not inp.has_likelihood and not inp.lead_labels
    assert left_out["unmapped_dx_codes"]["27885002"] >= 1
    by_name = {name: e for e, name in inp.ecgs["record_name"].items()}
    checked = 0
    for ecg_id, row in ptbxl.iterrows():
        e = by_name[f"HR{ecg_id:05d}"]
        entire = inp.labels[e]["entire"]
        for scp, cls in (
            ("SR", "sinus rhythm"),
            ("AFIB", "atrial fibrillation"),
            ("LVH", "left ventricular hypertrophy"),
        ):
            assert entire[cls] == int(scp in row["codes"]), (ecg_id, scp)
            checked += 1
        if "ISCAN" in row["codes"]:
            assert inp.labels[e]["anterior"]["ischemic"] == 1
    assert checked == 3 * N
    assert sum(inp.labels[e]["entire"]["sinus rhythm"] for e in inp.ecgs.index) >= 10  # the test asks something
    assert inp.ecgs["recorded_at"].iloc[0] == pd.Timestamp("2020-02-05 11:39:16")
    assert inp.ecgs["fs"].eq(500).all()


def test_physionet_mat_records_read_back_exactly(physionet, ptbxl):
    """The .mat records are read by the toolkit's reader (what prepare uses) as the original signal."""
    from ecgqa.data.records import read_record

    ecg_id = int(ptbxl.index[0])
    rec = read_record(physionet / f"HR{ecg_id:05d}")
    assert rec.fs == 500 and np.allclose(rec.signal.T, _signal(ptbxl["path"].iloc[0]), atol=0.0011)


def test_physionet_header_without_dx_is_an_error(tmp_path):
    write_challenge_record(tmp_path, "X1", np.zeros((5000, 12)), 500, ["426783006"])
    header = tmp_path / "X1.hea"
    header.write_text("\n".join(line for line in header.read_text().splitlines() if "Dx" not in line) + "\n")
    with pytest.raises(InputError, match=r"X1\.hea: no '# Dx:' line"):
        D.read_physionet(tmp_path, progress=False)


# --------------------------------------------------------------------------------------- code15 fixture


@pytest.fixture(scope="module")
def code15(tmp_path_factory, ptbxl) -> Path:
    """CODE-15%: exams.csv + two exams_part*.hdf5 files (tracings (n, 4096, 12) float32 at 400 Hz, zero padded
    to 4096, 1 unit = 0.1 mV; exam_id with a trailing 0 row as in the release)."""
    root = tmp_path_factory.mktemp("code15")
    rows = []
    parts = {"exams_part0.hdf5": ptbxl.index[: N // 2], "exams_part1.hdf5": ptbxl.index[N // 2 :]}
    for name, ids in parts.items():
        tracings = np.zeros((len(ids) + 1, 4096, 12), dtype=np.float32)
        for i, ecg_id in enumerate(ids):
            x = resample_poly(_signal(ptbxl.at[ecg_id, "path"]), 4, 5, axis=0)  # 5000 @ 500 Hz → 4000 @ 400 Hz
            tracings[i, 48 : 48 + len(x)] = x / D.CODE15_MV_PER_UNIT
            codes = ptbxl.at[ecg_id, "codes"]
            rows.append(
                {"exam_id": 100000 + int(ecg_id), "age": 60, "is_male": True, "nn_predicted_age": 61.0}
                | {col: scp in codes for col, scp in CODE15_SCP.items()}
                | {"patient_id": int(ptbxl.at[ecg_id, "patient_id"]), "death": False, "timey": 1.0}
                | {"normal_ecg": "NORM" in codes, "trace_file": name}
            )
        with h5py.File(root / name, "w") as f:
            f.create_dataset("tracings", data=tracings)
            f.create_dataset("exam_id", data=np.array([100000 + int(e) for e in ids] + [0], dtype=np.int64))
    pd.DataFrame(rows).to_csv(root / "exams.csv", index=False)
    return root


def test_code15_reader_converts_tracings_and_labels(code15, ptbxl, tmp_path):
    inp, left_out = D.read_code15(code15, tmp_path / "wfdb", progress=False)
    assert len(inp.ecgs) == N and not any(left_out.values())
    assert inp.classes == frozenset(D.CODE15_LABELS.values())
    with h5py.File(code15 / "exams_part1.hdf5") as f:
        raw, exam = f["tracings"][0], int(f["exam_id"][0])
    sig, fields = wfdb.rdsamp(str(tmp_path / "wfdb" / str(exam)))
    assert fields["fs"] == 400 and sig.shape == (4000, 12)  # padding stripped
    assert np.allclose(sig, raw[48:4048] * D.CODE15_MV_PER_UNIT, atol=0.0011)
    for ecg_id, row in ptbxl.iterrows():
        entire = inp.labels[100000 + int(ecg_id)]["entire"]
        for col, scp in CODE15_SCP.items():
            assert entire[D.CODE15_LABELS[col]] == int(scp in row["codes"])
    assert inp.ecgs["recorded_at"].isna().all()  # no exam dates: no consecutive pairs


def test_code15_wrong_csv_is_an_error(tmp_path):
    pd.DataFrame({"exam_id": [1]}).to_csv(tmp_path / "exams.csv", index=False)
    with pytest.raises(InputError, match="exams.csv: missing columns"):
        D.read_code15(tmp_path, tmp_path / "w", progress=False)


# ---------------------------------------------------------------------------------------- generic table


@pytest.fixture(scope="module")
def table(tmp_path_factory, ptbxl) -> Path:
    folder = tmp_path_factory.mktemp("table")
    (folder / "records").symlink_to(Path(ptbxl["path"].iloc[0]).parent)
    df = pd.DataFrame(
        {
            "ecg_id": [int(e) + 7 for e in ptbxl.index],
            "patient_id": ptbxl["patient_id"].astype(int).to_numpy(),
            "recorded_at": ptbxl["recording_date"].to_numpy(),
            "record": [f"records/{Path(p).name}" for p in ptbxl["path"]],
            "afib": ["yes" if "AFIB" in c else "" for c in ptbxl["codes"]],
            "sr": [int("SR" in c) for c in ptbxl["codes"]],
            "site": "A",
        }
    )
    df.to_csv(folder / "ecgs.csv", index=False)
    (folder / "map.json").write_text(json.dumps({"afib": "atrial fibrillation", "sr": "sinus rhythm"}))
    return folder


def test_table_reader(table, ptbxl):
    inp, left_out = D.read_table(table / "ecgs.csv", D.read_label_map(table / "map.json"), progress=False)
    assert len(inp.ecgs) == N and left_out == {"no_record": []}
    assert inp.classes == {"atrial fibrillation", "sinus rhythm"}
    for ecg_id, row in ptbxl.iterrows():
        assert inp.labels[int(ecg_id) + 7]["entire"]["sinus rhythm"] == int("SR" in row["codes"])
    assert inp.ecgs["recorded_at"].notna().all() and Path(inp.ecgs["record"].iloc[0] + ".hea").is_file()
    with pytest.raises(InputError, match=r"columns \['afib', 'sr', 'site'\] are not ECG-QA classes"):
        D.read_table(table / "ecgs.csv", None, progress=False)
    bad = pd.read_csv(table / "ecgs.csv", dtype=str)
    bad.loc[3, "sr"] = "maybe"
    bad.to_csv(table / "bad.csv", index=False)
    with pytest.raises(InputError, match=rf"bad.csv, ecg_id {int(bad.loc[3, 'ecg_id'])}, column 'sr'"):
        D.read_table(table / "bad.csv", {"sr": "sinus rhythm"}, progress=False)


# ------------------------------------------------------------------------------------------ end to end


def _samples(out: Path) -> list[dict]:
    return [s for p in sorted((out / "template").glob("*/*.json")) for s in json.loads(p.read_text())]


@pytest.mark.slow  # measures 40 records, generates, prepares, reads batches (~1 min per dataset)
@pytest.mark.parametrize("dataset", ["physionet", "code15"])
def test_end_to_end_generate_prepare_consume(dataset, physionet, code15, tmp_path):
    """``ecgqa generate physionet|code15`` → ``prepare`` (no ``map``: the output carries ecg_path) → the QA
    dataset's batches hold the records' signals. Numeric answers are re-derived with ``ecgqa.data.features``."""
    import torch

    from ecgqa.data.features import numeric_features
    from ecgqa.data.prepared import PreparedData
    from ecgqa.data.records import fit_length, read_record
    from ecgqa.data.torch_datasets import ECGQADataset, collate_qa

    out = tmp_path / "gen"
    records = physionet if dataset == "physionet" else code15
    r = _run("generate", dataset, "--records", str(records), "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "generation.json").read_text())
    samples = _samples(out)
    assert samples and all(len(s["ecg_path"]) == len(s["ecg_id"]) for s in samples)
    assert not any("not sure" in s["answer"] for s in samples)
    assert {s["attribute_type"] for s in samples} >= {"scp_code", "numeric_feature", "heart_axis"}
    numeric = [s for s in samples if s["template_id"] == 39]
    assert numeric, sorted({s["template_id"] for s in samples})
    for s in numeric[:15]:
        rec = read_record(s["ecg_path"][0])
        f = numeric_features(rec.signal, rec.fs)
        feature = next(n for n in f.values if f" {n} " in s["question"])
        where = next(w for w in ("above", "within", "below") if f" {w} " in s["question"])
        assert s["answer"] == ["yes" if f.status(feature) == where else "no"], s
    names = report["record_names"]
    for s in samples[:200]:
        for e, p in zip(s["ecg_id"], s["ecg_path"], strict=True):
            assert Path(p).name == Path(names[str(e)]).name  # record names map back to the written records
    prepared = tmp_path / "prepared"
    r = _run("prepare", str(out), "--out", str(prepared), "--splits", "test", "-q")
    assert r.returncode == 0, r.stderr
    data = PreparedData(prepared)
    assert data.info.splits == {"test": report["n_samples"]["test"]}
    ds = ECGQADataset(data, "test")
    batch = collate_qa([ds[0], ds[len(ds) - 1]])
    assert batch["ecg"].shape[-2:] == (12, 5000) and torch.isfinite(batch["ecg"]).all()
    row = data.split("test")[0]
    path = next(s["ecg_path"][0] for s in samples if s["ecg_id"][0] == row["ecg_id"][0])
    want = fit_length(read_record(path, fs=500).signal, 5000)  # code15: 400 Hz, resampled by prepare
    assert np.allclose(batch["ecg"][0, 0].numpy(), want, atol=1e-3)


# ------------------------------------------------------------------------------------- --statuses release


@pytest.mark.slow  # measures 12 records
def test_statuses_release_uses_the_release_where_it_covers_an_ecg(tmp_path, sample_paths):
    """``generate ptbxl --statuses release``: the bundled shard's implied statuses replace the measured ones
    of its 12 first ECGs, counted apart in generation.json; comparison answers follow them."""
    from ecgqa.generation.release_statuses import load

    found = load(sample_paths.ptbxl_release)
    ids = sorted(found.statuses)[:12]
    root = tmp_path / "ptbxl"
    root.mkdir()
    db = pd.read_csv(sample_paths.ptbxl_records / "ptbxl_database.csv")
    db[db["ecg_id"].isin(ids)].to_csv(root / "ptbxl_database.csv", index=False)
    for name in ("scp_statements.csv", "records500"):
        (root / name).symlink_to(sample_paths.ptbxl_records / name)
    out = tmp_path / "gen"
    args = ["generate", "ptbxl", "--records", str(root), "--out", str(out), "-q"]
    r = _run(*args, "--statuses", "release")
    assert r.returncode == 2 and "--statuses release needs --release" in r.stderr
    r = _run(*args, "--statuses", "release", "--release", str(sample_paths.ptbxl_release))
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "generation.json").read_text())["left_out"]["release_statuses"]
    assert report["ecgs_from_release"] == 12 and report["ecgs_measured_only"] == 0
    assert report["statuses_from_release"] == sum(len(found.statuses[e]) for e in ids)
    became_normal = [s for s in _samples(out) if s["template_id"] == 68]
    assert became_normal
    for s in became_normal:
        first, second = (found.statuses[e] for e in s["ecg_id"])
        want = {f for f in first if f in second and not first[f] and second[f]}
        assert set(s["answer"]) - {"none"} <= want
