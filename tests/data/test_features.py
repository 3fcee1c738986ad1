"""ecgqa.data.features (ECG-QA's numeric-feature method) and ecgqa.generation.release_statuses.

Agreement with the release is checked against statuses the release's own comparison questions imply:
harvested from the bundled shards, and from the four public PTB-XL template shards
(``tests/data/fixtures/release_numeric_statuses.json``, built by ``scripts/harvest_release_statuses.py``).
Feature values are checked against NeuroKit2 called directly.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import wfdb

from ecgqa.data.features import FEATURES, FS, MIN_R_PEAKS, RANGES, NumericFeatures, numeric_features
from ecgqa.data.records import read_record
from ecgqa.generation.release_statuses import Harvest, ReleaseStatusError, agreement, apply, harvest, load

FIXTURE = Path(__file__).parent / "fixtures" / "release_numeric_statuses.json"


def _path(sample_paths, ecg_id: int) -> Path:
    return sample_paths.ptbxl_records / "records500" / f"{ecg_id // 1000 * 1000:05d}" / f"{ecg_id:05d}_hr"


def record_features(path: Path) -> NumericFeatures:
    """The features of a WFDB record at its own rate."""
    rec = read_record(path)
    return numeric_features(rec.signal, rec.fs)


def _lead_ii(sample_paths, ecg_id: int) -> np.ndarray:
    sig, fields = wfdb.rdsamp(str(_path(sample_paths, ecg_id)))
    return sig[:, [n.upper() for n in fields["sig_name"]].index("II")].astype(np.float64)


def test_values_equal_neurokit_called_directly(sample_paths):
    """RR and QRS (Q peak → S peak) computed here from NeuroKit2's public API, by hand, on a real record."""
    import neurokit2 as nk

    for ecg_id in (2, 7):
        x = _lead_ii(sample_paths, ecg_id)
        clean = nk.ecg_clean(x, sampling_rate=500)
        _, info = nk.ecg_peaks(clean, sampling_rate=500)
        _, waves = nk.ecg_delineate(clean, info, sampling_rate=500, method="dwt")
        peaks = np.asarray(info["ECG_R_Peaks"])
        q, s = np.asarray(waves["ECG_Q_Peaks"], float), np.asarray(waves["ECG_S_Peaks"], float)
        ok = np.isfinite(q) & np.isfinite(s)
        f = record_features(_path(sample_paths, ecg_id))
        assert f.n_r_peaks == len(peaks)
        assert f.values["rr interval"] == pytest.approx(float(np.median(np.diff(peaks))) / 500)
        assert f.values["qrs duration"] == pytest.approx(float(np.median(s[ok] - q[ok] + 1)) / 500)
        # QTc is Bazett of each beat's QT with the RR ending at that beat: median over beats, not median QT / √RR
        assert f.values["qt corrected"] != pytest.approx(f.values["qt interval"] / math.sqrt(f.values["rr interval"]))
        assert all(v is not None for v in f.values.values()), f.values


def test_release_dwt_leaves_neurokit_unchanged(sample_paths):
    """The delineator's two patched pieces are swapped back: NeuroKit2's own output is the same after a call."""
    import neurokit2 as nk

    module = importlib.import_module("neurokit2.ecg.ecg_delineate")
    before = {
        n: getattr(module, n) for n in ("_dwt_delineate_qrs_bounds", "_dwt_normalize_window") if hasattr(module, n)
    }
    x = nk.ecg_clean(_lead_ii(sample_paths, 5), sampling_rate=500)
    _, info = nk.ecg_peaks(x, sampling_rate=500)
    first = nk.ecg_delineate(x, info, sampling_rate=500, method="dwt")[1]
    numeric_features(x, 500)
    assert {n: getattr(module, n) for n in before} == before
    again = nk.ecg_delineate(x, info, sampling_rate=500, method="dwt")[1]
    assert json.dumps(first, default=str) == json.dumps(again, default=str)


