"""MIMIC-IV-ECG: no waveforms are public, so the test builds a small root in the MIMIC layout."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import wfdb

from ecgqa.data.constants import LEADS
from ecgqa.data.records import read_record
from mapping.mapper import map_release

MIMIC_ORDER = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]
STUDIES = {40689238: 10000032, 41256771: 10000117, 45090959: 10000560}


def _lead_wave(lead: str, n: int = 5000) -> np.ndarray:
    """A distinct waveform per lead: a sine whose frequency and offset encode the lead."""
    k = LEADS.index(lead)
    t = np.arange(n) / 500
    return 0.1 * (k + 1) + 0.5 * np.sin(2 * np.pi * (k + 1) * t)


def build_mimic_root(root) -> dict[int, str]:
    rows = []
    for study, subject in STUDIES.items():
        rel = f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        data = np.stack([_lead_wave(lead) for lead in MIMIC_ORDER], axis=1)
        wfdb.wrsamp(
            str(study),
            fs=500,
            units=["mV"] * 12,
            sig_name=MIMIC_ORDER,
            p_signal=data,
            fmt=["16"] * 12,
            adc_gain=[200.0] * 12,
            baseline=[0] * 12,
            write_dir=str((root / rel).parent),
        )
        rows.append(
            {
                "subject_id": subject,
                "study_id": study,
                "file_name": study,
                "ecg_time": "2180-07-23 08:44:00",
                "path": rel,
            }
        )
    pd.DataFrame(rows).to_csv(root / "record_list.csv", index=False)
    return {r["study_id"]: r["path"] for r in rows}


def build_mimic_release(release, sample_paths) -> list[dict]:
    release.mkdir(parents=True)
    for f in ("answers.csv", "answers_for_each_template.csv"):
        shutil.copy2(sample_paths.mimic_release / f, release / f)
    studies = list(STUDIES)
    samples = [
        {
            "template_id": 1,
            "question_id": 0,
            "sample_id": 0,
            "question_type": "single-verify",
            "attribute_type": "scp_code",
            "question": "Does this ECG show sinus rhythm?",
            "answer": ["yes"],
            "ecg_id": [studies[0]],
            "attribute": ["sinus rhythm"],
        },
        {
            "template_id": 5,
            "question_id": 1,
            "sample_id": 1,
            "question_type": "comparison_consecutive-verify",
            "attribute_type": "scp_code",
            "question": "Is there any change?",
            "answer": ["no"],
            "ecg_id": [studies[1], studies[2]],
            "attribute": None,
        },
        {
            "template_id": 1,
            "question_id": 0,
            "sample_id": 2,
            "question_type": "single-verify",
            "attribute_type": "scp_code",
            "question": "Does this ECG show sinus rhythm?",
            "answer": ["no"],
            "ecg_id": [49999999],
            "attribute": ["sinus rhythm"],
        },
    ]
    for variant in ("template", "paraphrased"):
        (release / variant / "train").mkdir(parents=True)
        (release / variant / "train" / "00000.json").write_text(json.dumps(samples))
    return samples


def test_mimic_mapping_and_lead_order(tmp_path, sample_paths):
    root = tmp_path / "mimic"
    paths = build_mimic_root(root)
    samples = build_mimic_release(tmp_path / "ecgqa" / "mimic-iv-ecg", sample_paths)
    out = tmp_path / "mapped"
    report = map_release("mimic-iv-ecg", tmp_path / "ecgqa", root, out, skip_missing=True, progress=False)
    assert report["totals"] == {"samples": 6, "mapped": 4, "skipped": 2, "n_missing_ids": 1, "missing_ids": [49999999]}
    mapped = json.loads((out / "template/train/00000.json").read_text())
    assert [s["sample_id"] for s in mapped] == [0, 1]
    assert mapped[1]["ecg_path"] == [str((root / paths[i]).resolve()) for i in samples[1]["ecg_id"]]

    raw, fields = wfdb.rdsamp(mapped[0]["ecg_path"][0])
    assert fields["sig_name"][4:6] == ["aVF", "aVL"]  # the file really stores MIMIC's order
    rec = read_record(mapped[0]["ecg_path"][0])
    for i, lead in enumerate(LEADS):
        np.testing.assert_allclose(rec.signal[i], raw[:, fields["sig_name"].index(lead)], atol=1e-6)
        np.testing.assert_allclose(rec.signal[i], _lead_wave(lead), atol=0.01)  # the lead's own waveform
    assert not np.allclose(rec.signal[4], rec.signal[5])


def test_mimic_missing_record_list(tmp_path, sample_paths):
    build_mimic_release(tmp_path / "ecgqa" / "mimic-iv-ecg", sample_paths)
    import pytest

    with pytest.raises(FileNotFoundError, match="record_list.csv not found"):
        map_release("mimic-iv-ecg", tmp_path / "ecgqa", tmp_path, tmp_path / "out", progress=False)
