"""Other ECG datasets → :class:`~ecgqa.generation.source.GenerationInput` (``ecgqa generate table|physionet|code15``).

Three readers, one rule set (``docs/generate.md``, "Other datasets"):

- only the classes a dataset labels **exhaustively** are asked (a missing label means "no"), so the options of
  each template are the dataset's subset of ECG-QA's list;
- no likelihoods → no "not sure" (``has_likelihood=False``) and no lead locations (``lead_labels=False``);
- numeric-feature and heart-axis labels come from the signal (``generate`` measures every record with
  :func:`ecgqa.data.attributes.measure_record`), so those templates work on any dataset;
- the output is already mapped (``mapped=True``): each sample carries ``ecg_path`` and ``generation.json``
  maps the integer ``ecg_id``s to the dataset's record names.

Readers:

:func:`read_table`
    A CSV or Parquet table: ``ecg_id`` (positive int), ``patient_id``, ``recorded_at`` (any date/time
    pandas parses, or empty), ``record`` (WFDB record path without extension, relative to the table's
    folder or absolute), optionally ``fs``, and one column per label (1/0, true/false, yes/no; empty = no).
    A label map (JSON ``{"column": "ECG-QA class"}``) names the columns; without one every other column
    must already be an ECG-QA answer class (``ecgqa/generation/data/ptbxl_answers.csv``).
:func:`read_physionet`
    PhysioNet/CinC Challenge 2020/2021 records (WFDB headers with ``# Dx:`` SNOMED CT codes; signals in
    ``.mat`` or ``.dat``). SNOMED codes map to ECG-QA classes through ``data/snomed_ecgqa.csv``
    (source: ``data/SNOMED.md``); codes it does not map are counted in ``left_out``. The Challenge headers
    name no patient, so each record is its own patient (no consecutive pairs).
:func:`read_code15`
    CODE-15% (``exams.csv`` + ``exams_part*.hdf5`` with ``tracings`` (N, 4096, 12) at 400 Hz and ``exam_id``):
    six labels (1dAVb, RBBB, LBBB, SB, ST, AF). The tracings are converted once to WFDB records
    (``wfdb_dir``; the zero padding stripped; values × :data:`CODE15_MV_PER_UNIT` = mV) because every
    consumer (``prepare``, ``serve``) reads WFDB. No exam date: no consecutive pairs.

``read(args)`` is what ``ecgqa generate`` calls (``ecgqa/cli/generate.py``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ecgqa.data.attributes import LOCATED_BASES
from ecgqa.data.constants import LEADS
from ecgqa.data.release import read_class_csv
from ecgqa.files import sha256_file
from ecgqa.generation.answers import NUMERIC
from ecgqa.generation.ptbxl import InputError
from ecgqa.generation.source import GenerationInput, Labels

DATA = Path(__file__).resolve().parent / "data"
SNOMED_MAP = DATA / "snomed_ecgqa.csv"
#: The table's reserved columns (everything else is a label or must be mapped).
TABLE_COLUMNS = ("ecg_id", "patient_id", "recorded_at", "record", "fs")
#: CODE-15% label column → ECG-QA class (the six labels of Ribeiro et al. 2020).
CODE15_LABELS = {
    "1dAVb": "first degree av block",
    "RBBB": "complete right bundle branch block",
    "LBBB": "complete left bundle branch block",
    "SB": "sinus bradycardia",
    "ST": "sinus tachycardia",
    "AF": "atrial fibrillation",
}
CODE15_FS = 400
#: CODE-15% tracings are "at the scale 1e-4 V" (README of github.com/antonior92/automatic-ecg-diagnosis):
#: one unit is 0.1 mV. (Timing features do not depend on it; amplitudes do.)
CODE15_MV_PER_UNIT = 0.1
_TRUE = {"1", "1.0", "true", "yes", "y", "t"}
_FALSE = {"0", "0.0", "false", "no", "n", "f", ""}


# ------------------------------------------------------------------------------------------- classes


def answer_classes() -> frozenset[str]:
    """ECG-QA's PTB-XL answer classes that a label can name (not leads, ranges, numeric features or none)."""
    names = set(read_class_csv(DATA / "ptbxl_answers.csv"))
    skip = {"none", *(f"lead {x}" for x in LEADS)}
    skip |= {n for n in names if "normal range" in n}
    skip |= set(NUMERIC)
    return frozenset(names - skip)


def _located(cls: str) -> tuple[str, str] | None:
    """ "ischemic in anterior leads" → ("ischemic", "anterior"); None for an unlocated class."""
    for base in LOCATED_BASES:
        m = re.fullmatch(rf"{re.escape(base)} in (\w+) leads", cls)
        if m:
            return base, m.group(1)
    return None


