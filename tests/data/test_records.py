"""The record reader against wfdb directly, on real PTB-XL records and on hand-made broken ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import wfdb

from ecgqa.data.constants import LEADS
from ecgqa.data.records import RecordError, read_record, resample


def _sample_records(sample_paths) -> list[Path]:
    return sorted(p.with_suffix("") for p in (sample_paths.ptbxl_records / "records500").glob("*/*.hea"))


def test_reader_equals_wfdb_rdsamp(sample_paths):
    records = _sample_records(sample_paths)
    assert len(records) == 198
    for path in records[::10]:
        expected, fields = wfdb.rdsamp(str(path))
        rec = read_record(path)
        assert rec.fs == fields["fs"] == 500
        assert rec.signal.dtype == np.float32 and rec.signal.shape == (12, 5000)
        names = [n.upper() for n in fields["sig_name"]]
        for i, lead in enumerate(LEADS):
            np.testing.assert_allclose(rec.signal[i], expected[:, names.index(lead.upper())], atol=1e-6)


def test_resample_to_100hz_keeps_waveform(sample_paths):
    path = _sample_records(sample_paths)[0]
    rec = read_record(path, fs=100)
    assert rec.fs == 100 and rec.signal.shape == (12, 1000)
    full = read_record(path).signal
    # decimated signal tracks the 500 Hz one closely at the shared instants (low-frequency content)
    corr = [np.corrcoef(rec.signal[i], full[i, ::5])[0, 1] for i in range(12)]
    assert min(corr) > 0.95
    t = np.arange(5000) / 500
    sine = np.sin(2 * np.pi * 2.0 * t)[None].astype(np.float32)
    np.testing.assert_allclose(resample(sine, 500, 250)[0, 100:-100], sine[0, ::2][100:-100], atol=1e-3)


def _write(tmp_path: Path, name: str, data: np.ndarray, sig_name: list[str], fs: int = 500) -> Path:
    wfdb.wrsamp(
        name,
        fs=fs,
        units=["mV"] * len(sig_name),
        sig_name=sig_name,
        p_signal=data,
        fmt=["16"] * len(sig_name),
        adc_gain=[1000.0] * len(sig_name),
        baseline=[0] * len(sig_name),
        write_dir=str(tmp_path),
    )
    return tmp_path / name


def test_nan_record_is_named(tmp_path):
    data = np.random.default_rng(0).normal(size=(1000, 12)) * 0.1
    data[100:200, 4] = np.nan
    path = _write(tmp_path, "nanrec", data, list(LEADS))
    with pytest.raises(RecordError, match=r"nanrec: NaN values in leads \['aVL'\]"):
        read_record(path)


def test_truncated_signal_file(sample_paths, tmp_path):
    src = _sample_records(sample_paths)[0]
    for ext in (".hea", ".dat"):
        shutil.copy2(str(src) + ext, tmp_path / (src.name + ext))
    dat = tmp_path / (src.name + ".dat")
    dat.write_bytes(dat.read_bytes()[: 12 * 2 * 3000])
    with pytest.raises(RecordError, match=rf"{src.name}: (truncated signal|unreadable or truncated)"):
        read_record(tmp_path / src.name)


def test_missing_header_and_signal(sample_paths, tmp_path):
    with pytest.raises(RecordError, match="header .*nothere.hea not found"):
        read_record(tmp_path / "nothere")
    src = _sample_records(sample_paths)[0]
    shutil.copy2(str(src) + ".hea", tmp_path / (src.name + ".hea"))
    with pytest.raises(RecordError, match=rf"signal file .*{src.name}.dat not found"):
        read_record(tmp_path / src.name)


def test_eleven_leads_is_wrong_lead_set(tmp_path):
    data = np.zeros((500, 11))
    path = _write(tmp_path, "lead11", data, [lead for lead in LEADS if lead != "V3"])
    with pytest.raises(RecordError, match=r"lead11: wrong lead set .*missing \['V3'\]"):
        read_record(path)


def test_fit_length_is_the_one_crop_pad(sample_paths):
    from ecgqa.data.records import fit_length

    path = _sample_records(sample_paths)[0]
    expected = wfdb.rdsamp(str(path))[0].T.astype(np.float32)  # (12, 5000), independent of our reader
    cropped = fit_length(expected, 3000)
    np.testing.assert_array_equal(cropped, expected[:, :3000])
    padded = fit_length(expected, 6000)
    assert padded.shape == (12, 6000) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[:, :5000], expected)
    assert not padded[:, 5000:].any()
    assert fit_length(expected, 5000) is expected
    batch = np.stack([expected, expected])  # (2, 12, T): any leading axes
    assert fit_length(batch, 100).shape == (2, 12, 100)
    with pytest.raises(ValueError, match="positive"):
        fit_length(expected, 0)


def test_format16_fast_path_equals_wfdb_rdrecord(sample_paths, tmp_path):
    # read_record parses format-16 headers itself (wfdb's header parsing took ~0.1 s a record, the cost
    # of `prepare` at full PTB-XL size); the values must be wfdb's, bit for bit, and anything else falls back.
    from ecgqa.data.records import _read_format16

    for path in _sample_records(sample_paths)[::99]:
        fast = _read_format16(path, path.with_name(path.name + ".hea"))
        rec = wfdb.rdrecord(str(path), physical=True)
        assert fast is not None and fast[1] == rec.sig_name and fast[2] == rec.fs
        assert np.array_equal(fast[0], rec.p_signal)
    # MIMIC lead order, a baseline in the gain field, and wfdb's invalid value (-32768) as NaN
    names = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]
    digital = np.random.default_rng(1).integers(-3000, 3000, size=(500, 12)).astype(np.int16)
    digital[10:20, 5] = -32768
    wfdb.wrsamp(
        "mimic",
        fs=500,
        units=["mV"] * 12,
        sig_name=names,
        d_signal=digital,
        fmt=["16"] * 12,
        adc_gain=[200.0] * 12,
        baseline=[7] * 12,
        write_dir=str(tmp_path),
    )
    fast = _read_format16(tmp_path / "mimic", tmp_path / "mimic.hea")
    rec = wfdb.rdrecord(str(tmp_path / "mimic"), physical=True)
    assert fast is not None and fast[1] == names
    assert np.array_equal(fast[0], rec.p_signal, equal_nan=True) and np.isnan(fast[0][10:20, 5]).all()
    with pytest.raises(RecordError, match=r"mimic: NaN values in leads \['aVL'\]"):
        read_record(tmp_path / "mimic")  # aVL is the 6th channel in MIMIC's order, reordered by name
    # another format goes through wfdb, with the same result
    wfdb.wrsamp(
        "f212",
        fs=500,
        units=["mV"] * 12,
        sig_name=list(LEADS),
        d_signal=digital.clip(-2000, 2000),
        fmt=["212"] * 12,
        adc_gain=[200.0] * 12,
        baseline=[0] * 12,
        write_dir=str(tmp_path),
    )
    assert _read_format16(tmp_path / "f212", tmp_path / "f212.hea") is None
    expected = wfdb.rdrecord(str(tmp_path / "f212"), physical=True).p_signal.T.astype(np.float32)
    np.testing.assert_array_equal(read_record(tmp_path / "f212").signal, expected)
