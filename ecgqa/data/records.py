"""Read WFDB records into float32 arrays of shape (12, T) in the standard lead order.

Leads are reordered by name, never by position: MIMIC-IV-ECG headers store aVF before aVL.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ecgqa.data.constants import LEADS


class RecordError(ValueError):
    """A record is missing, truncated, has the wrong leads or holds NaN; the message names it."""


@dataclass(frozen=True)
class Record:
    signal: np.ndarray  # float32, (12, T), mV, LEADS order
    fs: int
    path: str


def _canonical(name: str) -> str:
    return name.strip().upper()


_CANONICAL_LEADS = {_canonical(lead): i for i, lead in enumerate(LEADS)}


def read_record(path: str | Path, fs: int | None = None) -> Record:
    """Read the record at ``path`` (no extension), optionally resampled to ``fs`` Hz."""
    path = Path(path)
    header = path.with_name(path.name + ".hea")
    if not header.is_file():
        raise RecordError(f"record {path}: header {header} not found")
    fast = _read_format16(path, header)
    if fast is not None:
        data, sig_name, record_fs = fast
    else:
        data, sig_name, record_fs = _read_wfdb(path)
    order = _lead_order(sig_name, path)
    out = np.ascontiguousarray(data.T[order], dtype=np.float32)
    bad = np.isnan(out).any(axis=1)
    if bad.any():
        leads = [LEADS[i] for i in np.flatnonzero(bad)]
        raise RecordError(f"record {path}: NaN values in leads {leads}")
    rate = round(record_fs)
    if fs is not None and fs != rate:
        out = resample(out, rate, fs)
        rate = fs
    return Record(out, rate, str(path))


def _read_wfdb(path: Path) -> tuple[np.ndarray, list[str] | None, float]:
    """Any WFDB record, through ``wfdb.rdrecord``: (T, channels) physical float64, names, rate."""
    import wfdb  # here, not at the top: only records the format-16 reader cannot read need it; mapping doesn't

    try:
        rec = wfdb.rdrecord(str(path), physical=True)
    except FileNotFoundError as e:
        raise RecordError(f"record {path}: signal file {e.filename} not found") from e
    except Exception as e:  # wfdb raises a variety of types for bad headers and short files
        raise RecordError(f"record {path}: unreadable or truncated record ({e})") from e
    data = rec.p_signal
    if data is None or data.shape[0] != rec.sig_len:
        got = 0 if data is None else data.shape[0]
        raise RecordError(f"record {path}: truncated signal, {got} of {rec.sig_len} samples")
    return data, rec.sig_name, rec.fs


#: WFDB format 16's "no sample" value (wfdb.rdrecord turns it into NaN).
_FMT16_INVALID = -32768


def _read_format16(path: Path, header: Path) -> tuple[np.ndarray, list[str], float] | None:
    """The common case read directly: one header, every channel in one format-16 file (PTB-XL and
    MIMIC-IV-ECG store all records so). wfdb.rdheader spends ~0.1 s a record in pandas lookups, which
    made reading, not writing, the cost of ``prepare`` at full size; this reads a record in ~1 ms.
    Returns None for anything else (other formats, skews, offsets, multi-segment, a short or missing
    signal file, a malformed line), which then goes through wfdb with its own checks and messages.
    Same values as ``wfdb.rdrecord(physical=True)``: (digital - baseline) / gain, the invalid value NaN."""
    try:
        lines = [ln for ln in header.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        rec = lines[0].split()
        if "/" in rec[0] or len(rec) < 4:
            return None  # multi-segment, or no sample count
        nsig, nsamp = int(rec[1]), int(rec[3])
        fs = float(rec[2].split("/")[0].split("(")[0])
        if nsig < 1 or nsamp < 1 or len(lines) != nsig + 1:
            return None
        files, gains, baselines, names = set(), [], [], []
        for line in lines[1:]:
            f = line.split(maxsplit=8)
            if len(f) < 9 or f[1] != "16":
                return None  # format 16 only, with no skew/offset/sample-frame suffix, and every field present
            files.add(f[0])
            gain_spec = f[2].split("/")[0]
            gain = float(gain_spec.split("(")[0])
            if not gain > 0:
                return None  # gain 0 means "uncalibrated/default": leave it to wfdb
            baseline = int(gain_spec.split("(")[1].rstrip(")")) if "(" in gain_spec else int(f[4])
            gains.append(gain)
            baselines.append(baseline)
            names.append(f[8].strip())
        if len(files) != 1:
            return None
        dat = path.with_name(files.pop())
        if dat.stat().st_size != 2 * nsig * nsamp:  # a missing file raises OSError: None below too
            return None  # missing or truncated: wfdb says which
        digital = np.fromfile(dat, dtype="<i2").reshape(nsamp, nsig)
    except (OSError, ValueError, IndexError):
        return None
    data = (digital - np.array(baselines, dtype=np.float64)) / np.array(gains, dtype=np.float64)
    data[digital == _FMT16_INVALID] = np.nan
    return data, names, fs


def _lead_order(sig_name: list[str] | None, path: Path) -> list[int]:
    """Indices into the record's channels that put them in LEADS order."""
    names = [_canonical(n) for n in sig_name or []]
    position = {}
    for i, n in enumerate(names):
        if n in _CANONICAL_LEADS and n not in position:
            position[n] = i
    missing = [lead for lead in LEADS if _canonical(lead) not in position]
    if missing:
        raise RecordError(
            f"record {path}: wrong lead set {sig_name}; missing {missing} (need the 12 standard leads {list(LEADS)})"
        )
    return [position[_canonical(lead)] for lead in LEADS]