def labels_of(present: Iterable[str], classes: Iterable[str]) -> dict[str, Labels]:
    """Rows shaped as ``derive`` returns them: every class of ``classes`` no, those ``present`` yes.

    A located class ("myocardial infarction in anterior leads") is read from its lead group's row
    (``"anterior"``: base class), and also says yes for the base class on the entire row.
    """
    entire: Labels = {}
    rows: dict[str, Labels] = {"entire": entire}
    for cls in classes:
        loc = _located(cls)
        if loc is None:
            entire.setdefault(cls, 0)
        else:
            rows.setdefault(loc[1], {})[loc[0]] = 0
    for cls in present:
        loc = _located(cls)
        if loc is None:
            entire[cls] = 1
        else:
            rows.setdefault(loc[1], {})[loc[0]] = 1
            if loc[0] in entire:
                entire[loc[0]] = 1
    return rows


def _bool(value: Any, where: str) -> int:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return 0
    if isinstance(value, bool | np.bool_):
        return int(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return 1
    if text in _FALSE:
        return 0
    raise InputError(f"{where}: label value {value!r} is not 1/0, true/false or yes/no")


def _fs_of(record: Path) -> float:
    import wfdb

    return float(wfdb.rdheader(str(record)).fs)


def _ecgs_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    cols = ["ecg_id", "patient_id", "recorded_at", "record", "record_name", "fs"]
    df = pd.DataFrame(rows, columns=cols).set_index("ecg_id")
    df["recorded_at"] = pd.to_datetime(df["recorded_at"], errors="coerce")
    return df


# --------------------------------------------------------------------------------------------- table


def read_label_map(path: str | Path | None) -> dict[str, str] | None:
    if path is None:
        return None
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"--label-map {path}: not a readable JSON file ({e})") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InputError(f'--label-map {path}: expected a JSON object {{"column": "ECG-QA class", ...}}')
    return value


def read_table(
    table: str | Path, label_map: Mapping[str, str] | None = None, *, progress: bool = True
) -> tuple[GenerationInput, dict[str, Any]]:
    """A CSV / Parquet table of ECGs and labels (module docstring) → (GenerationInput, left_out)."""
    table = Path(table)
    if not table.is_file():
        raise InputError(f"{table}: no such table")
    try:
        df = pd.read_parquet(table) if table.suffix.lower() in (".parquet", ".pq") else pd.read_csv(table)
    except Exception as e:  # noqa: BLE001 - pandas raises many kinds; the message names the file
        kind = "Parquet" if "parq" in table.suffix.lower() else "CSV"
        raise InputError(f"{table}: cannot be read as a {kind} table ({e})") from None
    missing = [c for c in ("ecg_id", "patient_id", "recorded_at", "record") if c not in df.columns]
    if missing:
        raise InputError(f"{table}: missing columns {missing} (needs ecg_id, patient_id, recorded_at, record)")
    known = answer_classes()
    others = [c for c in df.columns if c not in TABLE_COLUMNS]
    if label_map is None:
        unknown = [c for c in others if c not in known]
        if unknown:
            raise InputError(
                f"{table}: columns {unknown[:5]} are not ECG-QA classes; pass --label-map "
                '(JSON {"column": "ECG-QA class"}) naming the label columns'
            )
        label_map = {c: c for c in others}
    for column, cls in label_map.items():
        if column not in df.columns:
            raise InputError(f"label map: column {column!r} is not in {table}")
        if cls not in known:
            raise InputError(f"label map: {column!r} → {cls!r} is not an ECG-QA class (see ptbxl_answers.csv)")
    if not label_map:
        raise InputError(f"{table}: no label column")
    ids = pd.to_numeric(df["ecg_id"], errors="coerce")
    bad = ids.isna() | (ids != ids.round()) | (ids < 1)
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise InputError(f"{table}, row {i + 2}: ecg_id {df['ecg_id'].iloc[i]!r} is not a positive integer")
    if ids.duplicated().any():
        raise InputError(f"{table}: ecg_id {int(ids[ids.duplicated()].iloc[0])} appears more than once")
    classes = frozenset(label_map.values())
    rows, labels = [], {}
    left_out: dict[str, list] = {"no_record": []}
    for i, rec in tqdm(df.iterrows(), total=len(df), desc="read table", unit="ECG", disable=not progress):
        ecg_id = int(ids[i])
        record = Path(str(rec["record"]))
        record = record if record.is_absolute() else (table.parent / record)
        record = record.with_suffix("") if record.suffix in (".hea", ".dat", ".mat") else record
        if not record.with_name(record.name + ".hea").is_file():
            left_out["no_record"].append(ecg_id)
            continue
        fs = rec["fs"] if "fs" in df.columns and pd.notna(rec.get("fs")) else _fs_of(record)
        where = f"{table}, ecg_id {ecg_id}"
        present = [cls for col, cls in label_map.items() if _bool(rec[col], f"{where}, column {col!r}")]
        labels[ecg_id] = labels_of(present, classes)
        rows.append(
            {
                "ecg_id": ecg_id,
                "patient_id": rec["patient_id"],
                "recorded_at": rec["recorded_at"],
                "record": str(record.resolve()),
                "record_name": str(rec["record"]),
                "fs": float(fs),
            }
        )
    inp = GenerationInput(
        "table",
        _ecgs_frame(rows),
        labels,
        classes,
        has_likelihood=False,
        lead_labels=False,
        sources={str(table): sha256_file(table)},
        mapped=True,
    )
    return inp, left_out


