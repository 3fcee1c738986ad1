"""ECG-QA's six numeric features and their normal / abnormal status, by the release's own method.

This is the one implementation of "is the <feature> of this ECG within its normal range?" in the toolkit:
``ecgqa generate`` (templates 39–42, 50–56, 64–70), ``prepare --task attributes`` (the
"above / within / below the normal range of …" classes, through :func:`ecgqa.data.attributes.measure_record`)
and ``llm-eval --input features`` (the interval lines of the prompt, through ``ecgqa/data/measure.py``) all
call :func:`numeric_features`.

The method (the ECG-QA authors' 2023 generator, ``Jwoo5/fairseq-signals`` commit ``1865c0c``, refined where
the released answers say so; agreement measured in ``docs/attributes.md``):

1. Lead II only, at 500 Hz (a record at another rate is resampled first, polyphase).
2. NeuroKit2 ``ecg_clean`` → ``ecg_peaks`` → ``ecg_delineate(method="dwt")``.
3. Fewer than :data:`MIN_R_PEAKS` (7) R peaks → no feature at all (every value ``None``).
4. Per-beat values (durations count both end samples, ``(b - a + 1) / fs``, as the authors did):
   RR = successive R peaks (gaps of 2 s or more dropped); P duration = P offset − P onset;
   PR = R onset − P onset; **QRS = S peak − Q peak**; QT = T offset − Q peak; QTc (Bazett) =
   QT / √RR with the RR that ends at the beat's R peak. A beat whose fiducial points are missing (NaN)
   gives no value for that feature.
5. The **median** over beats, in seconds; no beat with a value → ``None`` (not measurable).
6. Status against :data:`RANGES` (limits inclusive are "within").

Why median, Q→S and QTc ≤ 0.45 s although the 2023 code keeps per-ECG extremes, R-onset→R-offset and
0.555 s: those choices reproduce the per-ECG statuses that the release's comparison questions imply
(:mod:`ecgqa.generation.release_statuses`); the 2023 choices do not.
"""

from __future__ import annotations

import builtins
import inspect
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

#: The rate the method runs at (the release measured PTB-XL's 500 Hz records).
FS = 500
#: Lead the method measures (index 1 in ``ecgqa.data.constants.LEADS``).
LEAD = "II"
#: Fewer R peaks than this on lead II → no features (the authors' rule).
MIN_R_PEAKS = 7
#: RR gaps of this many seconds or more are dropped (a missed beat, not a rhythm).
MAX_RR_S = 2.0

#: ECG-QA numeric feature (its answer-class spelling) → (lower limit s or None, upper limit s), inclusive.
RANGES: dict[str, tuple[float | None, float]] = {
    "rr interval": (0.6, 1.0),
    "p duration": (None, 0.12),
    "pr interval": (0.12, 0.20),
    "qrs duration": (0.06, 0.11),
    "qt interval": (0.33, 0.43),
    "qt corrected": (0.33, 0.45),
}
FEATURES: tuple[str, ...] = tuple(RANGES)


def range_status(value: float | None, lo: float | None, hi: float) -> str | None:
    """ "below" / "within" / "above" ``[lo, hi]`` (limits inclusive are "within"); None for no value."""
    if value is None:
        return None
    if lo is not None and value < lo:
        return "below"
    return "above" if value > hi else "within"


@dataclass(frozen=True)
class NumericFeatures:
    """One ECG's six numeric features (seconds, ``None`` = not measurable) and the R peaks they came from."""

    values: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(FEATURES))
    n_r_peaks: int = 0

    def status(self, feature: str) -> str | None:
        """ "above" / "within" / "below" the normal range of ``feature``; None when not measurable."""
        lo, hi = RANGES[feature]
        return range_status(self.values.get(feature), lo, hi)

    def statuses(self) -> dict[str, str | None]:
        return {name: self.status(name) for name in FEATURES}

    def normal(self, feature: str) -> bool | None:
        """True (within), False (above or below), None (not measurable): what comparison templates ask."""
        s = self.status(feature)
        return None if s is None else s == "within"

    def range_attributes(self) -> list[str]:
        """The ECG-QA classes that hold, e.g. ``"above the normal range of qt interval"``."""
        return [f"{s} the normal range of {name}" for name, s in self.statuses().items() if s]

    def ms(self, feature: str) -> float | None:
        v = self.values.get(feature)
        return None if v is None else 1000.0 * v

    def as_dict(self) -> dict:
        return {"values": dict(self.values), "n_r_peaks": self.n_r_peaks, "statuses": self.statuses()}


