"""A checkpoint folder: what ``ecgqa train`` writes and everyone else reads, and one compatibility check.

Layout of ``CKPT`` (nothing else names these files):

- ``config.json`` + ``model.safetensors``: the model (``save_pretrained``; its config carries the task,
  the classes, the sampling rate and the signal length it was trained on);
- ``tokenizer/``: the question tokenizer (QA checkpoints only);
- ``prepared_meta.json``: the prepared data's meta it was trained on (content hash, release version);
- ``train_options.json``: how it was trained (written last: a folder holding it is a finished run);
- ``checkpoints/checkpoint-N`` and ``metrics.jsonl``: the resumable Trainer states and the log, see
  ``ecgqa/training/trainer.py``; ``train_run.json`` marks a folder as a training run this tool started.

**Rate policy (one for every consumer).** Prepared data is compared with the checkpoint by
:func:`check_compatible`: a different task, answer space / grounding classes, sampling rate or signal
length is an error that names both values and the fix (re-prepare with ``--rate`` / ``--seconds``);
nothing is resampled silently. Signals that are *inputs* rather than prepared data (an upload to
``ecgqa serve``, an array passed to the predictor) are resampled with ``ecgqa.data.records.resample`` and
cut/padded with ``ecgqa.data.records.fit_length`` to the checkpoint's rate and length by the caller.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecgqa.files import apply_umask, atomic_write_json

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
PREPARED_META = "prepared_meta.json"
TRAIN_OPTIONS = "train_options.json"
#: the files a finished checkpoint has (the tokenizer only for QA)
REQUIRED = (CONFIG, WEIGHTS, PREPARED_META)


#: prepared tasks and the model task that trains on them ("attributes": dense labels in the upperbound schema)
MODEL_TASK_OF_DATA = {"qa": "qa", "upperbound": "upperbound", "attributes": "upperbound"}


def data_task(prepared_task: str | None) -> str | None:
    """The model task (``qa`` / ``upperbound``) that reads data prepared with ``prepared_task``."""
    return MODEL_TASK_OF_DATA.get(prepared_task or "", prepared_task)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, incomplete, or incompatible with the data)."""


@dataclass
class Checkpoint:
    """A loaded checkpoint folder: the model (eval mode, on its device), its tokenizer, the prepared meta."""

    model: Any
    tokenizer: Any
    meta: dict[str, Any]
    path: Path | None = None

    @property
    def task(self) -> str:
        return str(self.model.config.task)

    @property
    def classes(self) -> list[str]:
        return list(self.model.config.classes)

    @property
    def rate(self) -> int:
        return int(self.model.config.rate)

    @property
    def signal_length(self) -> int:
        return int(self.model.config.signal_length)

    @property
    def model_name(self) -> str:
        return str(self.model.config.model_name)

    @property
    def train_options(self) -> dict[str, Any]:
        """``train_options.json`` ({} when absent or unreadable: an older or hand-made checkpoint)."""
        if self.path is None or not (self.path / TRAIN_OPTIONS).is_file():
            return {}
        try:
            return json.loads((self.path / TRAIN_OPTIONS).read_text())
        except json.JSONDecodeError:
            return {}


