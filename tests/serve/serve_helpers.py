"""Helpers of the demo API tests (tests/serve/test_serve_*.py): a bundled record read with ``wfdb`` directly, the
stored signal, the answer a separate ``ecgqa.load`` gives, and upload bodies (.npy, WFDB header and files)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import wfdb

from ecgqa.data.constants import LEADS

RECORD = 2  # ECG id of a bundled record (records500/00000/00002_hr)


def wfdb_signal(sample_paths, ecg_id: int) -> tuple[np.ndarray, int]:
    """(12, T) float32 in LEADS order, read with wfdb directly (lead order by name)."""
    path = sample_paths.ptbxl_records / "records500" / f"{ecg_id // 1000 * 1000:05d}" / f"{ecg_id:05d}_hr"
    sig, fields = wfdb.rdsamp(str(path))
    names = [n.upper() for n in fields["sig_name"]]  # PTB-XL headers spell AVR, AVL, AVF
    order = [names.index(lead.upper()) for lead in LEADS]
    return sig.T[order].astype(np.float32), int(fields["fs"])


def store_signal(data, ecg_id: int) -> np.ndarray:
    return np.asarray(data.signals[data.row_of(ecg_id)], dtype=np.float32)


def assert_same_answer(body: dict, expected) -> None:
    assert body["answer"] == expected.answer
    assert body["valid_classes"] == expected.valid_classes
    got = {s["name"]: s["score"] for s in body["scores"]}
    assert got.keys() == expected.scores.keys()
    for name, score in expected.scores.items():
        assert got[name] == pytest.approx(score, abs=1e-5)
    assert [s["name"] for s in body["scores"] if s["selected"]] == [
        n for n, _ in sorted(expected.scores.items(), key=lambda kv: -kv[1]) if n in expected.answer
    ]


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _record_files(sample_paths, ecg_id: int) -> dict[str, bytes]:
    folder = sample_paths.ptbxl_records / "records500" / f"{ecg_id // 1000 * 1000:05d}"
    return {p.name: p.read_bytes() for p in folder.glob(f"{ecg_id:05d}_hr.*")}


def _header(name: str, signal_file: str, leads=LEADS, fs: int = 500, n: int = 5000) -> bytes:
    lines = [f"{name} {len(leads)} {fs} {n}"]
    lines += [f"{signal_file} 16 1000/mV 16 0 0 0 0 {lead}" for lead in leads]
    return ("\n".join(lines) + "\n").encode()