def test_fewer_than_seven_r_peaks_give_nothing():
    import neurokit2 as nk

    short = nk.ecg_simulate(duration=5, sampling_rate=FS, heart_rate=60, random_state=1)
    f = numeric_features(short, FS)
    assert f.n_r_peaks < MIN_R_PEAKS and set(f.values.values()) == {None} and set(f.statuses().values()) == {None}
    long = nk.ecg_simulate(duration=10, sampling_rate=FS, heart_rate=60, random_state=1)
    assert numeric_features(long, FS).values["rr interval"] == pytest.approx(1.0, abs=0.01)


def test_other_rates_are_resampled_to_500(sample_paths):
    from scipy.signal import resample_poly

    x = _lead_ii(sample_paths, 2)
    at500 = numeric_features(x, 500)
    at250 = numeric_features(resample_poly(x, 1, 2), 250)
    assert at250.values["rr interval"] == pytest.approx(at500.values["rr interval"], abs=0.004)
    assert at250.statuses()["rr interval"] == at500.statuses()["rr interval"]


def test_bad_signals():
    assert set(numeric_features(np.full((12, 5000), np.nan), FS).values.values()) == {None}
    assert set(numeric_features(np.zeros(5000), FS).values.values()) == {None}
    with pytest.raises(ValueError, match="12, T"):
        numeric_features(np.zeros((5000, 12)), FS)
    with pytest.raises(ValueError, match="fs"):
        numeric_features(np.zeros(5000), 0)


def test_ranges_are_inclusive():
    f = NumericFeatures(values={"rr interval": 0.6, "p duration": 0.121, "pr interval": 0.2, "qrs duration": 0.059})
    assert f.statuses() == {
        "rr interval": "within",
        "p duration": "above",
        "pr interval": "within",
        "qrs duration": "below",
        "qt interval": None,
        "qt corrected": None,
    }
    assert RANGES["qt corrected"] == (0.33, 0.45) and RANGES["qrs duration"] == (0.06, 0.11)
    assert "above the normal range of p duration" in f.range_attributes()


def _q(tid, ids, answer, question="", sid=0):
    qtype = "comparison_irrelevant-query" if tid >= 64 else "comparison_consecutive-query"
    return {
        "template_id": tid,
        "sample_id": sid,
        "attribute_type": "numeric_feature",
        "question_type": qtype,
        "question": question,
        "ecg_id": ids,
        "answer": answer,
    }


def test_harvest_facts_and_propagation():
    samples = [
        _q(68, [1, 2], ["qt interval"]),  # became normal: 1 abnormal, 2 normal; other features "not (1 ab, 2 n)"
        _q(67, [3, 2], ["no"], "Compared to the first ECG, is the qt interval still normal in the second ECG?"),
        _q(70, [2, 4], ["none"]),  # still abnormal: none → for qt, 2 is normal so nothing about 4
        _q(69, [5, 1], ["rr interval"]),  # 5 normal, 1 abnormal rr → clause of sample 1 on rr: 2 must be abnormal
    ]
    h = harvest(samples)
    assert h.questions == 4 and not h.contradictions
    assert h.get(1, "qt interval") is False and h.get(2, "qt interval") is True
    assert h.get(3, "qt interval") is False  # "still normal?" no, with 2 normal → 3 abnormal
    assert h.get(4, "qt interval") is None
    assert h.get(1, "rr interval") is False and h.get(2, "rr interval") is False  # propagated
    more = harvest([*samples, _q(53, [7, 2], ["yes"], "…, is the qt interval still normal in the …?", 9)])
    assert h.get(7, "qt interval") is None and more.get(7, "qt interval") is True and not more.contradictions
    bad = harvest([*samples, _q(66, [2, 8], ["yes"], "…, does the qt interval still show an abnormal value …?", 10)])
    assert bad.contradictions and bad.contradictions[0]["ecg_id"] == 2
    with pytest.raises(ReleaseStatusError, match="sample 0"):
        harvest([_q(64, [1, 2], ["yes"], "has the heart rate become normal?")])


