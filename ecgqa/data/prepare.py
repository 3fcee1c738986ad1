"""``ecgqa prepare`` (library side): mapped ECG-QA samples → a prepared directory.

Replaces the upstream preprocessing, which wrote one ``.mat`` per QA sample and re-read every ECG
once per sample. Here every unique ECG is read once (in parallel with ``num_proc``), resampled to
``rate`` and streamed into one float16 signal store, so memory stays bounded at any scale. The
layout of the result is ``ecgqa/data/prepared.py``'s business; this module only decides what goes in.

The stage, step by step (``prepare``)::

    check_options → read_inputs → content_hash → (up to date? stop) → claim --out
    → scan_questions → store_signals → handle_bad_records → write_question_tables
    → build_tokenizer → write meta last → swap the build into place

Safety: everything is built in a sibling ``.NAME.build-PID`` folder and swapped into place at the
end, so a crash never leaves a half-written directory under the final name, and ``--out`` is only
replaced when it is empty or a prepared directory (``prepared.claim``). The same inputs and options
give the same bytes, and a re-run finds the same content hash and does nothing.

Tasks are a table (``TASKS``): each entry says which samples a task keeps, which ECGs it stores and
the rows of its questions tables. See ``TaskBuilder`` for how to add one.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from datasets import Features, List, Value
from tqdm.auto import tqdm

from ecgqa.data import attributes, prepared
from ecgqa.data.attributes import (
    NUM_PROC_RANGE,
    AttributesError,
    Statements,
    derive,
    measure_record,
    num_proc_ok,
    read_metadata,
)
from ecgqa.data.constants import DEFAULT_RATE, DEFAULT_SECONDS, TOKENIZERS
from ecgqa.data.prepared import PreparedMeta, TokenizerInfo
from ecgqa.data.records import RecordError, fit_length, read_record, record_files
from ecgqa.data.release import SPLITS, AnswerSpace, ReleaseError, encode_sample, load_shard, shards
from ecgqa.data.upperbound_labels import (
    UpperboundBuilder,
    UpperboundError,
    bundled_grounding_classes,
    read_grounding_classes,
)
from ecgqa.data.vocab import bert_tokenizer, tokenizer_info, train_wordpiece
from ecgqa.files import atomic_write_json, recover_output, sha256_file, staging_dir, swap_dir

MAX_LISTED = 20
#: Accepted option ranges: an ECG below 50 Hz loses its QRS complexes; a store is one fixed window.
RATE_RANGE = (50, 10_000)
SECONDS_RANGE = (1.0, 120.0)


class PrepareError(RuntimeError):
    """Bad records, options or inputs; the message names them and says what to do."""


# ------------------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class Options:
    """The options that decide the content of a prepared directory (all go into its content hash)."""

    variant: str
    splits: list[str]
    rate: int
    seconds: float
    task: str
    drop_bad: bool
    version: str
    tokenizer: str

    @property
    def length(self) -> int:
        return round(self.rate * self.seconds)

    def hashed(self) -> dict[str, Any]:
        return {
            "format": prepared.FORMAT_VERSION,
            "version": self.version,
            "variant": self.variant,
            "task": self.task,
            "splits": self.splits,
            "rate": self.rate,
            "signal_length": self.length,
            "drop_bad": self.drop_bad,
            **({"tokenizer": self.tokenizer} if TASKS[self.task].uses_tokenizer else {}),
        }


def check_options(*, rate: Any, seconds: Any, num_proc: Any, task: str, variant: str, tokenizer: str) -> None:
    """One clear line for an option out of range (``--rate 7``, ``--seconds nan``, ``--num-proc 0``, ...)."""
    if task not in TASKS:
        raise PrepareError(f"--task must be one of {list(TASKS)}, not {task!r}")
    if TASKS[task].template_only and variant != "template":
        raise PrepareError(f"--task {task} converts template questions only; use --variant template")
    if tokenizer not in TOKENIZERS:
        raise PrepareError(f"--tokenizer must be one of {list(TOKENIZERS)}, not {tokenizer!r}")
    if isinstance(rate, bool) or not isinstance(rate, int) or not RATE_RANGE[0] <= rate <= RATE_RANGE[1]:
        raise PrepareError(
            f"--rate {rate}: give a sample rate in Hz between {RATE_RANGE[0]} and {RATE_RANGE[1]} "
            "(e.g. 500, or 100 for PTB-XL's low-rate records)"
        )
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or not SECONDS_RANGE[0] <= seconds <= SECONDS_RANGE[1]
    ):
        raise PrepareError(
            f"--seconds {seconds}: give a signal length between {SECONDS_RANGE[0]:g} and "
            f"{SECONDS_RANGE[1]:g} seconds (ECG-QA records are 10 s)"
        )
    if not num_proc_ok(num_proc):
        raise PrepareError(
            f"--num-proc {num_proc}: give a number of record readers between {NUM_PROC_RANGE[0]} "
            f"and {NUM_PROC_RANGE[1]} (1 reads in this process)"
        )


# ------------------------------------------------------------------------------------------- inputs


def detect_version(mapped: Path) -> str:
    """The release version of a mapped folder: its mapping report, else the size of its answer space."""
    report = Path(mapped) / "mapping_report.json"
    if report.is_file():
        version = json.loads(report.read_text()).get("version")
        if version:
            return version
    answers = Path(mapped) / "answers.csv"
    if answers.is_file():
        n = sum(1 for _ in answers.open()) - 2  # header and "none"
        version = {103: "ptbxl", 187: "mimic-iv-ecg"}.get(n)
        if version is None:
            raise PrepareError(
                f"{answers}: {n} answer classes match neither PTB-XL (103) nor MIMIC-IV-ECG (187); pass --version"
            )
        return version
    raise PrepareError(
        f"{mapped}: cannot tell the ECG-QA version (no mapping_report.json or answers.csv); pass --version"
    )


@dataclass
class Inputs:
    """What a build reads: the mapped folder's shards, answer space and the files they come from."""

    mapped: Path
    shard_list: list[tuple[str, Path]]  # (split, shard) for every split present, in a stable order
    space: AnswerSpace
    sources: list[dict[str, Any]]
    grounding_classes: list[str] = field(default_factory=list)
    metadata: Path | None = None  # the source database's metadata table (--task attributes)

    def shards_of(self, split: str) -> list[Path]:
        return [p for s, p in self.shard_list if s == split]


