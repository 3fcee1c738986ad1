"""Ground each question in an upperbound classifier's reading of its ECG(s).

The LLM never sees a signal: it sees, per ECG and lead subset, the grounding classes the classifier
scores above 0.5 (ECGQA.md, "The LLM evaluation protocol", step 2). Which (ECG, lead subset) pairs
a question needs is decided by :func:`plan_blocks`:

- a question naming a lead or a lead group ("… in lead V2", "… in inferior leads") gets the classifier
  run on that subset only (the other leads zeroed);
- a "which leads …" question (its options are the twelve lead classes) gets one pass per single lead;
- a comparison question gets one block per ECG (first/second or previous/recent, as its wording says);
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

from ecgqa.constants import LEAD_GROUPS, LEADS, lead_mask
from llm_eval.sampling import Question

THRESHOLD = 0.5
LEAD_CLASSES = tuple(f"lead {lead}" for lead in LEADS)


class Classifier(Protocol):
    """What grounding needs from an upperbound predictor (``ecgqa.load(ckpt)`` of task upperbound)."""

    classes: list[str]

    def classify(self, ecgs: np.ndarray, lead_masks: np.ndarray | None = None, batch_size: int = 64) -> np.ndarray: ...


def _canonical_subsets() -> dict[tuple[str, ...], str]:
    # Several group names cover the same leads (frontal = limb, diffuse = entire): cache them once.
    out: dict[tuple[str, ...], str] = {}
    for name, leads in LEAD_GROUPS.items():
        out.setdefault(tuple(lead for lead in LEADS if lead in leads), name)
    return out


_CANONICAL = _canonical_subsets()


def canonical_subset(name: str) -> str:
    """The first LEAD_GROUPS name covering the same leads as ``name`` ("diffuse" → "entire")."""
    if name not in LEAD_GROUPS:
        raise ValueError(f"unknown lead subset {name!r}; expected a key of ecgqa.constants.LEAD_GROUPS")
    return _CANONICAL[tuple(lead for lead in LEADS if lead in LEAD_GROUPS[name])]


_LEAD_ALT = "|".join(sorted((re.escape(lead) for lead in LEADS), key=len, reverse=True))
_GROUP_ALT = "|".join(
    sorted((re.escape(g) for g in LEAD_GROUPS if g not in LEADS and g != "entire"), key=len, reverse=True)
)
# "lead V2", "leads V1 and V2", "V2 lead"; lead names are case-sensitive ("I" is not "i").
_SINGLE = re.compile(rf"(?i:\bleads?\s+)({_LEAD_ALT})\b|\b({_LEAD_ALT})(?i:\s+leads?\b)")
_GROUP = re.compile(rf"\b({_GROUP_ALT})\s+leads?\b", re.IGNORECASE)


def lead_subsets_in(text: str) -> list[str]:
    """Canonical lead subsets a question names, in order of first mention ([] = none named)."""
    found: list[tuple[int, str]] = []
    for m in _GROUP.finditer(text):
        found.append((m.start(), canonical_subset(m.group(1).lower())))
    for m in _SINGLE.finditer(text):
        found.append((m.start(), m.group(1) or m.group(2)))
    out: list[str] = []
    for _, name in sorted(found):
        if name not in out:
            out.append(name)
    return out


def is_which_leads(q: Question) -> bool:
    """A "which leads …" question: its options are lead classes."""
    return bool(q.options) and all(o in LEAD_CLASSES for o in q.options)


@dataclass(frozen=True)
class Block:
    """One interpretation block of a prompt: an ECG read through one lead subset."""

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
        return tuple(lead for lead in LEADS if lead in LEAD_GROUPS[self.subset])


_PREVIOUS_RECENT = re.compile(r"\b(previous|recent)\b")
_FIRST_SECOND = re.compile(r"\b(first|second)\b(?!\s+degree)")  # "first degree av block" names no ECG


def ecg_labels(q: Question) -> tuple[str, ...]:
    """How the question itself names its ECGs, so the blocks use the same words."""
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


def plan_blocks(q: Question) -> list[Block]:
    """The (ECG, lead subset) readings a question's prompt shows, in prompt order."""
    if is_which_leads(q):
        subsets = list(LEADS)
    else:
        subsets = lead_subsets_in(q.question) or ["entire"]
    labels = ecg_labels(q)
    if len(labels) < len(q.ecg_ids):
        raise ValueError(f"sample {q.sample_id}: {len(q.ecg_ids)} ECGs for a {q.question_type} question")
    blocks = []
    for i, ecg_id in enumerate(q.ecg_ids):
        row = q.ecg_rows[i] if q.ecg_rows is not None else None
        for subset in subsets:
            blocks.append(Block(i, ecg_id, row, subset, labels[i]))
    return blocks