def _median(values: list[float]) -> float | None:
    vals = [v for v in values if math.isfinite(v)]
    return float(np.median(vals)) if vals else None


def _per_beat(a, b) -> list[float]:
    """(b - a + 1) / FS for every beat where both points exist."""
    out = []
    for x, y in zip(a, b, strict=False):
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            continue
        out.append((float(y) - float(x) + 1.0) / FS)
    return out


def _delineator_module():
    """NeuroKit2's ``ecg_delineate`` module, checked for the helpers :func:`_release_dwt` relies on."""
    import importlib

    module = importlib.import_module("neurokit2.ecg.ecg_delineate")
    missing = [n for n in ("_dwt_ecg_delineator", "_dwt_delineate_qrs_bounds") if not hasattr(module, n)]
    if missing:
        import neurokit2

        raise RuntimeError(
            f"neurokit2 {neurokit2.__version__} has no {', '.join(missing)}: ecgqa's numeric features need the DWT "
            "delineator of NeuroKit2 0.2.10-0.3.x (pip install 'neurokit2>=0.2.10')"
        )
    return module


#: NeuroKit2 functions the lean Q/S search (:func:`_lean_segment`, :func:`_lean_peak_q`, :func:`_lean_peak_s`)
#: stands in for or relies on, with the SHA-256 of their source (first 16 hex digits) in the NeuroKit2 release
#: it was proven identical against (0.3.0; ``tests/data/test_features_lean.py``). Where the installed
#: NeuroKit2's source differs, its own functions are used (slower, never different).
LEAN_VERIFIED = {
    "neurokit2.ecg.ecg_delineate._dwt_ecg_delineator": "5e2732734709803d",
    "neurokit2.ecg.ecg_delineate._ecg_delineator_peak_Q": "dc0b6e27a5dd6855",
    "neurokit2.ecg.ecg_delineate._ecg_delineator_peak_S": "4dfff3cc64db8f91",
    "neurokit2.ecg.ecg_segment.ecg_segment": "2916b10ef390c0e9",
    "neurokit2.ecg.ecg_segment._ecg_segment_window": "45760c683cffd1a1",
    "neurokit2.epochs.epochs_create.epochs_create": "274df7e9c095e13d",
    "neurokit2.signal.signal_findpeaks.signal_findpeaks": "0718d7e6760acd08",
    "neurokit2.signal.signal_findpeaks._signal_findpeaks_keep": "ddd1654a22bb7f51",
    "neurokit2.signal.signal_findpeaks._signal_findpeaks_scipy": "e50103e60c271ea4",
}
_lean_ok: bool | None = None


def _source_digest(qualname: str) -> str:
    import hashlib
    import importlib

    module, name = qualname.rsplit(".", 1)
    try:
        source = inspect.getsource(getattr(importlib.import_module(module), name))
    except (ImportError, AttributeError, OSError, TypeError):
        return ""
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def lean_available() -> bool:
    """Whether the installed NeuroKit2's functions are those the lean Q/S search was proven identical to."""
    global _lean_ok
    if _lean_ok is None:
        _lean_ok = all(_source_digest(q) == digest for q, digest in LEAN_VERIFIED.items())
    return _lean_ok


class _Beat:
    """One heartbeat of :func:`_lean_segment`: what ``_dwt_ecg_delineator`` reads of ``ecg_segment``'s epoch
    (its time ``index``) plus the signal as an array instead of a DataFrame column."""

    __slots__ = ("index", "signal")

    def __init__(self, index, signal: np.ndarray):
        self.index = index
        self.signal = signal


