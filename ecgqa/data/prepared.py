"""Everything about a prepared directory (the contract between ``ecgqa prepare`` and its readers).

Layout, named only here::

    PREPARED/meta.json       PreparedMeta (format, version, variant, task, classes, rate, signal_length, ...)
                             written last: its presence marks the directory complete
    PREPARED/signals.npy     (N, 12, T) float16, LEADS order, mV
    PREPARED/ecg_ids.npy     (N,) int64: row → source ecg id
    PREPARED/questions/<split>/   one HF ``datasets`` table per split (save_to_disk)
    PREPARED/tokenizer/      the question tokenizer (task qa): BERT's uncased WordPiece by default
    PREPARED/dropped.json    what --drop-bad removed (only when something was)

``PreparedData`` reads it (training, evaluation, llm-eval, serve); ``ecgqa/data/prepare.py`` writes it
through the writer functions below. A reader of an older ``format`` is told to re-run prepare.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
from datasets.arrow_writer import ArrowWriter
from pydantic import BaseModel, ConfigDict, ValidationError
from transformers import PreTrainedTokenizerFast

from ecgqa.files import atomic_write, atomic_write_json, claim_output_dir

#: Bumped whenever the layout or the meta schema changes; readers refuse other formats.
FORMAT_VERSION = 2

META = "meta.json"
SIGNALS = "signals.npy"
ECG_IDS = "ecg_ids.npy"
QUESTIONS = "questions"
TOKENIZER = "tokenizer"
DROPPED = "dropped.json"
#: Written beside ``out`` (``<out>.bad_records.json``) when bad records stop a build.
BAD_RECORDS_SUFFIX = ".bad_records.json"


class PreparedDataError(ValueError):
    """Not a (complete, current) prepared directory; the message says what to do."""


class TokenizerInfo(BaseModel):
    """Which question tokenizer a qa directory holds (a checkpoint must use the same one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["bert-base-uncased", "trained"]
    vocab_size: int
    #: SHA-256 of the vocabulary (one token a line, in id order): equal hashes ⇔ equal token ids.
    vocab_sha256: str


class PreparedMeta(BaseModel):
    """``meta.json``: what was built from what, with which options (format ``FORMAT_VERSION``)."""

    model_config = ConfigDict(extra="forbid")

    format: int = FORMAT_VERSION
    version: str
    variant: str
    task: str
    #: The model's output classes: answer classes (qa) or grounding classes (upperbound).
    classes: list[str]
    answer_classes: list[str]
    grounding_classes: list[str] | None = None
    attributes: list[str]
    rate: int
    signal_length: int
    n_ecgs: int
    splits: dict[str, int]
    sources: list[dict[str, Any]]
    content_hash: str
    records_fingerprint: str
    dropped: dict[str, Any]
    length_adjusted: int
    tokenizer: TokenizerInfo | None = None
    #: Task-specific statistics (``TaskBuilder.stats()``, e.g. the upperbound conversion counts per split).
    task_stats: dict[str, Any] | None = None

    def to_json(self) -> str:
        """Stable bytes: same meta → same file (no timings, no absolute temp paths)."""
        return json.dumps(self.model_dump(exclude_none=True), indent=1) + "\n"


def read_meta(path: str | Path) -> PreparedMeta:
    """The meta of a prepared directory; PreparedDataError when absent, unreadable or of another format."""
    path = Path(path)
    meta_path = path / META
    if not meta_path.is_file():
        raise PreparedDataError(
            f"{path} is not a complete prepared directory (no {META}); run `ecgqa prepare ... --out {path}`"
        )
    try:
        raw = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise PreparedDataError(f"{meta_path}: unreadable ({e}); re-run `ecgqa prepare --force --out {path}`") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_VERSION:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise PreparedDataError(
            f"{path} was prepared in format {found}, this version reads format {FORMAT_VERSION}; "
            f"re-run `ecgqa prepare --force --out {path}` with the same options"
        )
    try:
        return PreparedMeta.model_validate(raw)
    except ValidationError as e:
        raise PreparedDataError(f"{meta_path}: not a valid prepared meta ({e.error_count()} errors: {e})") from e


def default_split(path: str | Path, preferred: str = "test") -> tuple[str, str | None]:
    """(split to read, why it is not ``preferred`` or None): ``preferred`` when ``path`` has it, else the held-out
    split it has (``valid``; the bundled sample has no ``test``), else its only split; ``preferred`` otherwise
    (the reader then names the splits there are)."""
    splits = list(read_meta(path).splits)
    if preferred in splits:
        return preferred, None
    usual = [s for s in ("train", "valid", "test") if s in splits]
    chosen = "valid" if "valid" in splits else usual[0] if len(usual) == 1 else splits[0] if len(splits) == 1 else None
    if chosen is None:
        return preferred, None
    return chosen, f"{path} has no {preferred!r} split (it holds {', '.join(splits)}): using {chosen!r}"


def is_prepared(path: str | Path) -> bool:
    """Whether ``path`` holds a complete prepared directory of the current format."""
    try:
        read_meta(path)
    except PreparedDataError:
        return False
    return True


def _meta_is_ours(meta_path: Path) -> bool:
    """A ``meta.json`` written by ``ecgqa prepare`` (any format): a JSON object with its content hash."""
    try:
        raw = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and "content_hash" in raw and "task" in raw


def claim(out: str | Path) -> Path:
    """Refuse an ``--out`` that is not absent, empty or a prepared directory (see ``files.claim_output_dir``)."""
    return claim_output_dir(out, marker=META, what="prepared directory", is_ours=_meta_is_ours)


# -------------------------------------------------------------------------------------------- reader


class PreparedData:
    """A prepared directory: meta, the signal store (read-only memmap), questions per split, tokenizer.

    Opens the store lazily and read-only; pickling (DataLoader workers) never carries the memmap.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.info: PreparedMeta = read_meta(self.path)
        self.meta: dict[str, Any] = self.info.model_dump(exclude_none=True)  # = the meta.json object
        for name in (SIGNALS, ECG_IDS):
            if not (self.path / name).is_file():
                raise PreparedDataError(f"{self.path / name} missing: re-run `ecgqa prepare --force --out {self.path}`")
        self._signals: np.ndarray | None = None

    def __repr__(self) -> str:
        m = self.info
        return f"PreparedData({str(self.path)!r}, {m.task} {m.version}/{m.variant}, splits={m.splits})"

    def __getstate__(self) -> dict[str, Any]:
        # Never pickle the memmap (a pickled memmap carries its data): workers re-open the file.
        state = self.__dict__.copy()
        state["_signals"] = None
        state.pop("_splits_cache", None)
        return state

    @property
    def task(self) -> str:
        return self.info.task

    @property
    def classes(self) -> list[str]:
        return list(self.info.classes)

    @property
    def rate(self) -> int:
        """Sample rate of the stored signals (Hz)."""
        return self.info.rate

    @property
    def signal_length(self) -> int:
        """Samples per stored signal (T)."""
        return self.info.signal_length

    @property
    def signals(self) -> np.ndarray:
        """(N, 12, T) float16, read-only memmap."""
        if self._signals is None:
            self._signals = np.load(self.path / SIGNALS, mmap_mode="r")
        return self._signals

    @cached_property
    def ecg_ids(self) -> np.ndarray:
        return np.load(self.path / ECG_IDS)

    @cached_property
    def _row_index(self) -> dict[int, int]:
        return {int(e): r for r, e in enumerate(self.ecg_ids)}

    def row_of(self, ecg_id: int) -> int:
        """Store row of a source ecg id (KeyError names the id and the directory)."""
        try:
            return self._row_index[int(ecg_id)]
        except KeyError:
            raise KeyError(f"ecg id {ecg_id} is not in the signal store of {self.path}") from None

    @property
    def splits(self) -> list[str]:
        return list(self.info.splits)

    def split(self, name: str):
        """The questions table of a split as a memory-mapped ``datasets.Dataset``."""
        cache = self.__dict__.setdefault("_splits_cache", {})
        if name not in cache:
            folder = self.path / QUESTIONS / name
            if not folder.is_dir():
                raise PreparedDataError(f"{self.path}: no split {name!r}; available: {self.splits}")
            cache[name] = datasets.load_from_disk(str(folder))
        return cache[name]

    @cached_property
    def tokenizer(self):
        """The question tokenizer stored at prepare time (a ``PreTrainedTokenizerFast``; see ``.info.tokenizer``)."""
        folder = self.path / TOKENIZER
        if not folder.is_dir():
            raise PreparedDataError(f"{self.path}: no {TOKENIZER}/ (only --task qa writes one)")
        return PreTrainedTokenizerFast.from_pretrained(str(folder))


# -------------------------------------------------------------------------------------------- writer
# Used by ecgqa/data/prepare.py, always inside a staging folder that is swapped into place at the end.


class SignalStoreWriter:
    """Streams (12, T) float16 rows front to back into ``SIGNALS`` after its ``.npy`` header.

    Rows are written in order, so no memmap pages pile up in RAM. A row that turns out bad gets a
    zero placeholder (``skip``) and ``compact`` removes those rows afterwards.
    """

    def __init__(self, build: Path, n_rows: int, length: int) -> None:
        self.path = Path(build) / SIGNALS
        self.length = length
        self._file = self.path.open("wb")
        header = {
            "descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
            "fortran_order": False,
            "shape": (n_rows, 12, length),
        }
        np.lib.format.write_array_header_1_0(self._file, header)

    def append(self, row: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(row, dtype=np.float16).tobytes())

    def skip(self) -> None:
        self._file.write(bytes(12 * self.length * 2))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SignalStoreWriter:  # noqa: PYI034 - a final class
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def compact(self, keep: np.ndarray, chunk: int = 256) -> None:
        """Rewrite the store without the rows where ``keep`` is False, a chunk at a time."""
        src = np.load(self.path, mmap_mode="r")
        tmp = self.path.with_name(".compact.npy")
        header = {
            "descr": np.lib.format.dtype_to_descr(src.dtype),
            "fortran_order": False,
            "shape": (int(keep.sum()),) + src.shape[1:],
        }
        rows = np.flatnonzero(keep)
        with tmp.open("wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            for start in range(0, len(rows), chunk):
                f.write(np.ascontiguousarray(src[rows[start : start + chunk]]).tobytes())
        del src
        os.replace(tmp, self.path)


def write_ecg_ids(build: Path, ids: np.ndarray) -> None:
    np.save(Path(build) / ECG_IDS, np.asarray(ids, dtype=np.int64))


def write_questions(build: Path, split: str, rows: Iterator[dict[str, Any]], features: Any, fingerprint: str) -> int:
    """Stream rows into ``QUESTIONS/<split>`` (bounded memory); returns the row count.

    Rows go through ``datasets``' ArrowWriter in batches into one staging file, which
    ``save_to_disk`` then lays out in the standard format. The dataset fingerprint is given
    (derived from the content hash), so the files are the same bytes on every run.
    """
    build = Path(build)
    staging = build / f".{split}.arrow"
    with ArrowWriter(features=features, path=str(staging), writer_batch_size=10_000) as writer:
        for row in rows:
            writer.write(row)
        writer.finalize()
    ds = datasets.Dataset.from_file(str(staging))
    ds._fingerprint = fingerprint
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        ds.save_to_disk(str(build / QUESTIONS / split))
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
    n = len(ds)
    del ds
    staging.unlink()
    return n


def question_texts(build: Path, split: str, batch: int = 10_000) -> Iterator[list[str]]:
    """The question strings of one split already written into ``build``, in batches."""
    ds = datasets.load_from_disk(str(Path(build) / QUESTIONS / split))
    for start in range(0, len(ds), batch):
        yield ds[start : start + batch]["question"]


def write_tokenizer(build: Path, tokenizer: Any) -> None:
    """Save the question tokenizer (a ``PreTrainedTokenizerFast``) into ``TOKENIZER/``."""
    tokenizer.save_pretrained(str(Path(build) / TOKENIZER))


def write_dropped(build: Path, dropped: dict[str, Any]) -> None:
    atomic_write_json(Path(build) / DROPPED, dropped)


def write_meta(build: Path, meta: PreparedMeta) -> None:
    """Write ``META`` — last, since its presence marks the directory complete."""
    atomic_write(Path(build) / META, meta.to_json())


def bad_records_path(out: str | Path) -> Path:
    """Where the full list of bad records goes when they stop a build (beside ``out``)."""
    out = Path(out)
    return out.parent / f"{out.name}{BAD_RECORDS_SUFFIX}"


__all__ = [
    "default_split",
    "BAD_RECORDS_SUFFIX",
    "DROPPED",
    "ECG_IDS",
    "FORMAT_VERSION",
    "META",
    "QUESTIONS",
    "SIGNALS",
    "TOKENIZER",
    "PreparedData",
    "PreparedDataError",
    "PreparedMeta",
    "SignalStoreWriter",
    "TokenizerInfo",
    "bad_records_path",
    "claim",
    "is_prepared",
    "question_texts",
    "read_meta",
    "write_dropped",
    "write_ecg_ids",
    "write_meta",
    "write_questions",
    "write_tokenizer",
]
