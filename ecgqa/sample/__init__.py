"""The bundled real sample: ECG-QA questions answerable from PTB-XL records 1–500.

Laid out exactly like the real releases (``ecgqa/<version>/…`` and a PTB-XL root), so every
command runs on it as on the real data. See ``ATTRIBUTION.md`` beside this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class SamplePaths:
    root: Path
    release: Path  # ECG-QA release root (holds ptbxl/, mimic-iv-ecg/, grounding/)
    ptbxl_release: Path  # ECG-QA PTB-XL version folder
    mimic_release: Path  # ECG-QA MIMIC-IV-ECG version folder (CSVs only: no MIMIC waveforms are public)
    grounding: Path  # upperbound attribute classes, per version
    ptbxl_records: Path  # PTB-XL root: records500/, ptbxl_database.csv, scp_statements.csv


def paths() -> SamplePaths:
    """Where the bundled sample lives inside the installed package."""
    release = ROOT / "ecgqa"
    return SamplePaths(
        root=ROOT,
        release=release,
        ptbxl_release=release / "ptbxl",
        mimic_release=release / "mimic-iv-ecg",
        grounding=release / "grounding",
        ptbxl_records=ROOT / "ptbxl",
    )
