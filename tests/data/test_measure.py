"""ecgqa.data.measure against independent ground truth: hand-built ECGs with known intervals and axes, NeuroKit2's
simulator at known rates, bundled PTB-XL records measured by hand (scipy peak picking) and by their
cardiologist-validated metadata (heart_axis), and bad signals that must give None, never an exception.
Its intervals are ECG-QA's method (``ecgqa.data.features``, tested in ``tests/data/test_features.py``)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import wfdb

from ecgqa.data.features import RANGES, numeric_features
from ecgqa.data.measure import LEADS, Measurements, measure_ecg

FS = 500
#: frontal angle of each limb lead (hexaxial reference system), degrees
LIMB_ANGLE = {"I": 0, "II": 60, "III": 120, "aVR": -150, "aVL": -30, "aVF": 90}


def _piecewise(t_ms: np.ndarray, points: list[tuple[float, float]]) -> np.ndarray:
    """Piecewise-linear wave through (time ms, value) points, zero outside."""
    ts, vs = zip(*points, strict=False)
    y = np.interp(t_ms, ts, vs)
    y[(t_ms < ts[0]) | (t_ms > ts[-1])] = 0.0
    return y


def hand_built(
    rr=800.0, pr=160.0, p_dur=100.0, qrs=90.0, qt=400.0, p_axis=45.0, qrs_axis=60.0, t_axis=40.0, seconds=10.0
) -> np.ndarray:
    """A 12-lead ECG whose P onset → QRS onset is ``pr``, QRS lasts ``qrs``, QRS onset → T end is ``qt`` (ms),
    and whose P/QRS/T vectors point at the given frontal angles (limb lead = vector projected on its axis)."""
    n = int(seconds * FS)
    t = np.arange(n) * 1000.0 / FS
    p_shape, qrs_shape, t_shape = np.zeros(n), np.zeros(n), np.zeros(n)
    for onset in np.arange(300.0, t[-1] - rr, rr):  # QRS onsets
        p0 = onset - pr
        p_shape += _piecewise(t, [(p0, 0), (p0 + 15, 1), (p0 + p_dur - 15, 1), (p0 + p_dur, 0)])
        qrs_shape += _piecewise(
            t,
            [
                (onset, 0),
                (onset + 0.15 * qrs, -0.1),
                (onset + 0.45 * qrs, 1.0),
                (onset + 0.75 * qrs, -0.3),
                (onset + qrs, 0),
            ],
        )
        t_len = 180.0
        t0 = onset + qt - t_len
        tt = np.clip((t - t0) / t_len, 0, 1)
        t_shape += np.where((t >= t0) & (t <= t0 + t_len), np.sin(np.pi * tt), 0.0)
    sig = np.zeros((12, n))
    for i, lead in enumerate(LEADS):
        if lead in LIMB_ANGLE:
            a = LIMB_ANGLE[lead]
            proj = [math.cos(math.radians(ang - a)) for ang in (p_axis, qrs_axis, t_axis)]
        else:
            proj = [0.5, 0.6 + 0.1 * i, 0.8]
        sig[i] = 0.15 * proj[0] * p_shape + 1.2 * proj[1] * qrs_shape + 0.3 * proj[2] * t_shape
    return sig


def _angle_diff(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


@pytest.mark.parametrize("rr,pr,qrs,qt", [(800, 160, 90, 400), (1000, 200, 120, 440), (600, 130, 80, 340)])
def test_hand_built_intervals_and_axes(rr, pr, qrs, qt):
    x = hand_built(rr=rr, pr=pr, qrs=qrs, qt=qt)
    m = measure_ecg(x, FS)
    assert m.heart_rate == pytest.approx(60000 / rr, abs=1.0)
    assert m.rr == pytest.approx(rr, abs=4) and m.rr_sd < 5
    assert m.qt == pytest.approx(qt, abs=20)  # T offset - Q peak; the Q dip sits 15 % into the QRS
    assert m.qtc == pytest.approx(m.qt / math.sqrt(m.rr / 1000), rel=0.02)  # Bazett, with the measured RR
    # the intervals are ECG-QA's method (Q peak → S peak for the QRS, etc.), exactly
    f = numeric_features(x, FS)
    assert (m.pr, m.qrs, m.p_duration) == (f.ms("pr interval"), f.ms("qrs duration"), f.ms("p duration"))
    assert m.ranges() == f.statuses()
    assert _angle_diff(m.qrs_axis, 60) < 10 and _angle_diff(m.p_axis, 45) < 10 and _angle_diff(m.t_axis, 40) < 10
    # R amplitude in lead II = 1.2 mV * cos(0) (vector along +60°), S depth = 0.3 * 1.2 * cos(0)
    assert m.r_amp["II"] == pytest.approx(1.2, abs=0.08) and m.s_amp["II"] == pytest.approx(0.36, abs=0.08)
    assert m.st_j60["II"] == pytest.approx(0.0, abs=0.05)  # J+60 ms falls before the T wave: isoelectric


def test_axis_follows_the_vector():
    for axis in (-60, 0, 100, 170):
        m = measure_ecg(hand_built(qrs_axis=axis), FS)
        assert _angle_diff(m.qrs_axis, axis) < 10, (axis, m.qrs_axis)


@pytest.mark.parametrize("hr", [55, 75, 110])
def test_neurokit_simulated_rate(hr):
    """NeuroKit2's ECGSYN model at a set rate; its wave widths are not parameters, so intervals get a
    physiological window only (ECGSYN's Gaussian QRS reads ~110–135 ms with a 10 % velocity threshold)."""
    import neurokit2 as nk

    lead = nk.ecg_simulate(duration=10, sampling_rate=FS, heart_rate=hr, random_state=2)
    m = measure_ecg(np.tile(lead, (12, 1)), FS)
    assert m.heart_rate == pytest.approx(hr, abs=2.5)
    for value, (lo, hi) in ((m.qrs, (60, 150)), (m.qt, (250, 500))):
        assert value is not None and lo <= value <= hi


def _record(ecg_id: int, sample_paths) -> np.ndarray:
    sig, fields = wfdb.rdsamp(str(sample_paths.ptbxl_records / "records500" / "00000" / f"{ecg_id:05d}_hr"))
    order = [next(j for j, n in enumerate(fields["sig_name"]) if n.upper() == lead.upper()) for lead in LEADS]
    return sig[:, order].T


def _hand_heart_rate(lead: np.ndarray) -> float:
    """Heart rate by hand: baseline removed with a 0.6 s median filter, R peaks = scipy find_peaks on |signal|."""
    from scipy.signal import find_peaks, medfilt

    y = lead - medfilt(lead, int(0.6 * FS) | 1)
    y = np.abs(y)
    peaks, _ = find_peaks(y, height=0.5 * np.percentile(y, 99.5), distance=int(0.3 * FS))
    return 60.0 * FS / float(np.mean(np.diff(peaks)))


@pytest.mark.slow
def test_real_records_heart_rate_by_hand(sample_paths):
    db = pd.read_csv(sample_paths.ptbxl_records / "ptbxl_database.csv", index_col="ecg_id")
    ids = [i for i in db.index[:60]]
    close = 0
    for ecg_id in ids:
        x = _record(ecg_id, sample_paths)
        m = measure_ecg(x, FS)
        hand = _hand_heart_rate(x[1])
        if m.heart_rate is not None and abs(m.heart_rate - hand) <= 3:
            close += 1
    assert close >= 0.9 * len(ids), f"{close}/{len(ids)} within 3 bpm of the hand count"


def test_real_records_axis_agrees_with_metadata(sample_paths):
    """PTB-XL's heart_axis (cardiologist-validated): LAD/ALAD → QRS axis < 0°, MID → −30°…90° (±15° slack)."""
    db = pd.read_csv(sample_paths.ptbxl_records / "ptbxl_database.csv", index_col="ecg_id")
    checked = agree = 0
    for ecg_id, axis in db["heart_axis"].dropna().items():
        if axis not in ("LAD", "ALAD", "MID"):
            continue
        m = measure_ecg(_record(ecg_id, sample_paths), FS)
        checked += 1
        if m.qrs_axis is None:
            continue
        if axis == "MID":
            agree += -45 <= m.qrs_axis <= 105
        else:
            agree += m.qrs_axis < 0
    assert checked >= 30 and agree >= 0.85 * checked, f"{agree}/{checked}"


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.random.default_rng(0).normal(0, 1, (12, 5000)),  # noise only
        lambda: np.where(np.arange(5000) % 7 == 0, np.inf, 0.0) * np.ones((12, 1)),  # inf spikes
        lambda: np.tile(np.sign(np.sin(np.arange(5000) / 3.0)), (12, 1)),  # square wave, no ECG at all
    ],
)
def test_garbage_never_raises(make):
    import json

    m = measure_ecg(make(), FS)
    json.dumps(m.as_dict())  # every value is a float or None
    assert isinstance(m.as_text(), str)


