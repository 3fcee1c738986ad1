"""ECG measurements: rate, intervals, axes and amplitudes of a 12-lead ECG (what ``llm-eval --input features`` shows).

One function, :func:`measure_ecg`, turns a ``(12, T)`` signal in mV (lead order I, II, III, aVR, aVL, aVF,
V1–V6) into a :class:`Measurements`. Every value is ``None`` when it cannot be measured (NaN or flat leads,
a record shorter than :data:`MIN_SECONDS`, too few beats, no P wave, a value outside its physiological
bounds): the caller sees "not measurable", never an exception. Used by the ``attributes`` task
(``ecgqa/data/attributes.py``) and the ``features`` input of ``llm_eval``.

**Intervals and their normal-range status come from** :mod:`ecgqa.data.features` (ECG-QA's own method:
NeuroKit2 DWT delineation of lead II, median over beats), the one implementation of the benchmark's
numeric features; this module adds what that method does not give (axes, amplitudes, ST level, RR
variability) from a median beat over all twelve leads, whose fiducial points (steps 3–4 below) only place
the amplitude and axis windows.

How (and why this way):

1. **Filtering and R peaks: NeuroKit2** (``nk.ecg_clean`` + ``nk.ecg_peaks`` on the rhythm lead;
   a 0.5–100 Hz zero-phase Butterworth (scipy) on every lead for the measurements). NeuroKit2 is maintained,
   pip-installable, pure Python, MIT-licensed, and its QRS detector is validated on public databases
   (Makowski et al., Behav Res 2021). R peaks come from the rhythm lead: the first usable lead of II, I,
   V5, V2, aVF, V1 … (a lead is usable when it is finite and not flat).
2. **Median beat.** Each lead is cut around every R peak and the median over beats is taken: one clean
   12-lead beat, the way clinical measurement programs (GE 12SL, Philips DXL) work; fiducial points are
   found on it across all leads at once:
3. **Fiducial points on the median beat.** QRS onset/offset: where the spatial velocity (sum over leads of
   ``|d/dt|``, 10 ms smoothed) stays below 10 % of its QRS peak for 10 ms, searching out from the R peak.
   T end: tangent method on the vector magnitude (root sum of squares over leads, baseline removed):
   the steepest descent after the T peak, extended to the baseline. P wave: the vector-magnitude peak in
   the 60–300 ms before QRS onset (not before the previous beat's T end); onset/offset where it falls to
   20 % of the way from the lowest level on that side up to the peak; no P wave (e.g. atrial fibrillation)
   when the peak is not 3× the residual noise.
4. **Windows.** QRS (onset → offset) for R/S amplitudes and the QRS axis; QRS offset → T end for the T axis;
   P onset → offset for the P axis.
5. **Amplitudes and axes** relative to the PR-segment baseline of each lead. R amplitude: the largest
   positive QRS deflection; S amplitude: depth of the most negative deflection after the R peak (positive
   mV). ST level at J+60 ms. Frontal axes from the net areas of the wave in leads I and aVF:
   ``atan2(area_aVF, area_I)`` in degrees (−180…180], the usual "hexaxial" estimate; leads I and aVF are
   perpendicular in the frontal plane, so this is the angle of the mean vector.

Normal-range attributes ("above/within/below the normal range of <interval>", ECG-QA's numeric_feature
classes) are :class:`ecgqa.data.features.NumericFeatures` statuses, copied into :attr:`Measurements.status`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from ecgqa.data.constants import LEADS
from ecgqa.data.features import FEATURES, FS, numeric_features_and_peaks

#: Shortest record measured at all: fewer seconds than this give too few beats for a median beat.
MIN_SECONDS = 4.0
#: Rhythm-lead preference for R-peak detection (indices into LEADS).
RHYTHM_LEADS = (1, 0, 10, 7, 5, 6, 2, 8, 9, 11, 4, 3)
#: Plausible bounds (ms) of the median-beat windows; outside them the window is not used.
BOUNDS = {"p_duration": (40, 200), "qrs": (40, 220), "qt": (200, 700)}


@dataclass
class Measurements:
    """One ECG's measurements; ``None`` = not measurable. Times in ms, amplitudes in mV, axes in degrees."""

    heart_rate: float | None = None  # beats per minute, from the median RR
    rr: float | None = None  # median RR (ECG-QA's "rr interval")
    rr_sd: float | None = None
    p_duration: float | None = None
    pr: float | None = None
    qrs: float | None = None  # S peak - Q peak, ECG-QA's "qrs duration"
    qt: float | None = None  # T offset - Q peak
    qtc: float | None = None  # Bazett
    p_axis: float | None = None
    qrs_axis: float | None = None
    t_axis: float | None = None
    r_amp: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(LEADS))
    s_amp: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(LEADS))
    st_j60: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(LEADS))
    n_beats: int = 0
    #: ECG-QA numeric feature → "above" / "within" / "below" / None, from :mod:`ecgqa.data.features`
    status: dict[str, str | None] = field(default_factory=lambda: dict.fromkeys(FEATURES))

    def as_dict(self) -> dict:
        """JSON-ready dict (floats rounded: 1 ms / 0.01 mV / 1 degree resolution is what the method gives)."""

        def r(v, nd):
            return None if v is None else round(float(v), nd)

        out = {
            k: r(getattr(self, k), 1)
            for k in (
                "heart_rate",
                "rr",
                "rr_sd",
                "p_duration",
                "pr",
                "qrs",
                "qt",
                "qtc",
                "p_axis",
                "qrs_axis",
                "t_axis",
            )
        }
        for k in ("r_amp", "s_amp", "st_j60"):
            out[k] = {lead: r(v, 3) for lead, v in getattr(self, k).items()}
        out["n_beats"] = self.n_beats
        out["status"] = dict(self.status)
        return out

    def ranges(self) -> dict[str, str | None]:
        """ECG-QA numeric feature → "above" / "within" / "below" (``None`` when not measurable)."""
        return {name: self.status.get(name) for name in FEATURES}

    def range_attributes(self) -> list[str]:
        """The ECG-QA class names that hold, e.g. ``"above the normal range of qt interval"``."""
        return [f"{label} the normal range of {name}" for name, label in self.ranges().items() if label]

    def as_text(self) -> str:
        """The lines an LLM prompt shows: one measurement a line, with units; "not measurable" for None."""

        def f(v, unit, nd=0):
            return "not measurable" if v is None else f"{v:.{nd}f} {unit}"

        lines = [
            f"Heart rate: {f(self.heart_rate, 'bpm')}",
            f"RR interval: median {f(self.rr, 'ms')}, SD {f(self.rr_sd, 'ms')}",
            f"P wave duration: {f(self.p_duration, 'ms')}",
            f"PR interval: {f(self.pr, 'ms')}",
            f"QRS duration: {f(self.qrs, 'ms')}",
            f"QT interval: {f(self.qt, 'ms')}",
            f"QTc (Bazett): {f(self.qtc, 'ms')}",
            f"Frontal axes: P {f(self.p_axis, 'deg')}, QRS {f(self.qrs_axis, 'deg')}, T {f(self.t_axis, 'deg')}",
        ]
        for key, title in (
            ("r_amp", "R amplitude (mV)"),
            ("s_amp", "S amplitude (mV)"),
            ("st_j60", "ST level at J+60 ms (mV)"),
        ):
            vals = getattr(self, key)
            lines.append(
                f"{title}: "
                + ", ".join(f"{lead} {'n/a' if v is None else format(v, '.2f')}" for lead, v in vals.items())
            )
        return "\n".join(lines)


