"""Turn uploaded files into (12, T) signals, or a 4xx message saying what is wrong with them.

Accepted: a WFDB record (its ``.hea`` header plus the signal file(s) the header names), or a
``.npy`` / ``.npz`` array of shape (12, T) in mV and LEADS order with its sampling rate. Nothing
here ever opens a path the client chose: WFDB files are written under sanitised names into a
private temporary folder and read back with :func:`ecgqa.records.read_record`.
"""

from __future__ import annotations

import io
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgqa.constants import LEADS

MIN_RATE, MAX_RATE = 100, 2000  # Hz: what a diagnostic 12-lead ECG is sampled at in practice
MIN_SECONDS = 2.0
MAX_ECGS = 2
#: Decompressed size allowed for one .npz (12 leads x 2000 Hz x 2 min of float64 is 23 MB): a few MB of
#: compressed zeros would otherwise inflate to gigabytes in memory, past the upload limit.
MAX_NPZ_BYTES = 32 * 2**20
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
    signal = array.astype(np.float32)
    bad = ~np.isfinite(signal).all(axis=1)
    if bad.any():
        raise UploadError(f"{where}: NaN or infinite values in leads {[LEADS[i] for i in np.flatnonzero(bad)]}")
    if signal.shape[1] < MIN_SECONDS * fs:
        raise UploadError(f"{where}: only {signal.shape[1] / fs:.2f} s of signal; need at least {MIN_SECONDS:g} s")
    return signal


def _load_array(name: str, data: bytes, rate: float | None) -> UploadedECG:
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy raises ValueError/OSError/EOFError/… for junk
        raise UploadError(f"{name}: not a readable .npy/.npz file ({type(e).__name__})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            inflated = sum(info.file_size for info in loaded.zip.infolist())
            if inflated > MAX_NPZ_BYTES:
                raise UploadError(f"{name}: the .npz decompresses to {inflated} bytes; the limit is "
                                  f"{MAX_NPZ_BYTES / 2**20:g} MB", status=413)
            keys = list(loaded.files)
            arrays = [k for k in keys if k not in _RATE_KEYS]
            key = "signal" if "signal" in keys else (arrays[0] if len(arrays) == 1 else None)
            if key is None:
                raise UploadError(f"{name}: .npz holds {keys}; name the (12, T) array 'signal'")
            try:
                array = loaded[key]
                if rate is None:
                    rate_key = next((k for k in _RATE_KEYS if k in keys), None)
                    if rate_key is not None:
                        r = loaded[rate_key]
                        rate = r.item() if r.size == 1 and r.dtype.kind in "biuf" else str(r)
            except Exception as e:  # noqa: BLE001 - a corrupt member can raise anything zipfile/numpy has
                raise UploadError(f"{name}: unreadable array in .npz ({type(e).__name__})") from None
    else:
        array = loaded
    fs = check_rate(rate, name)
    return UploadedECG(name, check_signal(array, fs, name), fs)


def _load_wfdb(header: str, files: dict[str, bytes]) -> UploadedECG:
    import wfdb

    from ecgqa.records import RecordError, read_record

    stem = header[: -len(".hea")]
    with tempfile.TemporaryDirectory(prefix="ecgqa-upload-") as tmp:
        for fname, data in files.items():
            (Path(tmp) / fname).write_bytes(data)
        path = Path(tmp) / stem
        try:
            head = wfdb.rdheader(str(path))
        except Exception as e:  # noqa: BLE001 - wfdb raises many types for bad headers
            raise UploadError(f"{header}: unreadable WFDB header ({type(e).__name__})") from None
        if isinstance(head, wfdb.MultiRecord) or not head.file_name:
            raise UploadError(f"{header}: multi-segment or signal-less WFDB records are not supported")
        for fname in dict.fromkeys(head.file_name):
            # The header must name uploaded files only: never let it point at a file of the server's.
            if fname not in files:
                raise UploadError(f"{header} names the signal file {fname!r}; upload that file alongside the header")
        try:
            rec = read_record(path)
        except RecordError as e:
            # Say which upload is at fault without revealing the server's temporary folder.
            raise UploadError(str(e).replace(str(path.parent) + "/", "").replace(str(path), stem)) from None
        except Exception as e:  # noqa: BLE001 - and for bad signal files
            raise UploadError(f"{header}: unreadable WFDB record ({type(e).__name__})") from None
    fs = check_rate(rec.fs, header)
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
