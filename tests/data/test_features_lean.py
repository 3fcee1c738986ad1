"""The lean Q / S search of ``ecgqa.data.features`` gives exactly NeuroKit2's points, and R peaks shared with
``ecgqa.data.measure`` give exactly the measurements it computes alone.

Compared on the bundled real PTB-XL records (500 Hz, and the same records at 100 Hz resampled to 500 Hz, as
``numeric_features`` does for a low-rate record), plus cut and noisy versions of them that take NeuroKit2's
edge paths (a first beat whose window starts before the record, a record too short to segment).
"""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest

from ecgqa.data import features as F
from ecgqa.data import measure as M
from ecgqa.data.records import read_record, resample

N_FAST = 8  # records compared in the fast tier (the first bundled ones)


def _record_ids(sample_paths) -> list[int]:
    return sorted(int(p.name.split("_")[0]) for p in (sample_paths.ptbxl_records / "records500").glob("*/*_hr.hea"))


def _lead_ii(sample_paths, ecg_id: int) -> np.ndarray:
    path = sample_paths.ptbxl_records / "records500" / f"{ecg_id // 1000 * 1000:05d}" / f"{ecg_id:05d}_hr"
    return np.asarray(read_record(path).signal[1], dtype=np.float64)


def _delineate(x: np.ndarray, lean: bool):
    """(peaks, waves) or the exception's (type, message), as ``numeric_features`` runs it (warnings off)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            return F.delineate(x, lean=lean)
        except Exception as e:  # noqa: BLE001 - the same failure on both paths is part of the identity
            return type(e).__name__, str(e)


def _assert_identical(x: np.ndarray, what: str) -> int:
    """Patched and unpatched outputs are equal (every wave point, NaN where NaN); returns the number of beats."""
    lean, orig = _delineate(x, True), _delineate(x, False)
    if isinstance(orig[0], str):
        assert lean == orig, what
        return 0
    assert not isinstance(lean[0], str), f"{what}: lean path failed with {lean}"
    np.testing.assert_array_equal(lean[0], orig[0], err_msg=what)
    assert lean[1].keys() == orig[1].keys(), what
    for key in orig[1]:
        a, b = np.asarray(lean[1][key], dtype=float), np.asarray(orig[1][key], dtype=float)
        assert a.shape == b.shape and np.array_equal(a, b, equal_nan=True), f"{what}: {key}"
    return len(orig[0])


def _variants(x: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "500 Hz": x,
        "100 Hz resampled": resample(resample(x, 500, 100), 100, 500).astype(np.float64),
        "first 4.6 s": x[: int(4.6 * F.FS)],  # segmented; the first beat's window starts before sample 0
        "first 3.5 s": x[: int(3.5 * F.FS)],  # too short for ecg_segment: both paths raise the same error
        "from 0.05 s": x[int(0.05 * F.FS) :],
        "noisy": x + rng.normal(0, 0.15, len(x)),
    }


def test_lean_path_is_used_with_this_neurokit():
    """The speed-up applies: the installed NeuroKit2's functions are those the lean path was proven against.

    If this fails after a NeuroKit2 upgrade, features still come out right (NeuroKit2's own functions are
    used) but slower: rerun this file's identity tests against the new version and update
    ``ecgqa.data.features.LEAN_VERIFIED``.
    """
    import neurokit2

    F._lean_ok = None
    assert F.lean_available(), f"neurokit2 {neurokit2.__version__}: sources differ from LEAN_VERIFIED"


def test_lean_swap_is_restored_and_refused_for_other_sources(monkeypatch):
    module = importlib.import_module("neurokit2.ecg.ecg_delineate")
    before = {n: getattr(module, n) for n in ("ecg_segment", "_ecg_delineator_peak_Q", "_ecg_delineator_peak_S")}
    F._lean_ok = None
    with F._release_dwt(module):
        assert module.ecg_segment is F._lean_segment
        assert module._ecg_delineator_peak_Q is F._lean_peak_q
    assert {n: getattr(module, n) for n in before} == before
    # a NeuroKit2 whose source differs from the verified one: its own functions stay in place
    monkeypatch.setitem(F.LEAN_VERIFIED, "neurokit2.ecg.ecg_segment.ecg_segment", "0" * 16)
    monkeypatch.setattr(F, "_lean_ok", None)
    with F._release_dwt(module):
        assert module.ecg_segment is before["ecg_segment"]
        assert module._ecg_delineator_peak_S is before["_ecg_delineator_peak_S"]
    monkeypatch.setattr(F, "_lean_ok", None)


def test_lean_delineation_identical_fast(sample_paths):
    beats = sum(
        _assert_identical(x, f"ecg {e}, {name}")
        for e in _record_ids(sample_paths)[:N_FAST]
        for name, x in _variants(_lead_ii(sample_paths, e)).items()
    )
    assert beats > 300  # the comparison covered real beats, not only failures


@pytest.mark.slow  # every other bundled record at 500 Hz and via 100 Hz, both paths (~15 s)
def test_lean_delineation_identical_over_the_bundled_records(sample_paths):
    """(All 198 and PTB-XL records 1-500 at both rates: scripts/check_lean_delineation.py, docs/attributes.md.)"""
    ids = _record_ids(sample_paths)[N_FAST::2]
    assert len(ids) > 80
    for e in ids:
        variants = _variants(_lead_ii(sample_paths, e))
        for name in ("500 Hz", "100 Hz resampled"):
            _assert_identical(variants[name], f"ecg {e}, {name}")


def test_shared_r_peaks_give_identical_measurements(sample_paths):
    """measure_ecg reuses the features' lead-II R peaks at 500 Hz: every field equal to detecting them again."""
    axes = 0
    for e in _record_ids(sample_paths)[:N_FAST]:
        path = sample_paths.ptbxl_records / "records500" / f"{e // 1000 * 1000:05d}" / f"{e:05d}_hr"
        rec = read_record(path)
        signal = np.asarray(rec.signal, dtype=np.float64)
        lead_ii_flat = signal.copy()
        lead_ii_flat[1] = 0.0  # lead II unusable: the rhythm lead is lead I, nothing shared
        for name, (sig, fs) in {
            "500 Hz": (signal, rec.fs),
            "100 Hz": (resample(signal, 500, 100), 100),
            "lead II flat": (lead_ii_flat, rec.fs),
        }.items():
            shared, alone = M.measure_ecg(sig, fs), M.measure_ecg(sig, fs, share_r_peaks=False)
            assert shared == alone, f"ecg {e}, {name}"
            axes += shared.qrs_axis is not None
    assert axes >= 2 * N_FAST  # measured for real, not all "not measurable"


def test_array_max_is_builtins_max_and_only_inside_the_swap():
    """The delineator module's ``max`` is :func:`F._array_max` only while the lean swap is active, and it returns
    what ``builtins.max`` returns: the same value and type on finite windows, the builtin's own answer otherwise."""
    import builtins

    rng = np.random.default_rng(0)
    windows = [rng.normal(size=n) for n in (1, 2, 7, 400)] + [np.array([3.0, 5.0, 5.0, -1.0]), -np.ones(5)]
    for w in windows:
        got, want = F._array_max(w), builtins.max(w)
        assert got == want and type(got) is type(want)
    with_nan = np.array([1.0, np.nan, 2.0])
    assert F._array_max(with_nan) == builtins.max(with_nan) == 2.0  # the builtin's order-dependent answer, not NaN
    assert F._array_max(3, 9, 4) == 9 and F._array_max([2, 8]) == 8 and F._array_max([], default=-1) == -1
    module = F._delineator_module()
    assert not hasattr(module, "max")
    with F._release_dwt(module, lean=True):
        assert module.max is F._array_max
    assert not hasattr(module, "max")
    with F._release_dwt(module, lean=False):
        assert not hasattr(module, "max")
