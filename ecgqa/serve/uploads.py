"""Turn uploaded files into (12, T) signals, or a 4xx message saying what is wrong with them.

Accepted: a WFDB record (its ``.hea`` header plus the signal file(s) the header names), or a
``.npy`` / ``.npz`` array of shape (12, T) in mV and LEADS order with its sampling rate. Nothing
here ever opens a path the client chose: WFDB files are written under sanitised names into a
private temporary folder and read back with :func:`ecgqa.data.records.read_record`.
"""

from __future__ import annotations

import io
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecgqa.data.constants import LEADS

MIN_RATE, MAX_RATE = 100, 2000  # Hz: what a diagnostic 12-lead ECG is sampled at in practice
MIN_SECONDS = 2.0
#: Longest accepted upload: a diagnostic 12-lead ECG is 10 s; the model reads its first ``signal_length``
#: samples anyway. Checked from the array's header, before its data is decompressed or converted
#: (issue 24: 33 kB of compressed zeros at 100 Hz, 7.75 hours, cost 16 s of CPU and 785 MB).
MAX_SECONDS = 120.0
MAX_ECGS = 2
#: Decompressed size allowed for one .npz (12 leads x 2000 Hz x 2 min of float64 is 23 MB): a few MB of
#: compressed zeros would otherwise inflate to gigabytes in memory, past the upload limit.
MAX_NPZ_BYTES = 32 * 2**20
MAX_NPZ_MEMBERS = 8  # a signal and its rate; a .npz with 40,000 members is refused without listing them
#: WFDB headers are parsed by wfdb at about 1 ms of CPU per signal line (RELIABILITY-PROBE S14: a 1 MB
#: header cost 27 s): headers are checked here, in microseconds, before wfdb sees them.
MAX_HEADER_BYTES = 16 * 1024
MAX_SIGNALS = 16  # the 12 leads plus a few extra channels some recorders add
#: |amplitude| above this is not an ECG in millivolts (a µV or raw-ADC array, or junk such as 1e38,
#: which overflows inside the model and would come back as no score at all, RELIABILITY-PROBE S21)
MAX_ABS_MV = 100.0
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RATE_KEYS = ("fs", "rate", "sampling_rate")