def save_checkpoint(
    out: str | Path, model: Any, tokenizer: Any, meta: dict[str, Any], train_options: dict[str, Any] | None = None
) -> Path:
    """Write the loadable checkpoint into ``out``: built in a temporary sibling folder inside ``out``,
    then each entry renamed into place, ``train_options.json`` last (so its presence means complete).

    Only the names this module writes are replaced; anything else in ``out`` (the Trainer's
    ``checkpoints/``, ``metrics.jsonl``) is left alone.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".final-"))
    try:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        atomic_write_json(tmp / PREPARED_META, meta, indent=2)
        apply_umask(tmp)  # safetensors writes its weights 0600
        (out / TRAIN_OPTIONS).unlink(missing_ok=True)  # incomplete until the new one lands
        for item in sorted(tmp.iterdir()):
            target = out / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
        atomic_write_json(out / TRAIN_OPTIONS, train_options or {}, indent=2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_checkpoint(path: str | Path, device: Any = None) -> Checkpoint:
    """Load a checkpoint folder written by ``ecgqa train`` (model on ``device``: CUDA when available)."""
    # Here, not at the top: ecgqa/training/train.py imports this module's names and the CLI's parser imports it,
    # so torch and transformers load only when a checkpoint is read (`ecgqa --help` stays torch-free).
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from ecgqa.models import load_model

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} not found; train one with `ecgqa train --out {path}`")
    missing = [name for name in (CONFIG, WEIGHTS) if not (path / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{path} is not a finished checkpoint (no {', '.join(missing)}); if a run was interrupted, "
            f"continue it with `ecgqa train ... --out {path} --resume`"
        )
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar is noise for a demo or an eval run
    try:
        model = load_model(path).to(device).eval()
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer = None
    if model.config.task == "qa":
        tok_dir = path / TOKENIZER_DIR
        if not tok_dir.is_dir():
            raise CheckpointError(f"{tok_dir} missing: a QA checkpoint keeps its question tokenizer there")
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    meta_path = path / PREPARED_META
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return Checkpoint(model=model, tokenizer=tokenizer, meta=meta, path=path)


def _describe(ckpt: Any) -> str:
    path = getattr(ckpt, "path", None)
    return f"checkpoint {path}" if path else "the checkpoint"


def check_compatible(ckpt: Any, data: Any, *, tokenizer: bool = False, signal_only: bool = False) -> None:
    """Raise :class:`CheckpointError` unless prepared ``data`` can be fed to ``ckpt`` as it is.

    ``ckpt`` is a :class:`Checkpoint` or anything with ``task``, ``classes``, ``rate``,
    ``signal_length`` (a ``Predictor``); ``data`` a prepared directory reader (``.meta``, ``.path``).
    Checked: task, answer space / grounding classes (same names, same order), sampling rate and signal
    length (the rate policy in the module docstring), and with ``tokenizer=True`` (continuing training
    on new data) that the data's tokenizer has the checkpoint's vocabulary. ``signal_only=True`` checks
    only rate and signal length: an upperbound classifier reading the ECGs of QA data (LLM grounding).
    """
    meta = data.meta
    where = getattr(data, "path", "the prepared data")
    who = _describe(ckpt)
    if signal_only:
        _check_signal(ckpt, meta, where, who)
        return
    task = meta.get("task")
    if ckpt.task != data_task(task):
        raise CheckpointError(
            f"{who} is a {ckpt.task!r} model but {where} was prepared for task {task!r}; "
            f"use data prepared with `ecgqa prepare --task {ckpt.task}`"
        )
    classes = list(meta.get("classes") or [])
    if list(ckpt.classes) != classes:
        what = "answer classes" if task == "qa" else "grounding classes"
        first = next(
            (i for i, (a, b) in enumerate(zip(ckpt.classes, classes, strict=False)) if a != b),
            min(len(classes), len(ckpt.classes)),
        )
        raise CheckpointError(
            f"{who} predicts {len(ckpt.classes)} {what} that differ from the {len(classes)} of {where} "
            f"(first difference at index {first}; another release version?); use data of the version it was trained on"
        )
    _check_signal(ckpt, meta, where, who)
    ours = getattr(ckpt, "tokenizer", None) if tokenizer and task == "qa" else None
    if ours is not None and ours.get_vocab() != data.tokenizer.get_vocab():
        raise CheckpointError(
            f"the question tokenizer of {where} differs from the one {who} was trained with "
            f"(token ids would change); reuse the checkpoint's tokenizer/"
        )


def _check_signal(ckpt: Any, meta: dict[str, Any], where: Any, who: str) -> None:
    """The rate policy: prepared data must have the checkpoint's rate and signal length."""
    rate, length = int(meta.get("rate", -1)), int(meta.get("signal_length", -1))
    if (rate, length) != (int(ckpt.rate), int(ckpt.signal_length)):
        seconds = ckpt.signal_length / ckpt.rate
        raise CheckpointError(
            f"{where} holds {rate} Hz x {length} samples but {who} was trained on {ckpt.rate} Hz x "
            f"{ckpt.signal_length} samples; prepared data is never resampled on the fly: re-prepare with "
            f"`ecgqa prepare ... --rate {ckpt.rate} --seconds {seconds:g}`"
        )
