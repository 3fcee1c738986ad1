"""What the demo app serves, built once at start-up: the models, the ECG index, questions, examples.

The QA model (and the optional attribute classifier) run on ONE dedicated worker thread
(:data:`MODEL_THREADS`): requests that arrive while it is busy are answered together in one forward
pass by :class:`Batcher`, the (not thread-safe) tokenizer is never used concurrently, and torch's
per-thread intra-op pools are not re-created on every pooled thread that happens to run a request
(which is how the thread count climbed from 6 to 78 under load, RELIABILITY-PROBE S17). Plots and
upload parsing run on anyio's worker threads, whose number ``create_app`` bounds.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from typing import Any, Protocol

import numpy as np
from fastapi import HTTPException

from ecgqa.data.constants import QUESTION_TYPES
from ecgqa.data.records import fit_length, resample
from ecgqa.evaluation.metrics import THRESHOLD, decide
from ecgqa.render import render_ecg
from ecgqa.serve.questions import QUESTION_COLUMNS, QuestionIndex, arrow_table, first_rows
from ecgqa.serve.schemas import Example, Finding, Findings

MAX_BATCH = 16
MODEL_THREADS = 1
PLOT_CACHE = 128  # rendered PNGs kept (about 100 kB each)


class Predictor(Protocol):
    """What the app needs of ``ecgqa.load(...)`` (the cross-stage Predictor contract)."""

    task: str
    classes: list[str]
    rate: int
    signal_length: int
    model_name: str

    def answer(self, ecgs: Any, question: str, valid_classes: Any = None) -> Any: ...

    def answer_batch(self, items: list[tuple[Any, str, Any]], batch_size: int = 32) -> list[Any]: ...


def input_needed(fs: int, rate: int, length: int) -> int:
    """Input samples at ``fs`` that decide the first ``length`` samples of ``resample(x, fs, rate)``.

    ``scipy.signal.resample_poly`` (up/down = rate/fs) filters with a window of ``10 * max(up, down)``
    taps either side at the upsampled rate, so output sample n reads input up to ``(n * down + half) / up``.
    Resampling only these samples gives the same first ``length`` outputs as resampling a whole
    upload (tests/serve/test_serve_uploads.py checks this), in time and memory of the model's input only.
    """
    ratio = Fraction(int(rate), int(fs))
    up, down = ratio.numerator, ratio.denominator
    half = 10 * max(up, down)
    return -(-((length - 1) * down + half) // up) + 2


class ModelError(Exception):
    """The predictor failed on input we had validated: a server fault, reported as 500 with an id."""


class Batcher:
    """Collects requests that arrive while the model is busy and answers them in one forward pass."""

    def __init__(self, predictor: Predictor, executor: ThreadPoolExecutor, max_batch: int = MAX_BATCH):
        self.predictor, self.executor, self.max_batch = predictor, executor, max_batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    async def submit(self, ecgs: list[np.ndarray], question: str, valid: list[str]) -> tuple[Any, float, float, int]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop, self._queue = loop, asyncio.Queue()
            self._task = loop.create_task(self._consume())
        fut = loop.create_future()
        self._queue.put_nowait(((ecgs, question, valid), fut, time.perf_counter()))
        return await fut

    async def _consume(self) -> None:
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            batch = [b for b in batch if not b[1].done()]
            if not batch:
                continue
            t0 = time.perf_counter()
            results = await loop.run_in_executor(self.executor, self._answer, [b[0] for b in batch])
            ms = (time.perf_counter() - t0) * 1000
            for (_, fut, t_in), result in zip(batch, results, strict=False):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result((result, (t0 - t_in) * 1000, ms, len(batch)))

    def _answer(self, items: list[tuple]) -> list[Any]:
        try:
            return list(self.predictor.answer_batch(items, batch_size=self.max_batch))
        except Exception as e:  # noqa: BLE001 - any model failure becomes that request's 500
            if len(items) == 1:
                return [e]
        out: list[Any] = []
        for item in items:  # isolate the failing request(s) so the others still get answers
            try:
                out.append(self.predictor.answer_batch([item], batch_size=1)[0])
            except Exception as e:  # noqa: BLE001 - isolated per request, reported as 500 with an id
                out.append(e)
        return out

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()


class _LRU:
    """A small thread-safe LRU of rendered plots (functools.lru_cache would also cache 404 lookups)."""

    def __init__(self, size: int):
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


@dataclass
class Service:
    """Everything built once at start-up: the predictors, the ECG index, questions and examples."""

    predictor: Predictor
    data: Any
    questions: QuestionIndex
    ecg_rows: dict[int, int]
    ecg_questions: dict[int, int]
    ecg_splits: dict[int, list[str]]
    examples: list[Example]
    attributes: Any = None
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(MODEL_THREADS, thread_name_prefix="ecgqa-model")
    )
    batchers: dict[int, Batcher] = field(default_factory=dict)
    plots: _LRU = field(default_factory=lambda: _LRU(PLOT_CACHE))
    _findings: dict[int, Findings] = field(default_factory=dict)

    def batcher_for(self, predictor: Predictor) -> Batcher:
        """One batcher per predictor object (the injected one; tests may override the dependency)."""
        key = id(predictor)
        if key not in self.batchers or self.batchers[key].predictor is not predictor:
            self.batchers[key] = Batcher(predictor, self.executor)
        return self.batchers[key]

    @property
    def rate(self) -> int:
        return int(self.data.meta["rate"])

    @cached_property
    def sorted_ecg_ids(self) -> list[int]:
        """The store's ECG ids in order, sorted once (a page of /api/ecgs used to sort them all per request)."""
        return sorted(self.ecg_rows)

    def row(self, ecg_id: int) -> int:
        if ecg_id not in self.ecg_rows:
            raise HTTPException(404, f"ECG {ecg_id} is not in the prepared data; pick an id from /api/ecgs")
        return self.ecg_rows[ecg_id]

    def signal(self, ecg_id: int) -> np.ndarray:
        return np.asarray(self.data.signals[self.row(ecg_id)], dtype=np.float32)

    @staticmethod
    def model_input(predictor: Any, signal: np.ndarray, fs: int, name: str) -> tuple[np.ndarray, list[str]]:
        """An input ECG resampled to a model's rate and cut/padded to its length, saying what changed.

        Inputs are uploads, and the prepared ECGs shown to the attribute classifier (which may run at
        another rate than the QA model, e.g. the quickstart's 100 Hz se-wrn). The prepared data itself
        matches the QA model: ``build_service`` checks that with ``check_compatible``.
        """
        notes = []
        rate, length = int(predictor.rate), int(predictor.signal_length)
        if fs != rate:
            seconds = signal.shape[1] / fs
            signal = resample(signal[:, : input_needed(fs, rate, length)], fs, rate)
            notes.append(f"{name}: resampled from {fs} Hz to the model's {rate} Hz")
        else:
            seconds = signal.shape[1] / rate
        if seconds * rate > length:
            notes.append(f"{name}: used the first {length / rate:g} s of {seconds:.2f} s")
        elif signal.shape[1] < length:
            notes.append(f"{name}: {signal.shape[1] / rate:.2f} s zero-padded to the model's {length / rate:g} s")
        return np.ascontiguousarray(fit_length(signal, length), dtype=np.float32), notes

    def plot(self, ecg_id: int) -> bytes:
        png = self.plots.get(ecg_id)
        if png is None:
            png = render_ecg(self.signal(ecg_id), self.rate, title=f"ECG {ecg_id}")
            self.plots.put(ecg_id, png)
        return png

    async def findings(self, ecg_id: int) -> Findings:
        """The attribute classifier's classes above the threshold for a prepared ECG (cached)."""
        if self.attributes is None:
            raise HTTPException(
                404,
                "no attribute classifier loaded; start the demo with "
                "`ecgqa serve --attributes CKPT` (an upperbound/attributes checkpoint)",
            )
        self.row(ecg_id)
        if ecg_id not in self._findings:
            signal, _ = self.model_input(self.attributes, self.signal(ecg_id), self.rate, f"ECG {ecg_id}")
            loop = asyncio.get_running_loop()
            scores = (await loop.run_in_executor(self.executor, self.attributes.classify, signal))[0]
            if not np.isfinite(scores).all():
                raise HTTPException(422, f"the attribute classifier gave non-finite scores for ECG {ecg_id}")
            chosen = np.flatnonzero(decide(scores))
            order = chosen[np.argsort(-scores[chosen], kind="stable")]
            self._findings[ecg_id] = Findings(
                ecg_id=ecg_id,
                model_name=str(self.attributes.model_name),
                threshold=THRESHOLD,
                findings=[Finding(name=self.attributes.classes[i], score=float(scores[i])) for i in order],
                n_classes=len(self.attributes.classes),
            )
        return self._findings[ecg_id]

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def build_service(predictor: Predictor, data: Any, attributes: Any = None) -> Service:
    """Check the models against the data (one rate policy, ecgqa/checkpoint.py) and index the data."""
    from ecgqa.checkpoint import CheckpointError, check_compatible

    if getattr(predictor, "task", "qa") != "qa":
        raise ValueError(f"the checkpoint is a {predictor.task!r} model; `ecgqa serve` needs a QA checkpoint")
    check_compatible(predictor, data)
    if attributes is not None and getattr(attributes, "task", None) != "upperbound":
        raise CheckpointError(
            f"--attributes: {getattr(attributes, 'path', attributes)} is a "
            f"{getattr(attributes, 'task', '?')!r} model, not an attribute (upperbound) classifier"
        )
    ecg_rows = {int(e): i for i, e in enumerate(np.asarray(data.ecg_ids).tolist())}
    questions, n_questions, ecg_splits, examples = startup_indexes(data, set(ecg_rows))
    return Service(predictor, data, questions, ecg_rows, n_questions, ecg_splits, examples, attributes)


