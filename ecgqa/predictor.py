"""``ecgqa.load(CKPT)``: a trained checkpoint as a ready-to-call predictor.

The demo server, ``ecgqa evaluate`` and the LLM harness all go through this one class, so what is
measured is what users get. A QA predictor answers questions about one or two ECGs; an upperbound
predictor scores the grounding classes of ECGs (optionally restricted to a lead subset).

Thresholding follows the benchmark: a class is in the answer when ``ecgqa.evaluation.metrics.decide`` says so
(sigmoid > 0.5) *and* it is one of the question's valid classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecgqa.checkpoint import load_checkpoint
from ecgqa.distribution.hub_model import resolve_checkpoint
from ecgqa.evaluation.metrics import decide

ECGs = np.ndarray | Sequence[np.ndarray]


@dataclass
class Answer:
    """The predicted answer set (``[]`` = none), a score per valid class, and the valid classes."""

    answer: list[str]
    scores: dict[str, float] = field(default_factory=dict)
    valid_classes: list[str] = field(default_factory=list)


class Predictor:
    """A loaded checkpoint; see ``load``. Attributes mirror the checkpoint's config."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        meta: dict[str, Any],
        device: str | torch.device,
        path: Path | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.meta = meta
        self.path = path
        self.device = torch.device(device)
        config = model.config
        self.task: str = config.task
        self.classes: list[str] = list(config.classes)
        self.rate: int = int(config.rate)
        self.signal_length: int = int(config.signal_length)
        self.model_name: str = config.model_name
        self._index = {c: i for i, c in enumerate(self.classes)}

    def __repr__(self) -> str:
        return (
            f"Predictor({self.model_name!r}, task={self.task!r}, {len(self.classes)} classes, "
            f"{self.rate} Hz x {self.signal_length}, device={self.device})"
        )

    # ------------------------------------------------------------------ inputs

    def _signal(self, ecg: Any, what: str) -> np.ndarray:
        a = np.asarray(ecg, dtype=np.float32)
        if a.shape != (12, self.signal_length):
            raise ValueError(
                f"{what}: expected a (12, {self.signal_length}) array (12 leads in ecgqa.data.constants.LEADS order, "
                f"{self.rate} Hz), got shape {a.shape}; resample with ecgqa.data.records.resample first"
            )
        if not np.isfinite(a).all():
            raise ValueError(f"{what}: the signal contains NaN or inf values; clean or drop this record")
        return a

    def _valid_indices(self, valid_classes: Sequence[int | str] | None, what: str) -> list[int]:
        if valid_classes is None:
            return list(range(len(self.classes)))
        out = []
        for c in valid_classes:
            if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
                if not 0 <= int(c) < len(self.classes):
                    raise ValueError(f"{what}: valid class index {c} outside 0..{len(self.classes) - 1}")
                out.append(int(c))
            elif c in self._index:
                out.append(self._index[c])
            else:
                raise ValueError(f"{what}: unknown class {c!r}; the checkpoint's classes are predictor.classes")
        return sorted(set(out))

    def _qa_inputs(self, items: Sequence[tuple[ECGs, str, Any]], offset: int) -> dict[str, torch.Tensor]:
        n = len(items)
        ecg = np.zeros((n, 2, 12, self.signal_length), dtype=np.float32)
        ecg_mask = np.zeros((n, 2), dtype=bool)
        for i, (ecgs, _, _) in enumerate(items):
            what = f"item {offset + i}"
            if isinstance(ecgs, np.ndarray) and ecgs.ndim == 2:
                ecgs = [ecgs]
            ecgs = list(ecgs)
            if not 1 <= len(ecgs) <= 2:
                raise ValueError(f"{what}: a question is about 1 or 2 ECGs, got {len(ecgs)}")
            for j, e in enumerate(ecgs):
                ecg[i, j] = self._signal(e, f"{what}, ECG {j + 1}")
                ecg_mask[i, j] = True
        enc = self.tokenizer(
            [q for _, q, _ in items],
            padding=True,
            truncation=True,
            max_length=int(self.model.config.max_question_len),
            return_tensors="pt",
        )
        batch = {
            "ecg": torch.from_numpy(ecg),
            "ecg_mask": torch.from_numpy(ecg_mask),
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
        }
        return {k: v.to(self.device) for k, v in batch.items()}

    # ------------------------------------------------------------------ QA

    def answer(self, ecgs: ECGs, question: str, valid_classes: Sequence[int | str] | None = None) -> Answer:
        """Answer ``question`` about one (12, T) ECG or a list of one or two (first/previous, second/recent)."""
        return self.answer_batch([(ecgs, question, valid_classes)], batch_size=1)[0]

    @torch.inference_mode()
    def answer_batch(self, items: Sequence[tuple[ECGs, str, Any]], batch_size: int = 32) -> list[Answer]:
        """Answers for (ecgs, question, valid_classes) items, ``batch_size`` at a time on ``self.device``."""
        if self.task != "qa":
            raise ValueError(f"{self.path or 'this checkpoint'} is an upperbound classifier; use .classify(ecgs)")
        answers = []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            valid = [self._valid_indices(vc, f"item {start + i}") for i, (_, _, vc) in enumerate(chunk)]
            logits = self.model(**self._qa_inputs(chunk, start)).logits
            probs = torch.sigmoid(logits.float()).cpu().numpy()
            for p, v in zip(probs, valid, strict=False):
                scores = {self.classes[c]: float(p[c]) for c in v}
                chosen = decide(p)
                answers.append(
                    Answer(
                        answer=[self.classes[c] for c in v if chosen[c]],
                        scores=scores,
                        valid_classes=[self.classes[c] for c in v],
                    )
                )
        return answers

    # ------------------------------------------------------------------ upperbound

    @torch.inference_mode()
    def classify(self, ecgs: np.ndarray, lead_masks: np.ndarray | None = None, batch_size: int = 64) -> np.ndarray:
        """Sigmoid scores (B, C) over ``.classes`` for ECGs (B, 12, T) or one (12, T).

        ``lead_masks`` (B, 12) or (12,) bool keeps only those leads (the others are zeroed in a copy;
        ``ecgs`` is never modified).
        """
        if self.task != "upperbound":
            raise ValueError(f"{self.path or 'this checkpoint'} is a QA model; use .answer(ecgs, question)")
        x = np.asarray(ecgs)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3:
            raise ValueError(
                f"ecgs: expected (B, 12, {self.signal_length}) or (12, {self.signal_length}), got {x.shape}"
            )
        masks = None
        if lead_masks is not None:
            masks = np.asarray(lead_masks, dtype=bool)
            if masks.ndim == 1:
                masks = np.broadcast_to(masks, (x.shape[0], 12))
            if masks.shape != (x.shape[0], 12):
                raise ValueError(f"lead_masks: expected shape ({x.shape[0]}, 12), got {masks.shape}")
        out = np.zeros((x.shape[0], len(self.classes)), dtype=np.float32)
        for start in range(0, x.shape[0], batch_size):
            stop = min(start + batch_size, x.shape[0])
            sig = np.stack([self._signal(x[i], f"ecgs[{i}]") for i in range(start, stop)])  # a fresh copy
            if masks is not None:
                sig *= masks[start:stop, :, None]
            logits = self.model(ecg=torch.from_numpy(sig).to(self.device)).logits
            out[start:stop] = torch.sigmoid(logits.float()).cpu().numpy()
        return out


def load(ckpt: str | Path, device: str | torch.device | None = None) -> Predictor:
    """Load a checkpoint folder written by ``ecgqa train`` (``ecgqa.checkpoint.load_checkpoint``), or a Hub
    repo id (``org/name``, ``org/name@revision``) of one, downloaded or read from the Hub cache
    (``ecgqa.distribution.hub_model.resolve_checkpoint``; offline with ``HF_HUB_OFFLINE=1``).

    ``device`` defaults to CUDA when available, else CPU.
    """
    ckpt = load_checkpoint(resolve_checkpoint(ckpt), device=device)
    return Predictor(ckpt.model, ckpt.tokenizer, ckpt.meta, ckpt.model.device, ckpt.path)