def test_apply_replaces_measured_statuses():
    labels = {"entire": {"above the normal range of qt interval": 1, "within the normal range of qt interval": 0}}
    labels["entire"]["below the normal range of qt interval"] = 0
    assert apply(labels, {"qt interval": False}) == 0  # measured abnormal (above) and the release agrees
    assert apply(labels, {"qt interval": True, "pr interval": False}) == 2
    e = labels["entire"]
    assert (e["above the normal range of qt interval"], e["within the normal range of qt interval"]) == (0, 1)
    # abnormal, direction unknown: above/below unknown, within no
    assert e["within the normal range of pr interval"] == 0 and e["above the normal range of pr interval"] is None


def test_agreement_with_the_bundled_shards_first_ecgs(sample_paths):
    """The first six ECGs whose statuses the bundled valid shard implies: every status agrees."""
    found = load(sample_paths.ptbxl_release)
    assert (len(found.statuses), len(found), found.questions) == (24, 128, 38)
    first = sorted(found.statuses)[:6]
    measured = {e: record_features(_path(sample_paths, e)) for e in first}
    result = agreement(found, measured)
    assert (result["agree"], result["total"]) == (31, 31), result["disagreements"]


@pytest.mark.slow  # measures 24 records
def test_agreement_with_the_bundled_shards(sample_paths):
    """Statuses the bundled valid shard implies (24 ECGs, 128 statuses): all but ECG 351's QRS agree."""
    found = load(sample_paths.ptbxl_release)
    measured = {e: record_features(_path(sample_paths, e)) for e in found.statuses}
    result = agreement(found, measured)
    assert (result["agree"], result["total"]) == (127, 128)
    assert result["disagreements"] == [{"ecg_id": 351, "feature": "qrs duration", "release": False, "measured": True}]


@pytest.mark.slow  # measures 107 records
def test_agreement_with_four_public_shards(sample_paths):
    """All 607 statuses the four public template shards imply for the bundled ECGs: 606 agree."""
    fixture = json.loads(FIXTURE.read_text())
    assert fixture["questions"] == 14348 and fixture["contradictions"] == 0
    found = Harvest(statuses={int(e): v for e, v in fixture["statuses"].items()})
    measured = {e: record_features(_path(sample_paths, e)) for e in found.statuses}
    result = agreement(found, measured)
    assert (result["agree"], result["total"]) == (606, 607), result["disagreements"]
    assert {f for f, p in result["per_feature"].items() if p["agree"] < p["total"]} <= {"qrs duration"}
    assert set(result["per_feature"]) == set(FEATURES)


def test_use_release_statuses_on_the_bundled_shard(sample_paths):
    """--statuses release: the bundled shard's statuses replace measured ones, counted apart."""
    from types import SimpleNamespace

    from ecgqa.generation.release_statuses import use_release_statuses

    found = load(sample_paths.ptbxl_release)
    measured_within = {
        f"{w} the normal range of {f}": int(w == "within") for f in FEATURES for w in ("above", "within", "below")
    }
    inp = SimpleNamespace(labels={2: {"entire": dict(measured_within)}, 5: {"entire": dict(measured_within)}, 1: {}})
    report = use_release_statuses(inp, sample_paths.ptbxl_release)
    assert report["ecgs_from_release"] == 2 and report["ecgs_measured_only"] == 1
    assert report["statuses_from_release"] == len(found.statuses[2]) + len(found.statuses[5])
    abnormal = sum(not v for e in (2, 5) for v in found.statuses[e].values())
    assert report["statuses_changed_from_measured"] == abnormal > 0
    for e in (2, 5):
        for feature, normal in found.statuses[e].items():
            assert inp.labels[e]["entire"][f"within the normal range of {feature}"] == int(normal)
    assert inp.labels[1] == {}