@dataclass(frozen=True)
class Interpretation:
    """A block with its findings: grounding classes scored above the threshold, highest first."""

    block: Block
    findings: tuple[tuple[str, float], ...]


def fingerprint(checkpoint: str | Path | None, data_hash: str = "") -> str:
    """Identity of (checkpoint weights and config, prepared data): the cache is only reused for both."""
    h = hashlib.sha256(data_hash.encode())
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        files = sorted(p for p in ckpt.iterdir() if p.is_file()) if ckpt.is_dir() else [ckpt]
        for p in files:
            if p.suffix in (".json", ".safetensors", ".bin", ".pt"):
                h.update(p.name.encode())
                with p.open("rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
    return h.hexdigest()[:16]


class ScoreCache:
    """Append-only, fsync'd JSONL of classifier scores per (ecg id, subset); a torn last line is skipped."""

    def __init__(self, path: str | Path | None, classes: list[str], fingerprint: str = ""):
        self.path = Path(path) if path is not None else None
        self.classes = list(classes)
        self.fingerprint = fingerprint
        self.scores: dict[str, np.ndarray] = {}
        self._torn_tail = False
        if self.path is not None and self.path.is_file():
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        text = self.path.read_text()
        if "\n" not in text:
            # Killed before the header line was complete (empty or torn): nothing was cached, start afresh.
            self.path.unlink()
            return
        self._torn_tail = not text.endswith("\n")
        lines = text.splitlines()
        try:
            header = json.loads(lines[0])
        except json.JSONDecodeError:
            header = {}
        if header.get("fingerprint") != self.fingerprint or header.get("classes") != self.classes:
            # Readings of another checkpoint or other data: never mix them in, never silently delete them.
            raise ValueError(
                f"{self.path} holds classifier scores of another checkpoint or prepared data (fingerprint "
                f"{header.get('fingerprint')!r}, this run {self.fingerprint!r}); delete it or pick another --grounding-cache"
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
        # Keep in memory exactly what the file keeps (6 decimals, float64, which JSON round-trips), so a
        # resumed run that reads the cache writes the same prompts as the run that computed the scores.
        rounded = {key: [round(float(x), 6) for x in s] for key, s in items.items()}
        self.scores.update({key: np.asarray(v, dtype=np.float64) for key, v in rounded.items()})
        if self.path is None or not items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.is_file()
        with self.path.open("a") as f:
            if new:
                f.write(json.dumps({"fingerprint": self.fingerprint, "classes": self.classes}) + "\n")
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
        signal_of: Callable[[Block], np.ndarray],
        cache_path: str | Path | None = None,
        fingerprint: str = "",
        batch_size: int = 64,
        threshold: float = THRESHOLD,
        progress: bool = True,
    ):
        self.classifier = classifier
        self.signal_of = signal_of
        self.batch_size = batch_size
        self.threshold = threshold
        self.progress = progress
        self.cache = ScoreCache(cache_path, list(classifier.classes), fingerprint)
        self.n_forward = 0  # (ECG, subset) rows actually run through the classifier

    def compute(self, blocks: Iterable[Block]) -> None:
        """Run the classifier on every distinct block not cached yet, ``batch_size`` at a time."""
        from tqdm.auto import tqdm

        todo: dict[str, Block] = {}
        for b in blocks:
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
            self.cache.add({b.key: p for b, p in zip(batch, probs)})
            bar.update(len(batch))
        bar.close()

    def scores(self, block: Block) -> np.ndarray:
        return self.cache.scores[block.key]

    def interpret(self, block: Block) -> Interpretation:
        s = self.scores(block)
        found = [(c, round(float(x), 3)) for c, x in zip(self.cache.classes, s) if x > self.threshold]
        found.sort(key=lambda cx: (-cx[1], cx[0]))
        return Interpretation(block, tuple(found))

    def ground(self, questions: list[Question]) -> dict[int, list[Interpretation]]:
        """sample id → its interpretation blocks, in prompt order."""
        plans = {q.sample_id: plan_blocks(q) for q in questions}
        self.compute(b for blocks in plans.values() for b in blocks)
        return {sid: [self.interpret(b) for b in blocks] for sid, blocks in plans.items()}


def prepared_signal_of(data: Any) -> Callable[[Block], np.ndarray]:
    """Signal lookup in a prepared directory's store, by the question's row (or its ECG id)."""

    def signal_of(block: Block) -> np.ndarray:
        row = block.ecg_row if block.ecg_row is not None else data.row_of(block.ecg_id)
        return data.signals[row]

    return signal_of
