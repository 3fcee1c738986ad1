"""Where a source database keeps the record an ECG-QA id points at (the path rules, in one place)."""

from __future__ import annotations

from pathlib import Path

VERSIONS = ("ptbxl", "mimic-iv-ecg")
#: The short names the CLI accepts for each release version.
SOURCE_ALIASES = {"ptbxl": "ptbxl", "ptb-xl": "ptbxl", "mimic": "mimic-iv-ecg", "mimic-iv-ecg": "mimic-iv-ecg"}
PTBXL_RATES = {500: ("records500", "hr"), 100: ("records100", "lr")}


def ptbxl_record_path(ecg_id: int, rate: int = 500) -> str:
    """``records500/00000/00001_hr`` for ecg_id 1 at 500 Hz (relative to the PTB-XL root, no extension)."""
    if rate not in PTBXL_RATES:
        raise ValueError(f"PTB-XL records exist at {sorted(PTBXL_RATES)} Hz, not {rate} Hz")
    folder, suffix = PTBXL_RATES[rate]
    return f"{folder}/{ecg_id // 1000 * 1000:05d}/{ecg_id:05d}_{suffix}"


def mimic_record_paths(root: Path) -> dict[int, str]:
    """study_id → record path (relative to ``root``) from MIMIC-IV-ECG's ``record_list.csv``."""
    import pandas as pd  # here, not at the top: the CLI imports this module to build its parser

    table = root / "record_list.csv"
    if not table.is_file():
        raise FileNotFoundError(
            f"{table} not found: --records must be the MIMIC-IV-ECG root that holds record_list.csv and files/"
        )
    frame = pd.read_csv(table, usecols=["study_id", "path"], dtype={"study_id": "int64", "path": "string"})
    return dict(zip(frame["study_id"].tolist(), frame["path"].tolist(), strict=False))