def _lean_segment(ecg_cleaned, rpeaks=None, sampling_rate=1000, show=False, **kwargs):
    """``ecg_segment(ecg, rpeaks, sampling_rate)`` as ``epochs_create`` cuts it, without the DataFrames.

    Same window (NeuroKit2's own ``_ecg_segment_window``), same NaN buffer of ``int(max epoch duration ×
    rate)`` samples on both sides, same ``iloc[int(start):int(end)]`` cut and ``linspace`` time index, same
    NaN past the signal's end in the last beat (already NaN: it is buffer). Keys ``"1"`` … ``"n"``.
    """
    import pandas as pd
    from neurokit2.ecg.ecg_segment import _ecg_segment_window

    if rpeaks is None or show is not False or kwargs:
        raise TypeError("_lean_segment: only the call _dwt_ecg_delineator makes is supported")
    if len(ecg_cleaned) < sampling_rate * 4:
        raise ValueError("The data length is too small to be segmented.")
    start_s, end_s, _ = _ecg_segment_window(rpeaks=rpeaks, sampling_rate=sampling_rate, desired_length=len(ecg_cleaned))
    onsets = list(rpeaks)
    duration = (np.array([end_s] * len(onsets)) - np.array([start_s] * len(onsets))).tolist()
    buffer = int(max(d * sampling_rate for d in duration))
    x = np.asarray(ecg_cleaned, dtype=np.float64)
    pad = np.full(buffer, np.nan)
    data = np.concatenate([pad, x, pad])
    beats = {}
    for i, onset in enumerate(onsets):
        onset = onset + buffer
        start = onset + (start_s * sampling_rate)
        end = onset + (end_s * sampling_rate)
        signal = data[int(start) : int(end)].copy()
        time = np.linspace(start=start_s, stop=end_s, num=len(signal), endpoint=True)
        beats[str(i + 1)] = _Beat(pd.Index(time), signal)
    last = beats[str(len(onsets))]
    positions = np.arange(int(start), int(start) + len(last.signal)) - buffer
    last.signal[positions >= len(x)] = np.nan
    return beats


def _lean_findpeaks(signal: np.ndarray, height_min: float) -> np.ndarray:
    """``signal_findpeaks(signal, height_min=...)["Peaks"]``: scipy's peaks whose prominence (NeuroKit2's
    "Height") is not below ``height_min``, without the widths, distances and bases NeuroKit2 also computes."""
    import scipy.signal

    peaks, _ = scipy.signal.find_peaks(signal)
    heights, _, __ = scipy.signal.peak_prominences(signal, peaks)
    return peaks[~(heights < height_min)]


def _height_min(segment: np.ndarray) -> float:
    """``0.05 * (segment.max() - segment.min())`` as pandas computes it (NaN skipped; NaN when nothing is left)."""
    finite = segment[~np.isnan(segment)]
    if not len(finite):
        return math.nan
    return 0.05 * (finite.max() - finite.min())


def _lean_peak_q(rpeak, heartbeat: _Beat, R):
    """``_ecg_delineator_peak_Q``: the right-most prominent trough at or before time 0 (``heartbeat.loc[:0]``)."""
    segment = heartbeat.signal[: np.searchsorted(heartbeat.index.values, 0, side="right")]
    peaks = _lean_findpeaks(-1 * segment, _height_min(segment))
    if len(peaks) == 0:
        return np.nan, None
    Q = peaks[-1]
    from_R = R - Q
    return rpeak - from_R, Q


def _lean_peak_s(rpeak, heartbeat: _Beat):
    """``_ecg_delineator_peak_S``: the left-most prominent trough at or after time 0 (``heartbeat.loc[0:]``)."""
    segment = heartbeat.signal[np.searchsorted(heartbeat.index.values, 0, side="left") :]
    peaks = _lean_findpeaks(-segment, _height_min(segment))
    if len(peaks) == 0:
        return np.nan, None
    S = peaks[0]
    return rpeak + S, S


def _array_max(*args, **kwargs):
    """``builtins.max`` for NeuroKit2's delineator module, at C speed for the call its P / T peak search makes
    once per candidate peak: ``max(window)`` of a 1-D array of finite values, whose largest value ``ndarray.max``
    returns as the same ``numpy`` scalar (any other call goes to ``builtins.max`` unchanged)."""
    if len(args) == 1 and not kwargs:
        (x,) = args
        if isinstance(x, np.ndarray) and x.ndim == 1 and x.size and x.dtype.kind == "f" and np.isfinite(x).all():
            return x.max()
    return builtins.max(*args, **kwargs)