def test_flat_and_short_are_all_none():
    for x in (np.zeros((12, 5000)), np.full((12, 5000), np.nan), hand_built()[:, :1000]):
        d = measure_ecg(x, FS).as_dict()
        assert all(v is None for k, v in d.items() if k not in ("r_amp", "s_amp", "st_j60", "n_beats", "status"))
        assert all(v is None for v in d["r_amp"].values()) and set(d["status"].values()) == {None}


def test_one_dead_lead_only_loses_that_lead():
    x = hand_built()
    x[5] = np.nan  # aVF gone: the frontal axes need it, the intervals do not
    m = measure_ecg(x, FS)
    assert m.qrs is not None and m.qrs_axis is None and m.r_amp["aVF"] is None
    assert m.r_amp["II"] is not None


def test_wrong_shape_is_a_programming_error():
    with pytest.raises(ValueError, match="12, T"):
        measure_ecg(np.zeros((5000, 12)), FS)


def test_ranges_and_text():
    status = {
        "rr interval": "above",
        "p duration": "within",
        "pr interval": "above",
        "qrs duration": "within",
        "qt interval": None,
        "qt corrected": "above",
    }
    m = Measurements(
        rr=1200.0, pr=210.0, qrs=100.0, qt=None, qtc=460.0, p_duration=90.0, heart_rate=50.0, status=status
    )
    assert m.ranges() == status  # every ECG-QA numeric feature, read from the status given
    assert "above the normal range of qt corrected" in m.range_attributes()
    assert set(RANGES) == {
        "rr interval",
        "p duration",
        "pr interval",
        "qrs duration",
        "qt interval",
        "qt corrected",
    }
    text = m.as_text()
    assert "Heart rate: 50 bpm" in text and "QT interval: not measurable" in text and "QTc (Bazett): 460 ms" in text
