"""PTB-XL → :class:`~ecgqa.generation.source.GenerationInput` (``ecgqa generate ptbxl``).

Rows of ``ptbxl_database.csv`` that are ``validated_by_human`` (the authors encoded only those) and whose
500 Hz record exists under ROOT; labels from :func:`ecgqa.data.attributes.derive` with the release's rules
(``release_rules=True``) and, unless ``measure=False``, the signal's measurements
(:func:`ecgqa.data.attributes.measure_records`: numeric features and heart axis, in ``num_proc`` processes).
:func:`ptbxl_sources` owns where the metadata and ``scp_statements.csv`` are found (``generate ptbxl`` and
``generate check``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ecgqa.data.attributes import (
    NUM_PROC_RANGE,
    Statements,
    derive,
    measure_records,
    num_proc_ok,
    parse_scp_codes,
    read_metadata,
)
from ecgqa.files import sha256_file
from ecgqa.generation.source import GenerationInput, RowPool
from mapping.sources import ptbxl_record_path


class InputError(ValueError):
    """An input that cannot be used; the message names the file or record."""


def check_num_proc(num_proc: Any) -> int:
    """``num_proc`` when it is a whole number in :data:`NUM_PROC_RANGE`; one clear line otherwise."""
    if not num_proc_ok(num_proc):
        raise InputError(
            f"--num-proc {num_proc}: give a number of measuring processes between {NUM_PROC_RANGE[0]} "
            f"and {NUM_PROC_RANGE[1]} (1 measures in this process)"
        )
    return num_proc


def ptbxl_sources(root: str | Path, metadata: str | Path | None = None) -> tuple[Path, Path]:
    """(``ptbxl_database.csv``, ``scp_statements.csv``) of a PTB-XL root.

    ``metadata`` defaults to ``ROOT/ptbxl_database.csv``; ``scp_statements.csv`` is looked for next to the
    records, then next to the metadata. Neither found → :class:`InputError` naming both places.
    """
    root = Path(root)
    metadata = Path(metadata) if metadata is not None else root / "ptbxl_database.csv"
    for folder in (root, metadata.parent):
        if (folder / "scp_statements.csv").is_file():
            return metadata, folder / "scp_statements.csv"
    where = f"{root}" if metadata.parent.resolve() == root.resolve() else f"{root} nor in {metadata.parent}"
    raise InputError(
        f"no scp_statements.csv in {where} (PTB-XL ships it next to ptbxl_database.csv; it says which "
        "SCP codes are diagnostic, form and rhythm statements)"
    )


def recording_dates(db: pd.DataFrame) -> pd.Series:
    """``recording_date`` of every row (index: ``ecg_id``) as a Timestamp, NaT where empty or unparseable: the
    column parsed at once (its format inferred from the first value, as PTB-XL writes every date), then each
    value that parse missed on its own, so every row gets what ``pd.to_datetime(value, errors="coerce")``
    gives it."""
    if "recording_date" not in db.columns:
        return pd.Series(pd.NaT, index=db.index, dtype="datetime64[us]")
    raw = db["recording_date"]
    with warnings.catch_warnings():  # "could not infer format": pandas then parses each value on its own
        warnings.simplefilter("ignore", UserWarning)
        dates = pd.to_datetime(raw, errors="coerce")
    retry = dates.isna() & raw.notna()
    for i in np.flatnonzero(retry.to_numpy()):
        dates.iloc[i] = pd.to_datetime(raw.iloc[i], errors="coerce")
    return dates


def read_ptbxl(
    root: str | Path,
    metadata: str | Path | None = None,
    *,
    measure: bool = True,
    progress: bool = True,
    num_proc: int = 1,
) -> tuple[GenerationInput, dict[str, Any]]:
    """The GenerationInput of a PTB-XL root, and what was left out (``{"no_record": [...], ...}``).

    Rows are read first, then every record is measured (``num_proc`` processes:
    :func:`ecgqa.data.attributes.measure_records`), then the labels are derived. Besides the ECGs left out
    (not validated by a human, no record, unreadable record), ``left_out`` lists what is not used of the
    ECGs kept: ``no_recording_date`` (an empty or unparseable ``recording_date``: no consecutive pairs
    for that ECG, single and irrelevant-pair questions as usual) and ``unknown_scp_codes`` (``{code:
    [ecg_id, …]}``: codes ``scp_statements.csv`` does not list, so no superclass / statement kind is
    derived from them).
    """
    check_num_proc(num_proc)
    root = Path(root)
    metadata, statements_path = ptbxl_sources(root, metadata)
    db = read_metadata(metadata)
    statements = Statements.read(statements_path)
    left_out: dict[str, Any] = {
        "not_validated_by_human": [],
        "no_record": [],
        "unreadable_record": [],
        "no_recording_date": [],
        "unknown_scp_codes": {},
    }
    if "validated_by_human" in db.columns:
        keep = db["validated_by_human"].astype(str).str.lower().isin(["true", "1"])
        left_out["not_validated_by_human"] = [int(i) for i in db.index[~keep]]
        db = db[keep]
    if "patient_id" not in db.columns or db["patient_id"].isna().any():
        missing = [int(i) for i in db.index[db["patient_id"].isna()]] if "patient_id" in db.columns else []
        listed = f"ecg_id {', '.join(map(str, missing[:10]))}{' ...' if len(missing) > 10 else ''}: " if missing else ""
        raise InputError(f"{metadata}: {listed}no patient_id (the split is by patient, so every ECG needs one)")
    paths: dict[int, Path] = {}
    for ecg_id in db.index:
        path = root / ptbxl_record_path(int(ecg_id))
        if path.with_suffix(".hea").is_file():
            paths[int(ecg_id)] = path
        else:
            left_out["no_record"].append(int(ecg_id))
    measured = dict(zip(paths, measure_records(paths.values(), num_proc, progress), strict=True)) if measure else {}
    dates = recording_dates(db)
    pool = RowPool()  # equal label rows of different ECGs share one object
    rows, labels = [], {}
    for ecg_id, rec in tqdm(db.iterrows(), total=len(db), desc="read PTB-XL", unit="ECG", disable=not progress):
        ecg_id = int(ecg_id)
        if ecg_id not in paths:
            continue
        m = None
        if measure:
            m = measured[ecg_id]
            if m is None:
                left_out["unreadable_record"].append(ecg_id)
                continue
        labels[ecg_id] = pool(derive(rec.to_dict() | {"ecg_id": ecg_id}, statements, m, release_rules=True))
        if statements.codes:
            for code in parse_scp_codes(rec.get("scp_codes")):
                if code not in statements.codes:
                    left_out["unknown_scp_codes"].setdefault(code, []).append(ecg_id)
        recorded_at = dates[ecg_id]
        if pd.isna(recorded_at):
            left_out["no_recording_date"].append(ecg_id)
        rows.append(
            {
                "ecg_id": ecg_id,
                "patient_id": rec.get("patient_id"),
                "recorded_at": recorded_at,
                "record": str(paths[ecg_id]),
                "record_name": str(ecg_id),
                "fs": 500,
            }
        )
    if not rows:
        raise InputError(f"{metadata}: no ECG with a record under {root}/records500 (checked {len(db)} rows)")
    ecgs = pd.DataFrame(rows).set_index("ecg_id")
    sources = {
        str(metadata.resolve()): sha256_file(metadata),
        str(statements_path.resolve()): sha256_file(statements_path),
    }
    classes = frozenset(c for row in labels.values() for labs in row.values() for c in labs)
    inp = GenerationInput(
        dataset="ptbxl", ecgs=ecgs, labels=labels, classes=classes, has_likelihood=True, sources=sources
    )
    return inp, {k: v for k, v in left_out.items() if v}