def measure_ecg(signal, fs: float, *, share_r_peaks: bool = True) -> Measurements:
    """Measure a ``(12, T)`` ECG in mV sampled at ``fs`` Hz. Never raises for bad signals: values become None.

    A wrong shape or a non-positive ``fs`` is a programming error and raises ``ValueError``.
    ``share_r_peaks=False``: the median-beat measurements detect their own R peaks instead of reusing the
    features' lead-II ones (the same result; the reference path the identity tests and benchmark compare with).
    """
    x = np.asarray(signal, dtype=float)
    if x.ndim != 2 or x.shape[0] != 12:
        raise ValueError(f"expected a (12, T) signal in lead order {', '.join(LEADS)}, got shape {x.shape}")
    if not fs > 0:
        raise ValueError(f"fs must be positive, not {fs}")
    out = Measurements()
    # intervals and their status: ECG-QA's method, the one the benchmark's answers come from
    nf, ii_peaks = numeric_features_and_peaks(x, fs)
    if x.shape[1] >= MIN_SECONDS * fs:
        # a 500 Hz record: the rhythm-lead R peaks below are those the features method just found on lead II
        # (the same nk.ecg_clean + nk.ecg_peaks call on the same samples), so they are not detected twice
        shared = ii_peaks if share_r_peaks and round(fs) == FS else None
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                _measure(x, float(fs), out, lead_ii_peaks=shared)
        except Exception:  # noqa: BLE001, S110 - a delineation failure on a pathological signal = "not measurable"
            pass
    out.rr, out.p_duration, out.pr = nf.ms("rr interval"), nf.ms("p duration"), nf.ms("pr interval")
    out.qrs, out.qt, out.qtc = nf.ms("qrs duration"), nf.ms("qt interval"), nf.ms("qt corrected")
    out.heart_rate = None if out.rr is None else 60000.0 / out.rr
    out.status = nf.statuses()
    return out