def _source(path: Path, root: Path | None) -> dict[str, Any]:
    name = path.relative_to(root).as_posix() if root is not None else str(path.resolve())
    return {"path": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def read_inputs(
    mapped: Path, opts: Options, grounding_classes: str | Path | None, metadata: str | Path | None = None
) -> Inputs:
    """Check the mapped folder has what the options ask for, and describe every source file."""
    if not (mapped / opts.variant).is_dir():
        raise PrepareError(
            f"{mapped}: no {opts.variant}/ folder; expected the output of `ecgqa map` "
            f"(holding {opts.variant}/<split>/*.json)"
        )
    present = [s for s in SPLITS if (mapped / opts.variant / s).is_dir()]
    missing = [s for s in opts.splits if s not in present]
    if missing:
        raise PrepareError(f"{mapped / opts.variant}: no split folder for {missing}; present: {present}")
    shard_list = [(split, path) for split in present for path in shards(mapped, (opts.variant,), (split,))]
    for split in opts.splits:
        if not any(s == split for s, _ in shard_list):
            raise PrepareError(
                f"{mapped / opts.variant / split}: no question shards (*.json) for split {split!r}; "
                "leave it out of --splits or re-run `ecgqa map`"
            )
    space = AnswerSpace.from_release(mapped)
    sources = [_source(mapped / name, mapped) for name in ("answers.csv", "answers_for_each_template.csv")]
    sources += [_source(p, mapped) for _, p in shard_list]
    inputs = Inputs(mapped, shard_list, space, sources, metadata=Path(metadata) if metadata else None)
    TASKS[opts.task].add_inputs(inputs, opts, grounding_classes)
    return inputs


def content_hash(opts: Options, inputs: Inputs) -> str:
    """Options and source files (by hash) decide the content: same hash → nothing to rebuild."""
    return hashlib.sha256(json.dumps([opts.hashed(), inputs.sources], sort_keys=True).encode()).hexdigest()


def records_fingerprint(paths: Iterable[str]) -> str:
    """Size and mtime of each record's header and signal file: cheap (two stats a record), and it
    changes when a record is repaired or replaced, which hashing the release files alone would miss."""
    h = hashlib.sha256()
    for path in sorted(set(paths)):
        for f in record_files(Path(path)):
            try:
                st = f.stat()
                h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except FileNotFoundError:
                h.update(f"{f}\0missing\n".encode())
    return h.hexdigest()


def _record_paths(inputs: Inputs, splits: Iterable[str]) -> list[str]:
    """The record path of every ECG the selected splits' questions use (first path per id, as the scan)."""
    out: dict[int, str] = {}
    for split, shard in inputs.shard_list:
        if split in splits:
            for sample in load_shard(shard):
                for i, p in zip(sample["ecg_id"], sample.get("ecg_path") or [], strict=False):
                    out.setdefault(i, p)
    return list(out.values())


def up_to_date(out: Path, digest: str, inputs: Inputs, opts: Options) -> dict[str, Any] | None:
    """The existing meta when ``out`` already holds this build (same content hash and records)."""
    try:
        old = prepared.read_meta(out)
    except prepared.PreparedDataError:
        return None
    # Record files are inputs too: a repaired or replaced record (size / mtime) means a rebuild.
    if old.content_hash == digest and old.records_fingerprint == records_fingerprint(
        _record_paths(inputs, opts.splits)
    ):
        return old.model_dump()
    return None


# -------------------------------------------------------------------------------------------- tasks


class TaskBuilder:
    """One ``--task``: which samples it keeps, which ECGs it stores and the rows of its tables.

    Adding a task is one subclass and one ``TASKS`` entry: set ``name``, give ``features()`` (the
    Arrow schema of its questions table) and ``rows()`` (one dict per table row; ``row_of`` maps an
    ecg id to its store row, and ids of samples whose ECGs were dropped go into ``lost``). A task
    that converts questions overrides ``add`` (called once per selected sample during the scan),
    ``wanted_ecgs`` (which scanned ECGs it stores), ``classes`` and ``stats`` — see UpperboundTask.
    """

    name: ClassVar[str] = ""
    #: the task readers see in meta.json (None: ``name``); "attributes" writes upperbound-compatible data
    prepared_task: ClassVar[str | None] = None
    template_only: ClassVar[bool] = False
    uses_tokenizer: ClassVar[bool] = False

    def __init__(self, inputs: Inputs, opts: Options, attributes: list[str]) -> None:
        self.inputs, self.opts, self.attributes = inputs, opts, attributes

    @classmethod
    def add_inputs(cls, inputs: Inputs, opts: Options, extra: str | Path | None) -> None:
        """Read task-specific input files into ``inputs`` (and its ``sources``); none by default."""

    def classes(self) -> list[str]:
        return list(self.inputs.space.classes)

    def add(self, split: str, shard: Path, sample: dict[str, Any]) -> None:
        """See one selected sample during the scan (before any ECG is read)."""

    def wanted_ecgs(self, ecg_ids: set[int]) -> set[int]:
        return ecg_ids

    def features(self) -> Any:
        raise NotImplementedError

    def rows(self, split: str, row_of: dict[int, int], lost: list[int]) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def stats(self) -> dict[str, Any] | None:
        return None


class QATask(TaskBuilder):
    """ECG-QA question answering: every sample, its answer / valid classes and its ECG rows."""

    name = "qa"
    uses_tokenizer = True

    def features(self) -> Any:
        ints = List(Value("int64"))
        return Features(
            {
                "sample_id": Value("int64"),
                "template_id": Value("int64"),
                "question_id": Value("int64"),
                "question": Value("string"),
                "question_type": Value("string"),
                "attribute_type": Value("string"),
                "answer": ints,
                "valid_classes": ints,
                "qt1": Value("int64"),
                "qt2": Value("int64"),
                "qt3": Value("int64"),
                "ecg_id": ints,
                "ecg_rows": ints,
                "attribute": List(Value("string")),
                "attribute_ids": ints,
            }
        )

    def rows(self, split: str, row_of: dict[int, int], lost: list[int]) -> Iterator[dict[str, Any]]:
        attr_id = {a: i for i, a in enumerate(self.attributes)}
        for shard in self.inputs.shards_of(split):
            for sample in load_shard(shard):
                ids = sample["ecg_id"]
                if any(i not in row_of for i in ids):
                    lost.append(sample["sample_id"])
                    continue
                enc = encode_sample(self.inputs.space, sample, where=f"{shard}: sample {sample['sample_id']}: ")
                attrs = list(sample.get("attribute") or [])
                yield {
                    "sample_id": sample["sample_id"],
                    "template_id": sample["template_id"],
                    "question_id": sample["question_id"],
                    "question": sample["question"],
                    "question_type": sample["question_type"],
                    "attribute_type": sample["attribute_type"],
                    **enc,
                    "ecg_id": ids,
                    "ecg_rows": [row_of[i] for i in ids],
                    "attribute": attrs,
                    "attribute_ids": [attr_id[a] for a in attrs],
                }


class UpperboundTask(TaskBuilder):
    """Attribute classification per (ECG, lead subset): template questions converted to grounding labels."""

    name = "upperbound"
    template_only = True

    def __init__(self, inputs: Inputs, opts: Options, attributes: list[str]) -> None:
        super().__init__(inputs, opts, attributes)
        self.builders = {s: UpperboundBuilder(inputs.grounding_classes, s) for s in opts.splits}

    @classmethod
    def add_inputs(cls, inputs: Inputs, opts: Options, extra: str | Path | None) -> None:
        path = Path(extra) if extra else bundled_grounding_classes(opts.version)
        inputs.grounding_classes = read_grounding_classes(path)
        inputs.sources.append(_source(path, None))

    def classes(self) -> list[str]:
        return list(self.inputs.grounding_classes)

    def add(self, split: str, shard: Path, sample: dict[str, Any]) -> None:
        try:
            self.builders[split].add(sample)
        except UpperboundError as e:
            raise PrepareError(f"{shard}: {e}") from e

    def wanted_ecgs(self, ecg_ids: set[int]) -> set[int]:
        wanted = set().union(*(b.ecg_ids() for b in self.builders.values()))
        return ecg_ids & wanted

    def features(self) -> Any:
        ints = List(Value("int64"))
        return Features(
            {
                "sample_id": Value("int64"),
                "ecg_id": ints,
                "lead_group": Value("string"),
                "label_classes": ints,
                "label_values": ints,
                "question_type": Value("string"),
                "attribute_type": Value("string"),
                "ecg_rows": ints,
            }
        )

    def rows(self, split: str, row_of: dict[int, int], lost: list[int]) -> Iterator[dict[str, Any]]:
        for row in self.builders[split].rows():
            if row["ecg_id"][0] not in row_of:
                lost.append(row["sample_id"])
                continue
            yield {**row, "ecg_rows": [row_of[row["ecg_id"][0]]]}

    def stats(self) -> dict[str, Any]:
        return {s: {**b.stats, "unknown_attributes": dict(b.unknown_attributes)} for s, b in self.builders.items()}


class AttributesTask(UpperboundTask):
    """Dense attribute labels per (ECG, lead subset) from the source database's metadata (``ecgqa/data/attributes.py``).

    Every ECG of a split's questions that has a metadata row gets every grounding class it can derive
    (yes/no; unknown left out). The rows, classes and meta task are the upperbound task's, so upperbound
    models, ``evaluate`` and ``llm-eval --grounding`` take the result unchanged.
    """

    name = "attributes"
    prepared_task = "upperbound"
    template_only = False

    def __init__(self, inputs: Inputs, opts: Options, attributes: list[str]) -> None:
        TaskBuilder.__init__(self, inputs, opts, attributes)
        self.metadata = read_metadata(inputs.metadata)
        self.statements = Statements.read(inputs.metadata.with_name("scp_statements.csv"))
        self.ecgs: dict[str, dict[int, str]] = {s: {} for s in opts.splits}  # split → {ecg id: record path}
        self.counts: dict[str, int] = {"rows": 0, "ecgs": 0, "ecgs_without_metadata": 0, "ecgs_not_measurable": 0}

    @classmethod
    def add_inputs(cls, inputs: Inputs, opts: Options, extra: str | Path | None) -> None:
        if opts.version != "ptbxl":
            raise PrepareError(
                f"--task attributes supports PTB-XL only, not {opts.version}: ECG-QA does not document "
                "how its MIMIC-IV-ECG attributes were derived (docs/attributes.md)"
            )
        if inputs.metadata is None:
            raise PrepareError(
                "--task attributes needs --metadata path/to/ptbxl_database.csv "
                "(scp_statements.csv is read from the same folder)"
            )
        try:
            read_metadata(inputs.metadata, ecg_ids=())
        except AttributesError as e:
            raise PrepareError(str(e)) from e
        statements = inputs.metadata.with_name("scp_statements.csv")
        if not statements.is_file():
            raise PrepareError(f"{statements} not found: PTB-XL's scp_statements.csv must sit beside --metadata")
        UpperboundTask.add_inputs(inputs, opts, extra)
        inputs.sources += [_source(inputs.metadata, None), _source(statements, None)]

    def add(self, split: str, shard: Path, sample: dict[str, Any]) -> None:
        for ecg_id, path in zip(sample["ecg_id"], sample["ecg_path"], strict=False):
            self.ecgs[split].setdefault(int(ecg_id), path)

    def wanted_ecgs(self, ecg_ids: set[int]) -> set[int]:
        found = {i for i in ecg_ids if i in self.metadata.index}
        if ecg_ids and not found:
            raise PrepareError(
                f"none of the {len(ecg_ids)} ECGs the questions use has a row in "
                f"{self.inputs.metadata} ({len(self.metadata)} rows): is it the metadata of "
                "the same database?"
            )
        return found

    def rows(self, split: str, row_of: dict[int, int], lost: list[int]) -> Iterator[dict[str, Any]]:
        items = sorted(self.ecgs[split].items())  # measuring is ~0.15 s an ECG on one core: show a bar
        bar = tqdm(items, desc=f"measure ECGs ({split})", unit="ecg", disable=not getattr(self, "progress", False))
        for ecg_id, path in bar:
            if ecg_id not in self.metadata.index:
                self.counts["ecgs_without_metadata"] += 1
                continue
            if ecg_id not in row_of:
                lost.append(ecg_id)
                continue
            measured = measure_record(path, release_axis=False)  # the axis comes from the heart_axis column
            if measured is None or measured.qrs is None:
                self.counts["ecgs_not_measurable"] += 1
            labels = derive(self.metadata.loc[ecg_id].to_dict(), self.statements, measured)
            self.counts["ecgs"] += 1
            for row in attributes.rows(ecg_id, labels, self.inputs.grounding_classes):
                self.counts["rows"] += 1
                yield {**row, "ecg_rows": [row_of[ecg_id]]}

    def stats(self) -> dict[str, Any]:
        return {"label_source": "attributes", "metadata": self.inputs.metadata.name, **self.counts}


#: ``--task`` name → its builder. One entry per task.
TASKS: dict[str, type[TaskBuilder]] = {"qa": QATask, "upperbound": UpperboundTask, "attributes": AttributesTask}


# -------------------------------------------------------------------------------------------- steps


@dataclass
class Scan:
    """What the question scan found: record paths of the selected samples and the global attribute map."""

    paths: dict[int, str]
    attributes: list[str]
    samples: dict[str, int]
    records_fingerprint: str


def scan_questions(inputs: Inputs, opts: Options, task_of: Any, progress: bool) -> tuple[TaskBuilder, Scan]:
    """Pass 1 over the questions: the attribute map (all splits present, so it never depends on
    --splits), the unique ECGs and their record paths, duplicate and empty-split checks.
    Only ids and paths stay in memory (the task sees each selected sample as it streams by)."""
    attributes: set[str] = set()
    paths: dict[int, str] = {}
    ids_of: dict[str, list[tuple[Path, np.ndarray]]] = {}  # split → (shard, its sample ids): 8 bytes a sample
    samples = dict.fromkeys(opts.splits, 0)
    task = task_of(inputs, opts, [])  # its attribute map is set once the scan has seen every split
    for split, shard in _progress(inputs.shard_list, progress, "scan questions"):
        loaded = load_shard(shard)
        ids_of.setdefault(split, []).append(
            (shard, np.fromiter((s["sample_id"] for s in loaded), np.int64, len(loaded)))
        )
        for sample in loaded:
            attributes.update(sample.get("attribute") or [])
            sid = sample["sample_id"]
            if split not in samples:
                continue
            samples[split] += 1
            ecg_paths = sample.get("ecg_path")
            if not isinstance(ecg_paths, list) or len(ecg_paths) != len(sample["ecg_id"]):
                raise PrepareError(
                    f"{shard}: sample {sid} has no ecg_path for each ecg_id; "
                    "prepare reads the output of `ecgqa map`, not the raw release"
                )
            for i, p in zip(sample["ecg_id"], ecg_paths, strict=False):
                paths.setdefault(i, p)
            task.add(split, shard, sample)
    for shard_ids in ids_of.values():
        _check_unique_ids(shard_ids)
    empty = [s for s, n in samples.items() if n == 0]
    if empty:
        raise PrepareError(
            f"{inputs.mapped / opts.variant}: split(s) {empty} hold no samples; "
            "leave them out of --splits or re-run `ecgqa map`"
        )
    task.attributes = sorted(attributes)
    fingerprint = records_fingerprint(paths.values())
    wanted = task.wanted_ecgs(set(paths))
    return task, Scan({i: p for i, p in paths.items() if i in wanted}, sorted(attributes), samples, fingerprint)


def _check_unique_ids(shard_ids: list[tuple[Path, np.ndarray]]) -> None:
    """Refuse a sample_id that two shards of one split share. The real releases number samples per
    split (PTB-XL train 0-267,538 and valid 0-64,662 overlap), so ids repeat across splits by design."""
    if len(shard_ids) < 2:
        return  # load_shard already refused duplicates inside one shard
    ids = np.concatenate([a for _, a in shard_ids])
    owner = np.repeat(np.arange(len(shard_ids)), [len(a) for _, a in shard_ids])
    order = np.argsort(ids, kind="stable")
    dup = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if len(dup):
        first, second = order[dup[0]], order[dup[0] + 1]
        raise PrepareError(
            f"{shard_ids[owner[second]][0]}: sample_id {ids[second]} appears twice (also in "
            f"{shard_ids[owner[first]][0]}); sample ids must be unique within a split"
        )


def _read_one(item: tuple[int, str, int, int]) -> tuple[int, Any, str | None, int]:
    """Worker: one record → float16 (12, T), or the error text. Never raises, so one bad record
    does not stop the scan: every bad record is listed at the end."""
    ecg_id, path, rate, length = item
    try:
        rec = read_record(path, fs=rate)
    except RecordError as e:
        return ecg_id, None, str(e), 0
    except Exception as e:  # noqa: BLE001 - anything a damaged file raises becomes a listed bad record
        return ecg_id, None, f"record {path}: unreadable ({type(e).__name__}: {e})", 0
    t = rec.signal.shape[-1]
    sig = fit_length(rec.signal, length).astype(np.float16)
    if not np.isfinite(sig).all():
        return ecg_id, None, f"record {path}: values outside the float16 range (|x| > 65504 mV)", 0
    return ecg_id, sig, None, int(t != length)


def _store_row(store: prepared.SignalStoreWriter, ecg_id: int, sig: Any, err: str | None, bad: dict[int, str]) -> bool:
    """Append one row; a bad record gets a zero placeholder (compacted away later) and is listed."""
    if err is not None:
        bad[ecg_id] = err
        store.skip()
        return False
    store.append(sig)
    return True


def _write_signals(
    build: Path, paths: dict[int, str], rate: int, length: int, num_proc: int, progress: bool
) -> tuple[np.ndarray, dict[int, str], int]:
    """Stream every unique record into the signal store (rows in ascending ecg id order).

    Rows arrive in order (``imap`` keeps it) and at most one window of records is in flight.
    Returns (ecg_ids of the stored rows, {bad id: reason}, number of records cropped/padded).
    Bad rows are compacted away afterwards, so the store only ever holds readable ECGs.
    """
    ids = np.array(sorted(paths), dtype=np.int64)
    items = [(int(i), paths[int(i)], rate, length) for i in ids]
    bad: dict[int, str] = {}
    adjusted = 0
    bar = tqdm(total=len(items), desc="read records", unit="ecg", disable=not progress, leave=False)
    with prepared.SignalStoreWriter(build, len(ids), length) as store:
        try:
            if num_proc > 1 and len(items) > 1:
                ctx = multiprocessing.get_context("spawn" if sys.platform == "darwin" else None)
                with ctx.Pool(num_proc) as pool:
                    chunk = max(1, min(16, len(items) // (num_proc * 8)))
                    for ecg_id, sig, err, adj in _bounded_imap(
                        pool, _read_one, items, chunk, window=num_proc * chunk * 8
                    ):
                        adjusted += _store_row(store, ecg_id, sig, err, bad) and adj
                        bar.update()
            else:
                for item in items:
                    ecg_id, sig, err, adj = _read_one(item)
                    adjusted += _store_row(store, ecg_id, sig, err, bad) and adj
                    bar.update()
        finally:
            bar.close()
    if bad:
        keep = np.array([int(i) not in bad for i in ids], dtype=bool)
        store.compact(keep)
        ids = ids[keep]
    prepared.write_ecg_ids(build, ids)
    return ids, bad, int(adjusted)


def _bounded_imap(pool: Any, fn: Any, items: list, chunksize: int, window: int) -> Iterator[Any]:
    """``pool.imap`` in order, but with at most ``window`` items submitted and not yet consumed.

    A bare ``imap`` over every record lets the workers run arbitrarily far ahead of the writer: its
    results are buffered in RAM (120 kB per 10 s ECG), e.g. behind one slow read at the front of the
    ordered queue. Submitting window by window bounds that buffer at any dataset size.
    """
    for start in range(0, len(items), window):
        yield from pool.imap(fn, items[start : start + window], chunksize=chunksize)


def handle_bad_records(bad: dict[int, str], n_records: int, out: Path, drop_bad: bool) -> dict[str, Any]:
    """Stop with the full list of bad records (written beside ``out``), or note them as dropped."""
    if not bad:
        return {}
    listed = "\n  ".join(f"{i}: {bad[i]}" for i in sorted(bad)[:MAX_LISTED])
    more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    if not drop_bad or len(bad) == n_records:
        report = prepared.bad_records_path(out)
        atomic_write_json(report, {str(i): bad[i] for i in sorted(bad)})
        if drop_bad:
            raise PrepareError(
                f"every one of the {n_records} records is bad, so nothing is left to prepare:\n  "
                f"{listed}{more}\nFull list: {report}. Check --records given to `ecgqa map`."
            )
        raise PrepareError(
            f"{len(bad)} bad records (unreadable, truncated or NaN):\n  {listed}{more}\n"
            f"Full list: {report}. Re-run with --drop-bad to drop the samples that use them."
        )
    return {"bad_records": {str(i): bad[i] for i in sorted(bad)}}


def write_question_tables(
    build: Path, task: TaskBuilder, splits: list[str], ecg_ids: np.ndarray, digest: str, scanned: dict[str, int]
) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Pass 2: each split's table, streamed shard by shard into Arrow. Returns counts and lost sample ids."""
    row_of = {int(e): r for r, e in enumerate(ecg_ids)}
    counts: dict[str, int] = {}
    lost: dict[str, list[int]] = {}
    features = task.features()
    for split in splits:
        lost[split] = []
        fingerprint = hashlib.sha256(f"{digest}-{split}".encode()).hexdigest()[:16]
        counts[split] = prepared.write_questions(
            build, split, task.rows(split, row_of, lost[split]), features, fingerprint
        )
        if counts[split] == 0 and lost[split]:
            raise PrepareError(
                f"--drop-bad dropped every sample of split {split!r} ({len(lost[split])} of "
                f"{scanned[split]}): their records are all bad; see the records listed above"
            )
    return counts, {s: ids for s, ids in lost.items() if ids}


def build_tokenizer(build: Path, kind: str) -> TokenizerInfo:
    """Store the question tokenizer: BERT's uncased vocabulary, or one built from the train questions only."""
    if kind == "bert":
        tok = bert_tokenizer()
    else:
        if not (build / prepared.QUESTIONS / "train").is_dir():
            raise PrepareError(
                "--tokenizer trained learns its vocabulary from the train split, which is not "
                "among --splits; add train or use --tokenizer bert"
            )
        tok = train_wordpiece(q for batch in prepared.question_texts(build, "train") for q in batch)
    prepared.write_tokenizer(build, tok)
    return tokenizer_info(tok, "bert-base-uncased" if kind == "bert" else "trained")


def _progress(items: list, progress: bool, desc: str) -> Iterable:
    return tqdm(items, desc=desc, unit="shard", disable=not progress, leave=False)


def _dropped_summary(dropped: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "bad_records" in dropped:
        ids = list(dropped["bad_records"])
        out["bad_records"] = len(ids)
        out["bad_record_ids"] = ids[:MAX_LISTED]
    for split, ids in dropped.get("samples", {}).items():
        out[f"samples_{split}"] = len(ids)
    if out:
        out["report"] = prepared.DROPPED
    return out


# -------------------------------------------------------------------------------------------- stage


def prepare(
    mapped_dir: str | Path,
    out: str | Path,
    *,
    variant: str = "template",
    splits: Iterable[str] | None = None,
    rate: int = DEFAULT_RATE,
    seconds: float = DEFAULT_SECONDS,
    task: str = "qa",
    num_proc: int = 1,
    drop_bad: bool = False,
    grounding_classes: str | Path | None = None,
    metadata: str | Path | None = None,
    version: str | None = None,
    tokenizer: str = "bert",
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the prepared directory ``out`` from the mapped release ``mapped_dir`` and return its meta
    (plus ``seconds``, and ``_noop`` when ``out`` was already up to date).

    Raises PrepareError for bad options, inputs or records (after the full record scan), and
    ``files.OutputDirError`` when ``out`` holds something that is not a prepared directory.
    """
    start = time.perf_counter()
    mapped, out = Path(mapped_dir), Path(out)
    check_options(rate=rate, seconds=seconds, num_proc=num_proc, task=task, variant=variant, tokenizer=tokenizer)
    version = version or detect_version(mapped)
    present = [s for s in SPLITS if (mapped / variant / s).is_dir()]
    opts = Options(
        variant, list(splits) if splits else present, rate, float(seconds), task, drop_bad, version, tokenizer
    )
    try:
        inputs = read_inputs(mapped, opts, grounding_classes, metadata)
        digest = content_hash(opts, inputs)
        recover_output(out)
        if not force and (old := up_to_date(out, digest, inputs, opts)) is not None:
            return {**old, "_noop": True}
        prepared.claim(out)
        build = staging_dir(out)
        try:
            meta = _build(build, out, inputs, opts, digest, num_proc, progress)
            prepared.write_meta(build, meta)  # last: marks the build complete
            swap_dir(build, out)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    except ReleaseError as e:
        raise PrepareError(str(e)) from e
    return {**meta.model_dump(), "seconds": round(time.perf_counter() - start, 3)}


def _build(
    build: Path, out: Path, inputs: Inputs, opts: Options, digest: str, num_proc: int, progress: bool
) -> PreparedMeta:
    """The steps between a claimed ``out`` and a complete build folder; returns the meta to write."""
    task, scan = scan_questions(inputs, opts, TASKS[opts.task], progress)
    ecg_ids, bad, adjusted = _write_signals(build, scan.paths, opts.rate, opts.length, num_proc, progress)
    dropped = handle_bad_records(bad, len(scan.paths), out, opts.drop_bad)
    task.progress = progress  # a task that measures signals (attributes) shows a bar
    counts, lost = write_question_tables(build, task, opts.splits, ecg_ids, digest, scan.samples)
    if lost:
        dropped["samples"] = lost
    tok = build_tokenizer(build, opts.tokenizer) if task.uses_tokenizer else None
    if dropped:
        prepared.write_dropped(build, dropped)
    classes = task.classes()
    return PreparedMeta(
        version=opts.version,
        variant=opts.variant,
        task=task.prepared_task or opts.task,
        classes=classes,
        answer_classes=list(inputs.space.classes),
        grounding_classes=list(inputs.grounding_classes) or None,
        attributes=scan.attributes,
        rate=opts.rate,
        signal_length=opts.length,
        n_ecgs=len(ecg_ids),
        splits=counts,
        sources=inputs.sources,
        content_hash=digest,
        records_fingerprint=scan.records_fingerprint,
        dropped=_dropped_summary(dropped),
        length_adjusted=adjusted,
        tokenizer=tok,
        task_stats=task.stats(),
    )


def default_out(version: str, variant: str, task: str) -> Path:
    """Where ``ecgqa prepare`` writes without ``--out``."""
    return Path("prepared") / f"{version}-{variant}-{task}"


__all__ = ["TASKS", "TOKENIZERS", "PrepareError", "TaskBuilder", "detect_version", "prepare"]
