"""Uploads through the real app (httpx TestClient): WFDB pairs, .npy and .npz files at any rate, plots, every
refusal, and bounded uploads (issue 24, item 13).

Expected values are computed independently: ECG signals with ``wfdb`` from the bundled records,
valid classes and counts from the release JSON, answers from a separately loaded ``ecgqa.load(CKPT)``.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from scipy.signal import resample_poly

pytest.importorskip("fastapi")

from ecgqa.data.constants import LEADS
from tests.serve.serve_helpers import RECORD, _header, _npy, _record_files, assert_same_answer, wfdb_signal

# --------------------------------------------------------------------------- uploads


def test_upload_wfdb_pair_equals_direct(client, direct, sample_paths, space, release):
    s = next(x for x in release if x["question_type"] == "single-verify")
    files = [("files", (name, content)) for name, content in sorted(_record_files(sample_paths, RECORD).items())]
    r = client.post("/api/answer/upload", files=files, data={"question": s["question"]})
    assert r.status_code == 200, r.text
    sig, _ = wfdb_signal(sample_paths, RECORD)
    valid = [space.classes[i] for i in space.valid_classes(s)]
    assert_same_answer(r.json(), direct.answer(sig, s["question"], valid))
    assert r.json()["ecg_ids"] is None and r.json()["notes"] == []


def test_upload_npy_at_another_rate_is_resampled(client, direct, sample_paths):
    from ecgqa.data.records import resample

    sig, _ = wfdb_signal(sample_paths, RECORD)
    at250 = resample_poly(sig, 1, 2, axis=-1).astype(np.float32)
    q = "Does this ECG show baseline drift?"
    r = client.post(
        "/api/answer/upload", files={"files": ("ecg.npy", _npy(at250))}, data={"question": q, "rate": "250"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert any("250 Hz" in n for n in body["notes"])
    expected = direct.answer(resample(at250, 250, 500), q, body["valid_classes"])
    assert_same_answer(body, expected)


def test_upload_npz_with_rate_inside_and_two_ecgs(client, direct, sample_paths):
    a, fs = wfdb_signal(sample_paths, RECORD)
    b, _ = wfdb_signal(sample_paths, 5)
    files = []
    for name, sig in (("first.npz", a), ("second.npz", b)):
        buf = io.BytesIO()
        np.savez(buf, signal=sig, fs=np.array(fs))
        files.append(("files", (name, buf.getvalue())))
    q = "What numeric features of the second ECG are still abnormal as compared to the first ECG?"
    r = client.post("/api/answer/upload", files=files, data={"question": q})
    assert r.status_code == 200, r.text
    assert_same_answer(r.json(), direct.answer([a, b], q, r.json()["valid_classes"]))


def test_upload_plot(client, sample_paths):
    sig, fs = wfdb_signal(sample_paths, RECORD)
    r = client.post("/api/plot", files={"files": ("ecg.npy", _npy(sig))}, data={"rate": str(fs)})
    assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "case, words",
    [
        ("eleven_leads", "wrong lead count"),
        ("transposed", "transposed"),
        ("nan", "NaN"),
        ("no_rate", "rate"),
        ("rate_50", "unsupported sampling rate"),
        ("rate_text", "not a number"),
        ("too_short", "at least"),
        ("not_numpy", "not a readable"),
        ("text_file", "unsupported file type"),
        ("three_ecgs", "3 ECGs"),
        ("wfdb_missing_dat", "00002_hr.dat"),
        ("wfdb_wrong_leads", "wrong lead set"),
        ("wfdb_escaping_path", "r.hea names the signal file"),
        ("bad_name", "not allowed"),
        ("empty_question", "question"),
    ],
)
def test_upload_errors(client, sample_paths, case, words):
    sig, _ = wfdb_signal(sample_paths, RECORD)
    data = {"question": "Does this ECG show baseline drift?", "rate": "500"}
    files = {"files": ("ecg.npy", _npy(sig))}
    if case == "eleven_leads":
        files = {"files": ("ecg.npy", _npy(sig[:11]))}
    elif case == "transposed":
        files = {"files": ("ecg.npy", _npy(sig.T))}
    elif case == "nan":
        bad = sig.copy()
        bad[4, 100:200] = np.nan
        files = {"files": ("ecg.npy", _npy(bad))}
        words = "NaN or infinite values in leads ['aVL']"
    elif case == "no_rate":
        del data["rate"]
    elif case == "rate_50":
        data["rate"] = "50"
    elif case == "rate_text":
        data["rate"] = "fast"
    elif case == "too_short":
        files = {"files": ("ecg.npy", _npy(sig[:, :400]))}
    elif case == "not_numpy":
        files = {"files": ("ecg.npy", b"this is not an array")}
    elif case == "text_file":
        files = {"files": ("ecg.txt", b"1,2,3")}
    elif case == "three_ecgs":
        files = [("files", (f"e{i}.npy", _npy(sig))) for i in range(3)]
    elif case == "wfdb_missing_dat":
        files = {"files": ("00002_hr.hea", _record_files(sample_paths, RECORD)["00002_hr.hea"])}
    elif case == "wfdb_wrong_leads":
        dat = _record_files(sample_paths, RECORD)["00002_hr.dat"]
        leads = list(LEADS[:-1]) + ["X"]
        files = [("files", ("r.hea", _header("r", "00002_hr.dat", leads))), ("files", ("00002_hr.dat", dat))]
    elif case == "wfdb_escaping_path":
        files = [("files", ("r.hea", _header("r", "../../../etc/hostname"))), ("files", ("r.dat", b"\0" * 1000))]
    elif case == "bad_name":
        files = {"files": ("..", _npy(sig))}
    elif case == "empty_question":
        data["question"] = "   "
    r = client.post("/api/answer/upload", files=files, data=data)
    if case == "rate_text":  # form validation of a float field
        assert r.status_code == 422 and "rate" in r.json()["detail"]
        return
    assert r.status_code == 422, r.text
    assert words in r.json()["detail"]
    assert "/tmp" not in r.json()["detail"]  # never reveal the server's temporary folder


# --------------------------------------------------------------------------- bounded uploads (issue 24, item 13)


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _upload_peak(client, files, data) -> tuple[Any, int]:
    """The response to an upload and the peak of memory traced while serving it (numpy's buffers included)."""
    import tracemalloc

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        r = client.post("/api/answer/upload", files=files, data=data)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return r, peak


def test_long_uploads_are_refused_from_their_header_and_cut_before_resampling(client, direct):
    """33 kB of compressed zeros (7.75 h at 100 Hz) used to cost 16 s of CPU and +785 MB; the longest accepted
    upload (120 s at 2000 Hz) is cut to the model's 10 s (plus the filter's margin) before it is resampled."""
    from ecgqa.serve.uploads import MAX_RATE, MAX_SECONDS

    q = {"question": "Does this ECG show baseline drift?"}
    bomb = _npz(signal=np.zeros((12, 2_790_000), bool), fs=100)
    assert len(bomb) < 40_000
    r, peak = _upload_peak(client, {"files": ("bomb.npz", bomb)}, q)
    assert r.status_code == 413, r.text
    assert "bomb.npz" in r.json()["detail"] and f"limit is {MAX_SECONDS:g} s" in r.json()["detail"]
    assert peak < 20 * 2**20, f"refusing a 33 kB upload held {peak / 2**20:.0f} MB"

    longest = np.zeros((12, int(MAX_SECONDS * MAX_RATE)), np.float32)
    longest[:, ::7] = 0.5  # not all zeros: the model must see the first 10 s of this, resampled
    r, peak = _upload_peak(client, {"files": ("long.npz", _npz(signal=longest, fs=MAX_RATE))}, q)
    assert r.status_code == 200, r.text
    assert peak < 120 * 2**20, f"a {longest.nbytes / 2**20:.0f} MB upload held {peak / 2**20:.0f} MB"
    assert any(f"first 10 s of {MAX_SECONDS:.2f} s" in n for n in r.json()["notes"])
    from ecgqa.data.records import resample

    expected = direct.answer(resample(longest, MAX_RATE, 500)[:, :5000], q["question"], r.json()["valid_classes"])
    assert_same_answer(r.json(), expected)

    # one sample more is refused, for .npy and .npz, and a WFDB header announcing more is refused before wfdb
    over = np.zeros((12, int(MAX_SECONDS * 500) + 1), np.float32)
    for files in (
        {"files": ("over.npy", _npy(over))},
        {"files": ("over.npz", _npz(signal=over, fs=500))},
        [("files", ("r.hea", _header("r", "r.dat", n=over.shape[1]))), ("files", ("r.dat", b"\0" * 1000))],
    ):
        r = client.post("/api/answer/upload", files=files, data={**q, "rate": "500"})
        assert r.status_code == 413, r.text
        assert "too long" in r.json()["detail"] and "120 s" in r.json()["detail"]


@pytest.mark.parametrize("fs, rate", [(100, 500), (250, 500), (257, 500), (500, 100), (1000, 500), (360, 100)])
def test_resampling_only_the_needed_head_gives_the_same_input(fs, rate):
    from ecgqa.data.records import resample
    from ecgqa.serve.service import input_needed

    length = rate * 10
    x = np.random.default_rng(fs).standard_normal((12, fs * 40)).astype(np.float32)
    n = input_needed(fs, rate, length)
    assert n < fs * 11  # 10 s plus the filter's margin, not the whole 40 s
    np.testing.assert_array_equal(resample(x[:, :n], fs, rate)[:, :length], resample(x, fs, rate)[:, :length])