class UploadError(ValueError):
    """The upload cannot be used; the message says which file and what to send instead."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadedECG:
    name: str
    signal: np.ndarray  # float32 (12, T) at ``fs``
    fs: int


def check_rate(rate: float | None, where: str) -> int:
    if rate is None:
        raise UploadError(f"{where}: no sampling rate; send it in the form field 'rate' (Hz, e.g. 500)")
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise UploadError(f"{where}: sampling rate {rate!r} is not a number") from None
    if not np.isfinite(value) or value != int(value) or not MIN_RATE <= value <= MAX_RATE:
        raise UploadError(
            f"{where}: unsupported sampling rate {rate!r} Hz; need a whole number between {MIN_RATE} and {MAX_RATE} Hz"
        )
    return int(value)


def check_signal(array: np.ndarray, fs: int, where: str) -> np.ndarray:
    """Shape (12, T), real numbers, no NaN/inf, at least MIN_SECONDS long; returns float32."""
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        kind = getattr(array, "dtype", type(array).__name__)
        raise UploadError(f"{where}: expected a numeric array, got {kind}")
    if array.ndim != 2 or array.shape[0] != len(LEADS):
        hint = " (it looks transposed: save array.T)" if array.ndim == 2 and array.shape[1] == len(LEADS) else ""
        raise UploadError(
            f"{where}: wrong lead count: expected shape (12, T) with rows in lead order {', '.join(LEADS)}; "
            f"got shape {tuple(array.shape)}{hint}"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        signal = array.astype(np.float32)
    bad = ~np.isfinite(signal).all(axis=1)
    if bad.any():
        raise UploadError(f"{where}: NaN or infinite values in leads {[LEADS[i] for i in np.flatnonzero(bad)]}")
    peak = float(np.abs(signal).max()) if signal.size else 0.0
    if peak > MAX_ABS_MV:
        raise UploadError(
            f"{where}: amplitudes up to {peak:.3g}; expected millivolts (|x| <= {MAX_ABS_MV:g}); "
            "convert µV or ADC units to mV"
        )
    if signal.shape[1] < MIN_SECONDS * fs:
        raise UploadError(f"{where}: only {signal.shape[1] / fs:.2f} s of signal; need at least {MIN_SECONDS:g} s")
    return signal


def check_duration(n_samples: int, fs: int | None, where: str) -> None:
    """At most MAX_SECONDS of signal (at the highest accepted rate while the rate is not known yet)."""
    limit = MAX_SECONDS * (fs or MAX_RATE)
    if n_samples > limit:
        length = f"{n_samples / fs:.0f} s" if fs else f"{n_samples} samples"
        raise UploadError(
            f"{where}: {length} of signal is too long; the limit is {MAX_SECONDS:g} s "
            f"({int(limit)} samples at {fs or MAX_RATE} Hz); send only the first seconds of the record",
            status=413,
        )


def check_array_header(fileobj: Any, where: str) -> tuple[int, ...]:
    """The shape in a .npy header, checked (12 leads, at most MAX_SECONDS at MAX_RATE) before the data is read."""
    from numpy.lib import format as npy_format

    try:
        major, _ = npy_format.read_magic(fileobj)
        read = npy_format.read_array_header_1_0 if major == 1 else npy_format.read_array_header_2_0
        shape, _, dtype = read(fileobj, max_header_size=2048)
    except Exception as e:  # noqa: BLE001 - numpy raises ValueError/OSError/EOFError/… for junk
        raise UploadError(f"{where}: not a readable .npy array ({type(e).__name__})") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise UploadError(f"{where}: expected a numeric array, got {dtype}")
    if len(shape) != 2 or shape[0] != len(LEADS):
        hint = " (it looks transposed: save array.T)" if len(shape) == 2 and shape[1] == len(LEADS) else ""
        raise UploadError(
            f"{where}: wrong lead count: expected shape (12, T) with rows in lead order {', '.join(LEADS)}; "
            f"got shape {tuple(shape)}{hint}"
        )
    check_duration(int(shape[1]), None, where)
    return tuple(shape)


def _load_array(name: str, data: bytes, rate: float | None) -> UploadedECG:
    if not data.startswith(b"PK"):  # a .npy (a .npz is a zip file): check its header before loading it
        check_array_header(io.BytesIO(data), name)
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy raises ValueError/OSError/EOFError/… for junk
        raise UploadError(f"{name}: not a readable .npy/.npz file ({type(e).__name__})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            members = loaded.zip.infolist()
            if len(members) > MAX_NPZ_MEMBERS:
                raise UploadError(
                    f"{name}: the .npz holds {len(members)} arrays; send one (12, T) array named "
                    "'signal' (and optionally its rate as 'fs')"
                )
            inflated = sum(info.file_size for info in loaded.zip.infolist())
            if inflated > MAX_NPZ_BYTES:
                raise UploadError(
                    f"{name}: the .npz decompresses to {inflated} bytes; the limit is {MAX_NPZ_BYTES / 2**20:g} MB",
                    status=413,
                )
            keys = list(loaded.files)
            arrays = [k for k in keys if k not in _RATE_KEYS]
            key = "signal" if "signal" in keys else (arrays[0] if len(arrays) == 1 else None)
            if key is None:
                raise UploadError(f"{name}: .npz holds {keys}; name the (12, T) array 'signal'")
            try:
                with loaded.zip.open(f"{key}.npy") as member:
                    shape = check_array_header(member, name)
                if rate is None:
                    rate_key = next((k for k in _RATE_KEYS if k in keys), None)
                    if rate_key is not None:
                        r = loaded[rate_key]
                        rate = r.item() if r.size == 1 and r.dtype.kind in "biuf" else str(r)
                check_duration(shape[1], check_rate(rate, name), name)
                array = loaded[key]
            except UploadError:
                raise
            except Exception as e:  # noqa: BLE001 - a corrupt member can raise anything zipfile/numpy has
                raise UploadError(f"{name}: unreadable array in .npz ({type(e).__name__})") from None
    else:
        array = loaded
    fs = check_rate(rate, name)
    check_duration(array.shape[1], fs, name)
    return UploadedECG(name, check_signal(array, fs, name), fs)


def check_header(header: str, text: bytes, uploaded: set[str]) -> int:
    """Size, signal count, sampling rate and signal file names of an uploaded WFDB header, before wfdb.

    Returns the sampling rate (checked like a ``.npy`` rate: a whole number in range; wfdb would
    silently default a missing or negative rate to 250 Hz and round 499.5 to 500).
    """
    if len(text) > MAX_HEADER_BYTES:
        raise UploadError(
            f"{header}: {len(text)} bytes is too large for a 12-lead WFDB header (limit {MAX_HEADER_BYTES // 1024} kB)",
            status=413,
        )
    lines = [ln.strip() for ln in text.decode("latin-1").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise UploadError(f"{header}: unreadable WFDB header (no record line)")
    fields = lines[0].split()
    if len(fields) < 2 or "/" in fields[0]:
        raise UploadError(f"{header}: unreadable WFDB header, or a multi-segment record (not supported)")
    try:
        n_sig = int(fields[1])
    except ValueError:
        raise UploadError(f"{header}: unreadable WFDB header (signal count {fields[1][:20]!r})") from None
    if not 1 <= n_sig <= MAX_SIGNALS or len(lines) - 1 > MAX_SIGNALS:
        raise UploadError(
            f"{header}: {max(n_sig, len(lines) - 1)} signals; a 12-lead ECG header has at most {MAX_SIGNALS}"
        )
    if len(lines) - 1 != n_sig:
        raise UploadError(
            f"{header}: the record line announces {n_sig} signals but {len(lines) - 1} signal lines follow"
        )
    if len(fields) < 3:
        raise UploadError(f"{header}: the header gives no sampling rate")
    rate_text = fields[2].split("/")[0]
    try:
        rate = float(rate_text)
    except ValueError:
        raise UploadError(f"{header}: sampling rate {rate_text[:20]!r} is not a number") from None
    fs = check_rate(rate, header)
    if len(fields) > 3 and fields[3].isdecimal() and fields[3].isascii():
        check_duration(int(fields[3]), fs, header)  # the record line's sample count, before wfdb reads it
    for line in lines[1:]:
        fname = line.split()[0]
        # The header must name uploaded files only: never let it point at a file of the server's.
        if fname not in uploaded:
            raise UploadError(f"{header} names the signal file {fname[:80]!r}; upload that file alongside the header")
    return fs


def _load_wfdb(header: str, files: dict[str, bytes]) -> UploadedECG:
    from ecgqa.data.records import RecordError, read_record

    fs = check_header(header, files[header], set(files))
    stem = header[: -len(".hea")]
    with tempfile.TemporaryDirectory(prefix="ecgqa-upload-") as tmp:
        for fname, data in files.items():
            (Path(tmp) / fname).write_bytes(data)
        path = Path(tmp) / stem
        try:
            rec = read_record(path)
        except RecordError as e:
            # Say which upload is at fault without revealing the server's temporary folder.
            raise UploadError(str(e).replace(str(path.parent) + "/", "").replace(str(path), stem)) from None
        except Exception as e:  # noqa: BLE001 - and for bad signal files
            raise UploadError(f"{header}: unreadable WFDB record ({type(e).__name__})") from None
    check_duration(rec.signal.shape[1], fs, header)
    return UploadedECG(stem, check_signal(rec.signal, fs, header), fs)


def parse_upload(files: list[tuple[str, bytes]], rate: float | None = None) -> list[UploadedECG]:
    """One or two ECGs from the uploaded (filename, content) pairs, in upload order."""
    if not files:
        raise UploadError("no file uploaded; send a WFDB .hea + .dat pair or a .npy/.npz array")
    by_name: dict[str, bytes] = {}
    for fname, data in files:
        base = Path((fname or "").replace("\\", "/")).name
        if not _SAFE_NAME.match(base):
            raise UploadError(f"file name {fname!r} not allowed; use letters, digits, '.', '_' and '-'")
        if base in by_name:
            raise UploadError(f"file {base} uploaded twice")
        by_name[base] = data
    headers = [n for n in by_name if n.lower().endswith(".hea")]
    arrays = [n for n in by_name if n.lower().endswith((".npy", ".npz"))]
    if headers and arrays:
        raise UploadError("upload either WFDB records or .npy/.npz arrays, not both")
    if not headers and not arrays:
        raise UploadError(
            f"unsupported file type(s) {sorted(by_name)}; upload a WFDB .hea + .dat pair or a .npy/.npz array"
        )
    n = len(headers) or len(arrays)
    if n > MAX_ECGS:
        raise UploadError(f"{n} ECGs uploaded; a question is about one ECG, or two for comparison questions")
    if arrays:
        return [_load_array(name, by_name[name], rate) for name in arrays]
    return [_load_wfdb(h, by_name) for h in headers]
