"""Ground each question in an upperbound classifier's reading of its ECG(s).

The LLM never sees a signal: it sees, per ECG and lead subset, the grounding classes the classifier
scores above 0.5 (docs/benchmark.md, "The LLM evaluation protocol", step 2). Which (ECG, lead subset) pairs
a question needs is decided by :func:`plan_readings`:

- a question naming a lead or a lead group ("… in lead V2", "… in inferior leads") gets the classifier
  run on that subset only (the other leads zeroed);
- a "which leads …" question (its options are the twelve lead classes) gets one pass per single lead;
- a comparison question gets one reading per ECG (first/second or previous/recent, as its wording says);
- everything else gets the whole 12-lead ECG.

Many questions share an ECG, so each (ecg id, lead subset) is classified once, in batches, and the
scores are appended to an on-disk cache (fsync'd JSONL) keyed by a fingerprint of the checkpoint and
the data. The upstream harness zeroed leads in place in a shared tensor, so every later "per-lead"
reading saw an all-zero ECG; here a batch is always a fresh float32 copy and the store is never written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ecgqa.data.constants import LEADS
from ecgqa.data.leads import group_leads, lead_mask, lead_subsets_in
from ecgqa.evaluation.metrics import decide
from llm_eval.sampling import Question

LEAD_CLASSES = tuple(f"lead {lead}" for lead in LEADS)
#: The subset of no lead: an all-zero ECG (only ``--prompt paper-as-published`` reads one, as the paper's harness did).
BLANK = "blank"


class Classifier(Protocol):
    """What grounding needs from an upperbound predictor (``ecgqa.load(ckpt)`` of task upperbound)."""

    classes: list[str]

    def classify(self, ecgs: np.ndarray, lead_masks: np.ndarray | None = None, batch_size: int = 64) -> np.ndarray: ...


def is_which_leads(q: Question) -> bool:
    """A "which leads …" question: its options are lead classes."""
    return bool(q.options) and all(o in LEAD_CLASSES for o in q.options)


@dataclass(frozen=True)
class Reading:
    """One ECG of a question read through one lead subset: what the classifier is run on, and one
    interpretation section of the prompt."""

    ecg_index: int  # 0 or 1 within the question
    ecg_id: int
    ecg_row: int | None
    subset: str  # canonical LEAD_GROUPS key
    ecg_label: str  # "ECG", "first ECG", "previous ECG", ...

    @property
    def key(self) -> str:
        return f"{self.ecg_id}|{self.subset}"

    @property
    def leads(self) -> tuple[str, ...]:
        return () if self.subset == BLANK else group_leads(self.subset)


_PREVIOUS_RECENT = re.compile(r"\b(previous|recent)\b")
_FIRST_SECOND = re.compile(r"\b(first|second)\b(?!\s+degree)")  # "first degree av block" names no ECG


def ecg_labels(q: Question) -> tuple[str, ...]:
    """How the question itself names its ECGs, so the readings use the same words."""
    if not q.is_comparison:
        return ("ECG",)
    text = q.question.lower()
    if _PREVIOUS_RECENT.search(text):
        return ("previous ECG", "recent ECG")
    if _FIRST_SECOND.search(text):
        return ("first ECG", "second ECG")
    if q.question_type.startswith("comparison_consecutive"):
        return ("previous ECG", "recent ECG")
    return ("first ECG", "second ECG")


def plan_readings(q: Question) -> list[Reading]:
    """The (ECG, lead subset) readings a question's prompt shows, in prompt order."""
    if is_which_leads(q):
        subsets = list(LEADS)
    else:
        subsets = lead_subsets_in(q.question) or ["entire"]
    labels = ecg_labels(q)
    if len(labels) < len(q.ecg_ids):
        raise ValueError(f"sample {q.sample_id}: {len(q.ecg_ids)} ECGs for a {q.question_type} question")
    readings = []
    for i, ecg_id in enumerate(q.ecg_ids):
        row = q.ecg_rows[i] if q.ecg_rows is not None else None
        for subset in subsets:
            readings.append(Reading(i, ecg_id, row, subset, labels[i]))
    return readings


@dataclass(frozen=True)
class Interpretation:
    """A reading with its findings: grounding classes scored above the threshold, highest first."""

    reading: Reading
    findings: tuple[tuple[str, float], ...]


