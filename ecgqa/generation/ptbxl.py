"""PTB-XL → :class:`~ecgqa.generation.source.GenerationInput` (``ecgqa generate ptbxl``).

Rows of ``ptbxl_database.csv`` that are ``validated_by_human`` (the authors encoded only those) and whose
500 Hz record exists under ROOT; labels from :func:`ecgqa.data.attributes.derive` with the release's rules
(``release_rules=True``) and, unless ``measure=False``, the signal's measurements
(:func:`ecgqa.data.attributes.measure_record`: numeric features and heart axis).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from ecgqa.data.attributes import Statements, derive, measure_record, read_metadata
from ecgqa.files import sha256_file
from ecgqa.generation.source import GenerationInput
from mapping.sources import ptbxl_record_path


class InputError(ValueError):
    """An input that cannot be used; the message names the file or record."""


def read_ptbxl(
    root: str | Path,
    metadata: str | Path | None = None,
    *,
    measure: bool = True,
    progress: bool = True,
) -> tuple[GenerationInput, dict[str, Any]]:
    """The GenerationInput of a PTB-XL root, and what was left out (``{"no_record": [...], ...}``)."""
    root = Path(root)
    metadata = Path(metadata) if metadata is not None else root / "ptbxl_database.csv"
    statements_path = root / "scp_statements.csv"
    if not statements_path.is_file():
        statements_path = metadata.parent / "scp_statements.csv"
    if not statements_path.is_file():
        raise InputError(f"{root}: no scp_statements.csv (next to the records or to --metadata)")
    db = read_metadata(metadata)
    statements = Statements.read(statements_path)
    left_out: dict[str, list[int]] = {"not_validated_by_human": [], "no_record": [], "unreadable_record": []}
    if "validated_by_human" in db.columns:
        keep = db["validated_by_human"].astype(str).str.lower().isin(["true", "1"])
        left_out["not_validated_by_human"] = [int(i) for i in db.index[~keep]]
        db = db[keep]
    if "patient_id" not in db.columns or db["patient_id"].isna().any():
        missing = [int(i) for i in db.index[db["patient_id"].isna()]] if "patient_id" in db.columns else []
        listed = f"ecg_id {', '.join(map(str, missing[:10]))}{' ...' if len(missing) > 10 else ''}: " if missing else ""
        raise InputError(f"{metadata}: {listed}no patient_id (the split is by patient, so every ECG needs one)")
    rows, labels = [], {}
    for ecg_id, rec in tqdm(db.iterrows(), total=len(db), desc="read PTB-XL", unit="ECG", disable=not progress):
        ecg_id = int(ecg_id)
        path = root / ptbxl_record_path(ecg_id)
        if not path.with_suffix(".hea").is_file():
            left_out["no_record"].append(ecg_id)
            continue
        m = None
        if measure:
            m = measure_record(path)
            if m is None:
                left_out["unreadable_record"].append(ecg_id)
                continue
        labels[ecg_id] = derive(rec.to_dict() | {"ecg_id": ecg_id}, statements, m, release_rules=True)
        rows.append(
            {
                "ecg_id": ecg_id,
                "patient_id": rec.get("patient_id"),
                "recorded_at": pd.to_datetime(rec.get("recording_date"), errors="coerce"),
                "record": str(path),
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