def startup_indexes(
    data: Any, ecgs: set[int]
) -> tuple[QuestionIndex, dict[int, int], dict[int, list[str]], list[Example]]:
    """The demo's start-up indexes of a prepared QA directory whose signal store holds ``ecgs``: the question
    index, questions per ECG id, splits per ECG id, and the examples.

    Column-wise (Arrow/numpy): Python work per distinct question and per ECG, never per question row. A full
    PTB-XL directory holds 414k questions; turning them into Python dicts took most of a minute and ~500 MB."""
    tables = {s: arrow_table(data.split(s), (*QUESTION_COLUMNS, "answer")) for s in data.splits}
    questions = QuestionIndex.from_tables(list(data.classes), list(tables.values()))
    n_questions, ecg_splits = ecg_question_counts(tables)
    store_ids = np.fromiter(ecgs, np.int64, len(ecgs))
    candidates = {s: example_candidates(t, store_ids) for s, t in tables.items()}
    return questions, n_questions, ecg_splits, pick_examples(candidates, list(data.classes), ecgs)


def _flat_ecg_ids(table: Any) -> tuple[np.ndarray, np.ndarray]:
    """The ECG ids of every question of a table, flattened, and the row each came from."""
    import pyarrow.compute as pc

    ids = table.column("ecg_id").combine_chunks()
    return pc.list_flatten(ids).to_numpy(), pc.list_parent_indices(ids).to_numpy()