def fingerprint(checkpoint: str | Path | None, data_hash: str = "") -> str:
    """Identity of (checkpoint weights and config, prepared data): the cache is only reused for both."""
    from ecgqa.files import sha256_file

    h = hashlib.sha256(data_hash.encode())
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        files = sorted(p for p in ckpt.iterdir() if p.is_file()) if ckpt.is_dir() else [ckpt]
        for p in files:
            if p.suffix in (".json", ".safetensors", ".bin", ".pt"):
                h.update(f"{p.name}:{sha256_file(p)}".encode())
    return h.hexdigest()[:16]


CACHE_KIND = "ecgqa-grounding-cache"
CACHE_HEADER = json.dumps({"kind": CACHE_KIND})[:-1]  # how every cache file we write begins
SCORE_FORMAT = "float32"  # scores stored exactly as the classifier returned them


def _cache_header(text: str | None) -> dict[str, Any] | None:
    """The header of a grounding cache we wrote, or None for anything else (a user's file)."""
    if not text or "\n" not in text:
        return None
    try:
        header = json.loads(text.split("\n", 1)[0])
    except json.JSONDecodeError:
        return None
    if not isinstance(header, dict) or header.get("kind") != CACHE_KIND:
        return None
    return header


class ScoreCache:
    """Append-only, fsync'd JSONL of classifier scores per (ecg id, subset); a torn last line is skipped."""

    def __init__(self, path: str | Path | None, classes: list[str], fingerprint: str = ""):
        self.path = Path(path) if path is not None else None
        self.classes = list(classes)
        self.fingerprint = fingerprint
        self.scores: dict[str, np.ndarray] = {}
        self._torn_tail = False
        if self.path is not None and self.path.exists() and not self.path.is_file():
            raise ValueError(
                f"--grounding-cache {self.path} is a folder; it must name a file (e.g. {self.path}/scores.jsonl)"
            )
        if self.path is not None and self.path.is_file():
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        try:
            text = self.path.read_text()
        except UnicodeDecodeError:
            text = None
        if text == "":
            return  # empty: the header is written with the first scores
        if text is not None and "\n" not in text and (CACHE_HEADER.startswith(text) or text.startswith(CACHE_HEADER)):
            # Our header, torn by a kill before its line was complete: nothing was cached, start afresh.
            self.path.unlink()
            return
        header = _cache_header(text)
        if header is None:
            # Someone else's file: never overwrite or delete what we cannot prove we wrote.
            raise ValueError(
                f"--grounding-cache {self.path} is not a grounding cache written by ecgqa llm-eval (its first line "
                f"is not {CACHE_HEADER}...); it was left untouched. Point --grounding-cache at a new file name"
            )
        assert text is not None
        self._torn_tail = not text.endswith("\n")
        lines = text.splitlines()
        if header.get("scores") != SCORE_FORMAT:
            # Written before scores were kept exactly: its 6-decimal values can print a different 3rd decimal.
            raise ValueError(
                f"{self.path} holds classifier scores rounded to 6 decimals by an older ecgqa (this one keeps the "
                "classifier's float32 scores exactly, as the paper's prompt prints them); delete it or pick another "
                "--grounding-cache"
            )
        if header.get("fingerprint") != self.fingerprint or header.get("classes") != self.classes:
            # Readings of another checkpoint or other data: never mix them in, never silently delete them.
            raise ValueError(
                f"{self.path} holds classifier scores of another checkpoint or prepared data (fingerprint "
                f"{header.get('fingerprint')!r}, this run {self.fingerprint!r}); "
                "delete it or pick another --grounding-cache"
            )
        for line in lines[1:]:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a write torn by a crash; that reading is simply recomputed
            self.scores[rec["key"]] = np.asarray(rec["scores"], dtype=np.float64)

    def __contains__(self, key: str) -> bool:
        return key in self.scores

    def add(self, items: dict[str, np.ndarray]) -> None:
        # Keep the classifier's float32 scores exactly (a float32 is exact as a float64, which JSON round-trips):
        # the paper's prompt prints each as ``f"{score:.3f}"`` and keeps those ``> 0.5``, and a value rounded
        # first (to 6 decimals, as before) printed a different 3rd decimal or crossed 0.5 now and then. Memory
        # holds what the file holds, so a resumed run writes the same prompts as the run that computed them.
        rounded = {key: [float(x) for x in np.asarray(s, dtype=np.float32)] for key, s in items.items()}
        self.scores.update({key: np.asarray(v, dtype=np.float64) for key, v in rounded.items()})
        if self.path is None or not items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.is_file() or self.path.stat().st_size == 0
        with self.path.open("a") as f:
            if new:
                f.write(
                    json.dumps(
                        {
                            "kind": CACHE_KIND,
                            "scores": SCORE_FORMAT,
                            "fingerprint": self.fingerprint,
                            "classes": self.classes,
                        }
                    )
                    + "\n"
                )
            elif self._torn_tail:  # end the torn line so the next record starts on its own
                f.write("\n")
                self._torn_tail = False
            for key, values in rounded.items():
                f.write(json.dumps({"key": key, "scores": values}) + "\n")
            f.flush()
            os.fsync(f.fileno())