@contextmanager
def _release_dwt(module, *, lean: bool = True):
    """NeuroKit2's DWT delineator as it behaved when ECG-QA was generated (NeuroKit2 ≤ 0.2.3, early 2023).

    Two later changes move the points the release's answers were computed from; both are undone here,
    for the duration of one call (module attributes are swapped and restored: not thread-safe, and
    ``ecgqa`` measures in processes, not threads):

    - the QRS-onset search ends at the R peak again (later versions end it at the Q peak, which puts
      R onsets earlier and shortens PR: 222 / 277 release PR statuses agree with it, 277 / 277 without it);
    - P and T peak candidates are scored on the raw amplitude again (NeuroKit2 0.3 scores a window
      normalised to [0, 1]: P duration 286 → 291 / 291, QT 277 → 290 / 291).

    ``lean`` (and :func:`lean_available`): the per-beat Q / S search runs on arrays instead of NeuroKit2's
    DataFrames (``ecg_segment`` → :func:`_lean_segment`, ``_ecg_delineator_peak_Q/S`` →
    :func:`_lean_peak_q` / :func:`_lean_peak_s`): NeuroKit2's ``signal_findpeaks`` also computes peak widths,
    distances and onset/offset bases (pandas, per peak) that the Q / S search never reads, and the
    segmentation builds a DataFrame per beat; together about two thirds of the delineation's time. The
    P / T peak search calls the builtin ``max`` over a NumPy window once per candidate peak (a Python-level
    loop over the window): the module sees :func:`_array_max` instead, the same value from ``ndarray.max``.
    The points are identical (the same scipy calls on the same samples; ``tests/data/test_features_lean.py``,
    ``scripts/check_lean_delineation.py``).
    """
    names = ["_dwt_delineate_qrs_bounds", "_dwt_normalize_window"]
    lean = lean and lean_available()
    if lean:
        names += ["ecg_segment", "_ecg_delineator_peak_Q", "_ecg_delineator_peak_S"]
    saved = {name: getattr(module, name) for name in names if hasattr(module, name)}
    qrs_bounds = saved["_dwt_delineate_qrs_bounds"]
    if "qpeaks" in inspect.signature(qrs_bounds).parameters:

        def bounds_to_r_peak(rpeaks, dwtmatr, ppeaks, tpeaks, qpeaks, sampling_rate=250):
            return qrs_bounds(rpeaks, dwtmatr, ppeaks, tpeaks, rpeaks, sampling_rate=sampling_rate)

        module._dwt_delineate_qrs_bounds = bounds_to_r_peak
    if "_dwt_normalize_window" in saved:
        module._dwt_normalize_window = lambda ecg_local, weight=1.0: np.asarray(ecg_local, dtype=float)
    if lean:
        module.ecg_segment = _lean_segment
        module._ecg_delineator_peak_Q = _lean_peak_q
        module._ecg_delineator_peak_S = _lean_peak_s
        module.max = _array_max  # a module global shadows the builtin for the module's own functions
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)
        if lean:
            del module.max


def delineate(lead_ii: np.ndarray, *, lean: bool = True) -> tuple[np.ndarray, dict[str, list[float]]]:
    """R peaks and DWT wave points of a 500 Hz lead-II signal (the method's step 2).

    ``ecg_clean`` → ``ecg_peaks`` → the DWT delineator of ``ecg_delineate(method="dwt")`` under
    :func:`_release_dwt`, then ``ecg_delineate``'s own clean-up (a last point past the end → NaN; points
    at sample ≤ 0 dropped). No delineation below :data:`MIN_R_PEAKS` peaks. ``lean=False``: NeuroKit2's
    own (slower) Q / S search, for the identity tests.
    """
    clean, peaks = _clean_and_peaks(lead_ii)
    return peaks, _waves(clean, peaks, lean=lean)