# ----------------------------------------------------------------------------------------- physionet


def snomed_map() -> dict[str, str]:
    """SNOMED CT code → ECG-QA class (``data/snomed_ecgqa.csv``)."""
    df = pd.read_csv(SNOMED_MAP, dtype=str)
    return dict(zip(df["snomed"], df["ecgqa_class"], strict=True))


_DATE = re.compile(r"\b(\d{1,2}-[A-Za-z]{3}-\d{4}|\d{1,2}/\d{1,2}/\d{4})\b")
_TIME = re.compile(r"\b(\d{1,2}:\d{2}:\d{2})\b")


def parse_challenge_header(path: Path) -> dict[str, Any]:
    """fs, date/time and the ``# Dx:`` codes of one Challenge header (the first line may hold
    "05-Feb-2020 11:39:16", date first, which standard WFDB readers misread)."""
    lines = path.read_text(errors="replace").splitlines()
    if not lines:
        raise InputError(f"{path}: empty header")
    first = lines[0].split()
    try:
        fs = float(first[2].split("/")[0])
    except (IndexError, ValueError):
        raise InputError(f"{path}: first line {lines[0]!r} is not a WFDB record line (name, signals, fs, …)") from None
    date, time = _DATE.search(lines[0]), _TIME.search(lines[0])
    when = pd.to_datetime(f"{date.group(1)} {time.group(1) if time else ''}", errors="coerce") if date else pd.NaT
    dx = None
    for line in lines:
        m = re.match(r"#\s*Dx\s*:\s*(.*)", line.strip())
        if m:
            dx = [c.strip() for c in m.group(1).split(",") if c.strip()]
    if dx is None:
        raise InputError(f"{path}: no '# Dx:' line (not a PhysioNet Challenge 2020/2021 header)")
    return {"fs": fs, "recorded_at": when, "dx": dx}


