"""The frontal QRS axis by ECG-QA's own method: what the release's heart-axis answers (templates 20–22) say.

The ECG-QA authors' generator (``Jwoo5/fairseq-signals`` commit ``1865c0c``, ``encode_ptbxl.py``) measures
the axis from two leads, beat by beat:

1. Leads I and aVF at 500 Hz (a record at another rate is resampled first), each delineated on its own:
   NeuroKit2 ``ecg_clean`` → ``ecg_peaks`` → DWT ``ecg_delineate`` (:func:`ecgqa.data.features.delineate`,
   the delineator as it behaved in early 2023); fewer than 7 R peaks in either lead → no axis.
2. Beats are paired: each lead-I R peak with the first aVF R peak within 50 samples (100 ms).
3. Per beat and lead, on the raw signal, relative to the baseline at the beat's R onset: the sample
   farthest from the baseline within ±50 samples of the R peak is the main deflection; the net amplitude is
   that deflection plus the largest deflection of the other sign within ±50 samples of it.
4. The two net amplitudes are averaged over the beats; the axis is their angle,
   ``atan2(aVF, I)`` in degrees, (−180°, 180°].

This is not :mod:`ecgqa.data.measure`'s QRS axis (net QRS area over the delineated complex), which the
release's answers contradict: on the 16 release samples over ECGs with records in
``tests/generation/data/release_evidence.jsonl`` this method gives the release's answer 16 times, the area
axis 7 times (``docs/generate.md``, "Answer rules").
"""

from __future__ import annotations

import math
import warnings

import numpy as np

#: samples (at 500 Hz) searched on each side of an R peak, and the pairing tolerance between the two leads
WINDOW = 50
PAIR = 50
LEAD_I, LEAD_AVF = 0, 5


def _net_amplitudes(x: np.ndarray, peaks, onsets) -> list[float | None]:
    """Per beat: main deflection + the largest opposite deflection, both from the R-onset baseline."""
    out: list[float | None] = []
    for peak, onset in zip(peaks, onsets, strict=True):
        if onset is None or not math.isfinite(onset) or not math.isfinite(peak):
            out.append(None)
            continue
        peak, onset = int(peak), int(onset)
        base = float(x[onset])
        lo = max(0, peak - WINDOW)
        win = x[lo : min(len(x), peak + WINDOW)]
        if not len(win):
            out.append(None)
            continue
        i = int(np.argmax(np.abs(win - base)))
        main = float(win[i]) - base
        at = lo + i
        around = x[max(0, at - WINDOW) : min(len(x), at + WINDOW)] - base
        out.append(main + (float(around.min()) if main > 0 else float(around.max())))
    return out


def release_qrs_axis(signal, fs: float) -> float | None:
    """The frontal QRS axis in degrees of a ``(12, T)`` ECG (lead order I, II, III, aVR, aVL, aVF, V1–V6) by
    ECG-QA's method (module docstring); None when it cannot be measured (too few beats, a flat or
    non-finite lead, a delineation failure)."""
    from ecgqa.data.features import FS, MIN_R_PEAKS, delineate

    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != 12:
        raise ValueError(f"expected a (12, T) signal, got shape {x.shape}")
    if not fs > 0:
        raise ValueError(f"fs must be positive, not {fs}")
    leads = x[[LEAD_I, LEAD_AVF]]
    if round(fs) != FS:
        from ecgqa.data.records import resample

        leads = np.stack([resample(lead, round(fs), FS) for lead in leads]).astype(np.float64)
    if leads.shape[1] < 2 * FS or not np.all(np.isfinite(leads)) or np.any(np.ptp(leads, axis=1) <= 0):
        return None
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            (pi, wi), (pa, wa) = delineate(leads[0]), delineate(leads[1])
    except Exception:  # noqa: BLE001 - NeuroKit2 fails on pathological signals: "not measurable"
        return None
    if len(pi) < MIN_R_PEAKS or len(pa) < MIN_R_PEAKS or not wi or not wa:
        return None
    oi, oa = wi["ECG_R_Onsets"], wa["ECG_R_Onsets"]
    pairs = []
    for j, p in enumerate(pi):
        k = next((k for k, q in enumerate(pa) if abs(int(p) - int(q)) <= PAIR), None)
        if k is not None:
            pairs.append((j, k))
    if not pairs:
        return None
    net_i = _net_amplitudes(leads[0], [pi[j] for j, _ in pairs], [oi[j] if j < len(oi) else math.nan for j, _ in pairs])
    net_a = _net_amplitudes(leads[1], [pa[k] for _, k in pairs], [oa[k] if k < len(oa) else math.nan for _, k in pairs])
    beats = [(a, b) for a, b in zip(net_i, net_a, strict=True) if a is not None and b is not None]
    if not beats:
        return None
    a = float(np.mean([b[0] for b in beats]))
    b = float(np.mean([b[1] for b in beats]))
    if a == 0 and b == 0:
        return None
    return math.degrees(math.atan2(b, a))