class Grounder:
    """Classifies each needed (ECG, lead subset) once and turns scores into interpretations."""

    def __init__(
        self,
        classifier: Classifier,
        signal_of: Callable[[Reading], np.ndarray],
        cache_path: str | Path | None = None,
        fingerprint: str = "",
        batch_size: int = 64,
        progress: bool = True,
    ):
        self.classifier = classifier
        self.signal_of = signal_of
        self.batch_size = batch_size
        self.progress = progress
        self.cache = ScoreCache(cache_path, list(classifier.classes), fingerprint)
        self.n_forward = 0  # (ECG, subset) rows actually run through the classifier

    def compute(self, readings: Iterable[Reading]) -> None:
        """Run the classifier on every distinct reading not cached yet, ``batch_size`` at a time."""
        from tqdm.auto import tqdm

        todo: dict[str, Reading] = {}
        for b in readings:
            if b.key not in self.cache and b.key not in todo:
                todo[b.key] = b
        pending = list(todo.values())
        bar = tqdm(total=len(pending), desc="grounding", unit="ecg-subset", disable=not self.progress or not pending)
        for start in range(0, len(pending), self.batch_size):
            batch = pending[start : start + self.batch_size]
            # np.array(..., float32) copies: the (read-only, memory-mapped) store is never handed out.
            ecgs = np.stack([np.array(self.signal_of(b), dtype=np.float32) for b in batch])
            masks = np.array([lead_mask(b.leads) for b in batch], dtype=bool)
            probs = np.asarray(self.classifier.classify(ecgs, masks, batch_size=self.batch_size), dtype=np.float32)
            if probs.shape != (len(batch), len(self.cache.classes)):
                raise RuntimeError(
                    f"the grounding classifier returned shape {probs.shape} for {len(batch)} ECGs; "
                    f"expected ({len(batch)}, {len(self.cache.classes)}) — is --grounding an upperbound checkpoint?"
                )
            self.n_forward += len(batch)
            self.cache.add({b.key: p for b, p in zip(batch, probs, strict=False)})
            bar.update(len(batch))
        bar.close()

    def scores(self, reading: Reading) -> np.ndarray:
        return self.cache.scores[reading.key]

    def interpret(self, reading: Reading) -> Interpretation:
        s = self.scores(reading)
        found = [(c, round(float(x), 3)) for c, x, keep in zip(self.cache.classes, s, decide(s), strict=False) if keep]
        found.sort(key=lambda cx: (-cx[1], cx[0]))
        return Interpretation(reading, tuple(found))

    def findings_in_class_order(self, reading: Reading) -> list[tuple[str, float]]:
        """(class, score) above the threshold in class-index order, as the paper's prompt lists them."""
        s = self.scores(reading)
        return [(c, float(x)) for c, x, keep in zip(self.cache.classes, s, decide(s), strict=False) if keep]

    def ground(self, questions: list[Question]) -> dict[int, list[Interpretation]]:
        """sample id → its interpretation readings, in prompt order."""
        plans = {q.sample_id: plan_readings(q) for q in questions}
        self.compute(b for readings in plans.values() for b in readings)
        return {sid: [self.interpret(b) for b in readings] for sid, readings in plans.items()}


def prepared_signal_of(data: Any) -> Callable[[Reading], np.ndarray]:
    """Signal lookup in a prepared directory's store, by the question's row (or its ECG id)."""

    def signal_of(reading: Reading) -> np.ndarray:
        row = reading.ecg_row if reading.ecg_row is not None else data.row_of(reading.ecg_id)
        return data.signals[row]

    return signal_of