def read_physionet(root: str | Path, *, progress: bool = True) -> tuple[GenerationInput, dict[str, Any]]:
    """Every Challenge record under ``root`` (recursively) → (GenerationInput, left_out)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--records {root}: no such folder")
    headers = sorted(root.rglob("*.hea"))
    if not headers:
        raise InputError(f"--records {root}: no WFDB header (*.hea) under it")
    mapping = snomed_map()
    classes = frozenset(mapping.values())
    rows, labels = [], {}
    unmapped: Counter[str] = Counter()
    digest = hashlib.sha256()
    for ecg_id, header in enumerate(tqdm(headers, desc="read headers", unit="ECG", disable=not progress), start=1):
        info = parse_challenge_header(header)
        digest.update(header.read_bytes())
        present = []
        for code in info["dx"]:
            if code in mapping:
                present.append(mapping[code])
            else:
                unmapped[code] += 1
        name = str(header.relative_to(root).with_suffix(""))
        labels[ecg_id] = labels_of(present, classes)
        rows.append(
            {
                "ecg_id": ecg_id,
                "patient_id": name,  # the Challenge headers name no patient
                "recorded_at": info["recorded_at"],
                "record": str(header.with_suffix("").resolve()),
                "record_name": name,
                "fs": info["fs"],
            }
        )
    inp = GenerationInput(
        "physionet",
        _ecgs_frame(rows),
        labels,
        classes,
        has_likelihood=False,
        lead_labels=False,
        sources={f"{root}/*.hea": digest.hexdigest(), str(SNOMED_MAP.name): sha256_file(SNOMED_MAP)},
        mapped=True,
    )
    return inp, {"unmapped_dx_codes": dict(unmapped.most_common())}


# -------------------------------------------------------------------------------------------- code15


def _strip_padding(x: np.ndarray) -> np.ndarray:
    """(T, 12) → the rows between the first and the last that are not all zero (CODE-15% pads with zeros)."""
    nonzero = np.flatnonzero(np.any(x != 0, axis=1))
    return x[nonzero[0] : nonzero[-1] + 1] if len(nonzero) else x[:0]


def write_wfdb(signal_mv: np.ndarray, fs: float, folder: Path, name: str) -> Path:
    """A (T, 12) mV signal → WFDB record ``folder/name`` (format 16, 1000 adu/mV, leads I … V6)."""
    import wfdb

    folder.mkdir(parents=True, exist_ok=True)
    digital = np.clip(np.round(np.asarray(signal_mv, dtype=np.float64) * 1000.0), -32767, 32767).astype(np.int16)
    wfdb.wrsamp(
        name,
        fs=fs,
        units=["mV"] * 12,
        sig_name=list(LEADS),
        d_signal=digital,
        fmt=["16"] * 12,
        adc_gain=[1000.0] * 12,
        baseline=[0] * 12,
        write_dir=str(folder),
    )
    return folder / name


def read_code15(
    root: str | Path, wfdb_dir: str | Path, *, progress: bool = True
) -> tuple[GenerationInput, dict[str, Any]]:
    """CODE-15% ``root`` (``exams.csv`` + ``exams_part*.hdf5``) → (GenerationInput, left_out).

    The WFDB copies of the tracings are written to ``wfdb_dir`` (named by exam_id).
    """
    import h5py

    root, wfdb_dir = Path(root), Path(wfdb_dir)
    csv = root / "exams.csv"
    if not csv.is_file():
        raise InputError(f"--records {root}: no exams.csv (expected the CODE-15% folder)")
    exams = pd.read_csv(csv)
    missing = [c for c in ("exam_id", "patient_id", "trace_file", *CODE15_LABELS) if c not in exams.columns]
    if missing:
        raise InputError(f"{csv}: missing columns {missing} (not CODE-15%'s exams.csv)")
    classes = frozenset(CODE15_LABELS.values())
    rows, labels = [], {}
    left_out: dict[str, list] = {"no_trace_file": [], "not_in_trace_file": [], "empty_tracing": []}
    sources = {str(csv): sha256_file(csv)}
    for trace_file, group in exams.groupby("trace_file", sort=True):
        h5 = root / str(trace_file)
        if not h5.is_file():
            left_out["no_trace_file"].extend(int(e) for e in group["exam_id"])
            continue
        sources[str(h5)] = f"size {h5.stat().st_size}"
        with h5py.File(h5, "r") as f:
            if "tracings" not in f or "exam_id" not in f:
                raise InputError(f"{h5}: no 'tracings' / 'exam_id' datasets (not a CODE-15% exams_part file)")
            index = {int(e): i for i, e in enumerate(f["exam_id"][:]) if int(e) > 0}
            tracings = f["tracings"]
            if tracings.ndim != 3 or tracings.shape[2] != 12:
                raise InputError(f"{h5}: tracings of shape {tracings.shape}, expected (N, samples, 12)")
            records = group.to_dict("records")
            for rec in tqdm(records, desc=f"convert {h5.name}", unit="ECG", disable=not progress):
                exam = int(rec["exam_id"])
                if exam not in index:
                    left_out["not_in_trace_file"].append(exam)
                    continue
                x = _strip_padding(np.asarray(tracings[index[exam]], dtype=np.float64))
                if len(x) < 2 * CODE15_FS:
                    left_out["empty_tracing"].append(exam)
                    continue
                path = write_wfdb(x * CODE15_MV_PER_UNIT, CODE15_FS, wfdb_dir, str(exam))
                where = f"{csv}, exam_id {exam}"
                present = [cls for col, cls in CODE15_LABELS.items() if _bool(rec[col], where)]
                labels[exam] = labels_of(present, classes)
                rows.append(
                    {
                        "ecg_id": exam,
                        "patient_id": rec["patient_id"],
                        "recorded_at": pd.NaT,
                        "record": str(path.resolve()),
                        "record_name": str(exam),
                        "fs": float(CODE15_FS),
                    }
                )
    inp = GenerationInput(
        "code15",
        _ecgs_frame(rows),
        labels,
        classes,
        has_likelihood=False,
        lead_labels=False,
        sources=sources,
        mapped=True,
    )
    return inp, left_out


# ------------------------------------------------------------------------------------------------ CLI


def read(args: Any) -> tuple[GenerationInput, dict[str, Any]]:
    """``ecgqa generate physionet|code15|table`` arguments → (GenerationInput, left_out)."""
    progress = not getattr(args, "quiet", False)
    if args.dataset == "table":
        return read_table(args.table, read_label_map(getattr(args, "label_map", None)), progress=progress)
    if args.dataset == "physionet":
        return read_physionet(args.records, progress=progress)
    if args.dataset == "code15":
        out = Path(args.out)
        wfdb_dir = getattr(args, "wfdb", None) or out.with_name(out.name + "-records")
        return read_code15(args.records, wfdb_dir, progress=progress)
    raise InputError(f"dataset {args.dataset!r}: expected table, physionet or code15")