def ecg_question_counts(tables: dict[str, Any]) -> tuple[dict[int, int], dict[int, list[str]]]:
    """Per ECG id: how many questions name it, and the splits they are in (sorted)."""
    flats = {s: _flat_ecg_ids(t)[0] for s, t in tables.items()}
    both = np.concatenate(list(flats.values())) if flats else np.empty(0, np.int64)
    ids, counts = np.unique(both, return_counts=True)
    splits: dict[int, list[str]] = defaultdict(list)
    for split in sorted(flats):
        for e in np.unique(flats[split]).tolist():
            splits[e].append(split)
    return dict(zip(ids.tolist(), counts.tolist(), strict=False)), dict(splits)


def example_candidates(table: Any, store_ids: np.ndarray) -> dict[str, list]:
    """The rows ``pick_examples`` can pick, as columns: those whose ECGs are all in the store, the first of
    each (question type, template, question) — a later duplicate is never picked when an earlier one was not."""
    flat, parent = _flat_ecg_ids(table)
    ok = np.ones(table.num_rows, dtype=bool)
    ok[parent[~np.isin(flat, store_ids)]] = False
    rows = np.flatnonzero(ok)
    kept = table.take(rows)
    first = first_rows(kept, ["question_type", "template_id", "question"])
    return kept.take(first).to_pydict()


def pick_examples(
    rows_by_split: dict[str, dict[str, list]], classes: list[str], ecgs: set[int], per_type: int = 3
) -> list[Example]:
    """A few questions of each type, held-out splits first, distinct templates before repeats."""
    order = sorted(rows_by_split, key=lambda s: {"test": 0, "valid": 1, "train": 2}.get(s, 3))
    picked: dict[str, list[Example]] = defaultdict(list)
    seen: set[tuple[str, int | str]] = set()
    for distinct in ("template", "question"):
        for split in order:
            t = rows_by_split[split]
            for i, qtype in enumerate(t["question_type"]):
                key = (qtype, t["template_id"][i] if distinct == "template" else t["question"][i])
                if (
                    len(picked[qtype]) >= per_type
                    or key in seen
                    or t["question"][i] in {e.question for e in picked[qtype]}
                    or not set(t["ecg_id"][i]) <= ecgs
                ):
                    continue
                seen.add(key)
                picked[qtype].append(
                    Example(
                        question=t["question"][i],
                        ecg_ids=[int(e) for e in t["ecg_id"][i]],
                        question_type=qtype,
                        attribute_type=t["attribute_type"][i],
                        answer=[classes[c] for c in t["answer"][i]],
                        split=split,
                    )
                )
    rank = {q: i for i, q in enumerate(QUESTION_TYPES)}
    return [e for q in sorted(picked, key=lambda q: rank.get(q, 99)) for e in picked[q]]