def _usable(lead: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(lead)) and np.ptp(lead) > 0.05)


def _ms(samples: float, fs: float) -> float:
    return 1000.0 * samples / fs


def _bounded(name: str, value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    lo, hi = BOUNDS[name]
    return value if lo <= value <= hi else None


def _measure(x: np.ndarray, fs: float, out: Measurements, *, lead_ii_peaks: np.ndarray | None = None) -> None:
    import neurokit2 as nk

    usable = np.array([_usable(x[i]) for i in range(12)])
    rhythm = next((i for i in RHYTHM_LEADS if usable[i]), None)
    if rhythm is None:
        return
    from scipy.signal import butter, sosfiltfilt

    rate = round(fs)
    # amplitudes need a light filter (0.5–100 Hz Butterworth, zero phase, designed once for all leads);
    # nk.ecg_clean's powerline smoothing would shave ~30 % off a sharp R wave, so it feeds only the R-peak detector
    sos = butter(2, [0.5, min(100.0, 0.45 * fs)], btype="bandpass", fs=fs, output="sos")
    clean = np.zeros_like(x)
    clean[usable] = sosfiltfilt(sos, x[usable], axis=-1)
    if rhythm == 1 and lead_ii_peaks is not None:
        peaks = np.array(lead_ii_peaks, dtype=int)
    else:
        _, info = nk.ecg_peaks(nk.ecg_clean(x[rhythm], sampling_rate=rate), sampling_rate=rate)
        peaks = np.asarray(info["ECG_R_Peaks"], dtype=int)
    if len(peaks) < 3:
        return
    rr = np.diff(peaks) * 1000.0 / fs
    if not (200 <= np.median(rr) <= 3000):
        return
    out.rr_sd = float(rr.std(ddof=1)) if len(rr) > 1 else None

    # median beat: 400 ms before to 700 ms after each R peak (shorter when the rhythm is fast)
    rr_s = float(np.median(np.diff(peaks)))
    pre = int(min(0.4 * fs, 0.65 * rr_s))
    post = int(min(0.7 * fs, 0.95 * rr_s))
    beats = [p for p in peaks if p - pre >= 0 and p + post <= x.shape[1]]
    if len(beats) < 2:
        return
    out.n_beats = len(beats)
    # refine each beat on the rhythm lead's absolute maximum within ±30 ms, so the median beat is sharp
    w = int(0.03 * fs)
    seg = np.abs(clean[rhythm])
    beats = [b - w + int(np.argmax(seg[b - w : b + w + 1])) if b - w >= 0 and b + w < len(seg) else b for b in beats]
    beats = [b for b in beats if b - pre >= 0 and b + post <= x.shape[1]]
    tpl = np.stack([np.median([clean[i, b - pre : b + post] for b in beats], axis=0) for i in range(12)])
    ok = np.array(usable)
    _delineate(tpl, ok, pre, fs, rr_s, out)


def _first_run_below(v: np.ndarray, start: int, stop: int, step: int, thr: float, run: int) -> int | None:
    """First index from ``start`` toward ``stop`` (exclusive) where ``v`` stays below ``thr`` for ``run`` samples."""
    count = 0
    for i in range(start, stop, step):
        if 0 <= i < len(v) and v[i] < thr:
            count += 1
            if count >= run:
                return i - step * (run - 1)
        else:
            count = 0
    return None


def _delineate(tpl: np.ndarray, ok: np.ndarray, r: int, fs: float, rr_s: float, out: Measurements) -> None:
    n = tpl.shape[1]
    smooth = max(1, int(0.01 * fs))
    kernel = np.ones(smooth) / smooth
    vel = np.convolve(np.abs(np.diff(tpl[ok], axis=1)).sum(axis=0), kernel, mode="same")
    vel = np.concatenate([vel, vel[-1:]])
    lo, hi = max(0, r - int(0.05 * fs)), min(n, r + int(0.05 * fs))
    vmax = float(vel[lo:hi].max())
    if vmax <= 0:
        return
    run = max(2, int(0.01 * fs))
    thr = 0.10 * vmax
    on = _first_run_below(vel, r, max(-1, r - int(0.15 * fs)), -1, thr, run)
    off = _first_run_below(vel, r, min(n, r + int(0.2 * fs)), 1, thr, run)
    if on is None or off is None:
        return
    qrs = _bounded("qrs", _ms(off - on, fs))

    # per-lead baseline: the PR segment just before QRS onset (10–30 ms before it)
    b0, b1 = max(0, on - int(0.03 * fs)), max(1, on - int(0.01 * fs))
    base = np.median(tpl[:, b0:b1], axis=1, keepdims=True)
    y = tpl - base
    y[~ok] = 0.0
    j60 = off + int(0.06 * fs)
    peak_r = np.argmax(y[:, on : off + 1], axis=1) + on
    for i, lead in enumerate(LEADS):
        if not ok[i] or qrs is None:
            continue
        seg = y[i, on : off + 1]
        out.r_amp[lead] = float(max(0.0, seg.max()))
        out.s_amp[lead] = float(max(0.0, -y[i, peak_r[i] : off + 1].min()))
        if j60 < n:
            out.st_j60[lead] = float(y[i, j60])
    if qrs is not None and ok[0] and ok[5]:
        out.qrs_axis = _axis(y[0, on : off + 1].sum(), y[5, on : off + 1].sum())

    # T wave on the vector magnitude
    vm = np.sqrt((y**2).sum(axis=0))
    t_lo = off + int(0.08 * fs)
    t_hi = min(n - 1, r + int(0.75 * rr_s))
    t_end = None
    if qrs is not None and t_hi - t_lo > int(0.1 * fs):
        tp = t_lo + int(np.argmax(vm[t_lo:t_hi]))
        floor = float(np.percentile(vm[tp : t_hi + 1], 10)) if t_hi > tp else 0.0
        d = np.gradient(vm)
        s_hi = min(t_hi, tp + int(0.2 * fs))
        if s_hi > tp + 1:
            ts = tp + int(np.argmin(d[tp:s_hi]))
            slope = d[ts]
            if slope < 0:
                t_end = ts + (vm[ts] - floor) / (-slope)
                if _bounded("qt", _ms(t_end - on, fs)) is not None:
                    te = round(min(t_end, n - 1))
                    if ok[0] and ok[5]:
                        out.t_axis = _axis(y[0, off : te + 1].sum(), y[5, off : te + 1].sum())

    # P wave: vector-magnitude peak 60–300 ms before QRS onset (after the previous T end), clearly above noise
    p_lo, p_hi = max(0, on - int(0.3 * fs)), on - int(0.06 * fs)
    if t_end is not None:  # at fast rates the window would reach back into the previous beat's T wave
        p_lo = max(p_lo, int(t_end - rr_s) + 1)
    if qrs is None or p_hi - p_lo < int(0.05 * fs):
        return
    noise = float(np.median(np.abs(np.diff(vm[p_lo:p_hi])))) * fs * 0.01  # typical change over 10 ms
    pp = p_lo + int(np.argmax(vm[p_lo:p_hi]))
    base_vm = float(np.median(vm[b0:b1]))
    amp = vm[pp] - base_vm
    if amp <= max(3 * noise, 0.03):
        return
    # onset/offset: 20 % up from the lowest level on each side (the TP level before, the PR segment after)
    left = vm[max(0, pp - int(0.15 * fs)) : pp + 1]
    right = vm[pp : on + 1]
    p_on = _first_run_below(vm, pp, max(-1, pp - int(0.15 * fs)), -1, left.min() + 0.2 * (vm[pp] - left.min()), run)
    p_off = _first_run_below(vm, pp, on, 1, right.min() + 0.2 * (vm[pp] - right.min()), run)
    if p_on is None or p_off is None:
        return
    if _bounded("p_duration", _ms(p_off - p_on, fs)) is not None:
        if ok[0] and ok[5]:
            out.p_axis = _axis(y[0, p_on : p_off + 1].sum(), y[5, p_on : p_off + 1].sum())


def _axis(lead_i: float, lead_avf: float) -> float | None:
    if abs(lead_i) < 1e-9 and abs(lead_avf) < 1e-9:
        return None
    return float(math.degrees(math.atan2(lead_avf, lead_i)))