def record_files(record: str | Path) -> tuple[Path, Path]:
    """The files a WFDB record (given without extension) needs: its header and its signal file."""
    record = Path(record)
    return record.with_name(record.name + ".hea"), record.with_name(record.name + ".dat")


def fit_length(signal: np.ndarray, length: int) -> np.ndarray:
    """Crop or zero-pad a (..., T) signal at its end to exactly ``length`` samples (the one crop/pad).

    Prepared data stores one fixed T (``--seconds``): longer records keep their first ``length``
    samples, shorter ones are padded with zeros (0 mV) after their last sample. Uploaded signals
    (serve) go through the same function, so a model always sees what training saw.
    """
    if length < 1:
        raise ValueError(f"length must be a positive number of samples, not {length}")
    t = signal.shape[-1]
    if t == length:
        return signal
    if t > length:
        return signal[..., :length]
    out = np.zeros(signal.shape[:-1] + (length,), dtype=signal.dtype)
    out[..., :t] = signal
    return out


def resample(signal: np.ndarray, fs: int, target_fs: int) -> np.ndarray:
    """Polyphase resampling along the last axis (anti-aliased), e.g. 500 → 100 Hz."""
    if fs == target_fs:
        return signal
    ratio = Fraction(int(target_fs), int(fs))
    from scipy import signal as sps  # here, not at the top: `ecgqa map` imports this module and never resamples

    out = sps.resample_poly(signal, ratio.numerator, ratio.denominator, axis=-1)
    return out.astype(np.float32, copy=False)


def read_header_rate(header: str | Path) -> float:
    """The sampling rate on line 1 of a WFDB header (``NAME NSIG FS[/COUNTER][(BASE)] NSAMP ...``); 0.0
    when the line names none. A rate that is not a number is an error naming the file."""
    header = Path(header)
    fields = header.read_text(errors="replace").split("\n", 1)[0].split()
    if len(fields) < 3:
        return 0.0
    try:
        return float(fields[2].split("/")[0].split("(")[0])
    except ValueError:
        raise RecordError(f"{header}: line 1 has no sampling rate ({' '.join(fields)!r})") from None