def _clean_and_peaks(lead_ii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``ecg_clean`` → ``ecg_peaks`` at 500 Hz: the cleaned lead and its R peaks (sample indices)."""
    import neurokit2 as nk

    clean = nk.ecg_clean(lead_ii, sampling_rate=FS)
    _, info = nk.ecg_peaks(clean, sampling_rate=FS)
    return clean, np.asarray(info["ECG_R_Peaks"], dtype=int)


def _waves(clean: np.ndarray, peaks: np.ndarray, *, lean: bool = True) -> dict[str, list[float]]:
    if len(peaks) < MIN_R_PEAKS:
        return {}
    module = _delineator_module()
    # the lean segmentation reads the signal as float64, as ecg_clean returns it (and the DataFrame holds it)
    with _release_dwt(module, lean=lean and np.asarray(clean).dtype == np.float64):
        waves = module._dwt_ecg_delineator(clean, peaks, sampling_rate=FS)
    out = {}
    for key, values in waves.items():
        values = [float(v) for v in values]
        if values and values[-1] >= len(clean):
            values[-1] = math.nan
        out[key] = [v for v in values if v > 0 or math.isnan(v)]
    return out


def features_from_points(peaks: np.ndarray, waves: dict[str, list]) -> NumericFeatures:
    """Per-beat values → medians (steps 3–5), from :func:`delineate`'s output."""
    if len(peaks) < MIN_R_PEAKS or not waves:
        return NumericFeatures(n_r_peaks=len(peaks))
    rr = [d / FS for d in np.diff(peaks) if d / FS < MAX_RR_S]
    q, t_off = waves["ECG_Q_Peaks"], waves["ECG_T_Offsets"]
    qt = [
        (t - qq + 1.0) / FS if math.isfinite(qq) and math.isfinite(t) else math.nan
        for qq, t in zip(q, t_off, strict=False)
    ]
    qtc = [qt[j] / math.sqrt((peaks[j] - peaks[j - 1]) / FS) for j in range(1, min(len(qt), len(peaks)))]
    values = {
        "rr interval": _median(rr),
        "p duration": _median(_per_beat(waves["ECG_P_Onsets"], waves["ECG_P_Offsets"])),
        "pr interval": _median(_per_beat(waves["ECG_P_Onsets"], waves["ECG_R_Onsets"])),
        "qrs duration": _median(_per_beat(q, waves["ECG_S_Peaks"])),
        "qt interval": _median(qt),
        "qt corrected": _median(qtc),
    }
    return NumericFeatures(values=values, n_r_peaks=len(peaks))


def numeric_features(signal, fs: float) -> NumericFeatures:
    """The six features of an ECG: ``signal`` is ``(12, T)`` in lead order I, II, III, … (or lead II alone, 1-D).

    Never raises for a bad signal (NaN, flat, too short, a delineation failure): the values are None.
    A wrong shape or a non-positive ``fs`` is a programming error and raises ``ValueError``.
    """
    return numeric_features_and_peaks(signal, fs)[0]


def numeric_features_and_peaks(signal, fs: float) -> tuple[NumericFeatures, np.ndarray | None]:
    """:func:`numeric_features` and the R peaks it found on lead II cleaned at 500 Hz (``None`` when it found
    none: too short, flat, not finite, or the peak detector failed). ``ecgqa.data.measure`` reuses them on a
    500 Hz record instead of detecting the same peaks a second time."""
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim == 2:
        if x.shape[0] != 12:
            raise ValueError(f"expected a (12, T) signal or lead II alone, got shape {x.shape}")
        x = x[1]
    elif x.ndim != 1:
        raise ValueError(f"expected a (12, T) signal or lead II alone, got shape {x.shape}")
    if not fs > 0:
        raise ValueError(f"fs must be positive, not {fs}")
    if round(fs) != FS:
        from ecgqa.data.records import resample

        x = resample(x, round(fs), FS).astype(np.float64)
    if len(x) < 2 * FS or not np.all(np.isfinite(x)) or np.ptp(x) <= 0:
        return NumericFeatures(), None
    _delineator_module()  # a NeuroKit2 without the delineator is an installation error, not "not measurable"
    peaks = None
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            clean, peaks = _clean_and_peaks(x)
            return features_from_points(peaks, _waves(clean, peaks)), peaks
    except Exception:  # noqa: BLE001 - NeuroKit2 fails on pathological signals: "not measurable"
        return NumericFeatures(), peaks
