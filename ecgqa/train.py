"""``ecgqa train --data PREPARED --model NAME --out CKPT``: train a QA model or an upperbound classifier.

Built on ``transformers.Trainer``, which brings AdamW, warmup + decay schedules, gradient
accumulation, bf16/fp16, checkpoint rotation, best-model selection and resuming, and runs unchanged
under ``torchrun`` (multi-GPU, multi-node; gloo on CPU). What is ours:

- the loss (``ECGQATrainer.compute_loss``): BCE with logits over the answer space for QA (the
  reference baselines' loss), the labelled-class BCE for the upperbound classifiers;
- the metric (``compute_metrics``): the benchmark's exact match (sigmoid >= 0.5 over each question's
  valid classes, set equality) — for upperbound models, every labelled class right;
- a JSONL metrics log (``CKPT/metrics.jsonl``);
- the checkpoint layout: ``CKPT`` holds the final (best by EM when evaluating) model as
  ``save_pretrained`` output plus ``tokenizer/`` (QA) and ``prepared_meta.json``, everything
  ``ecgqa.load(CKPT)`` needs; ``CKPT/checkpoints/checkpoint-N`` are the Trainer's resumable states.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

TRAINER_DIR = "checkpoints"
METRICS_LOG = "metrics.jsonl"

#: per-model learning-rate defaults (ECGQA.md: 1e-4, 5e-5 for M3AE)
DEFAULT_LR = {"m3ae-small": 5e-5, "m3ae-base": 5e-5}


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--data", type=Path, required=True, help="prepared directory (`ecgqa prepare` output)")
    parser.add_argument("--model", required=True,
                        help="model variant: fusion-small, fusion-base, blind, deaf, m3ae-small, m3ae-base (QA); "
                        "se-wrn, resnet-attn (upperbound) — the table is ecgqa.models.MODELS")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--epochs", type=float, default=3.0, help="training epochs (ignored with --max-steps)")
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer updates to run (overrides --epochs)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per device per step")
    parser.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-4, 5e-5 for m3ae)")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (5e-4 is SE-WRN's)")
    parser.add_argument("--warmup", type=float, default=0.05, help="warmup: a ratio of all steps (<1) or a count")
    parser.add_argument("--schedule", default="cosine", help="decay after warmup (cosine, linear, constant, ...)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="mixed precision")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--eval-split", default="valid",
                        help="split for periodic EM evaluation and best-checkpoint choice ('none' to skip)")
    parser.add_argument("--eval-steps", type=int, default=None, help="evaluate/save every N steps (default: per epoch)")
    parser.add_argument("--save-total-limit", type=int, default=2, help="Trainer checkpoints kept")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                        help="resume from OUT's last checkpoint, or from the given checkpoint folder")
    parser.add_argument("--text-encoder", default=None, metavar="PATH_OR_ID",
                        help="initialise the text side from a pretrained transformers encoder (and use its tokenizer)")
    parser.add_argument("--max-question-len", type=int, default=64, help="question tokens kept")
    parser.add_argument("--workers", type=int, default=2, help="data loader worker processes")
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a model config field, e.g. --set hidden_size=256 --set num_layers=4")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny widths (ecgqa.models.TINY) for smoke runs and CI; --set fields still apply")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set hidden_size=256")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    overrides = _parse_overrides(args.set)
    if args.tiny:
        from ecgqa.models import tiny

        overrides = {**tiny(args.model), **overrides}
    ckpt = train(
        args.data, args.model, args.out,
        epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
        lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup, schedule=args.schedule,
        precision=args.precision, seed=args.seed, train_split=args.train_split,
        eval_split=None if args.eval_split.lower() == "none" else args.eval_split, eval_steps=args.eval_steps,
        save_total_limit=args.save_total_limit, resume=args.resume, text_encoder=args.text_encoder,
        max_question_len=args.max_question_len, num_workers=args.workers, logging_steps=args.logging_steps,
        overrides=overrides, quiet=args.quiet,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"checkpoint: {ckpt} (load it with ecgqa.load({str(ckpt)!r}))")
    return 0


# ------------------------------------------------------------------------------------------------


def _em_metrics(task: str):
    """compute_metrics for the Trainer: EM (and mean labelled-class accuracy for upperbound models)."""
    import numpy as np

    from ecgqa.metrics import exact_match, upperbound_correct

    def compute_metrics(pred: Any) -> dict[str, float]:
        logits = np.asarray(pred.predictions, dtype=np.float64)
        labels, mask = pred.label_ids
        probs = 1.0 / (1.0 + np.exp(-logits))
        if task == "qa":
            correct = exact_match(probs, labels, mask)
            return {"em": float(correct.mean())}
        correct = upperbound_correct(probs, labels, mask)
        mask = np.asarray(mask, dtype=bool)
        label_acc = ((probs >= 0.5) == np.asarray(labels, dtype=bool))[mask].mean() if mask.any() else float("nan")
        return {"em": float(correct.mean()), "label_accuracy": float(label_acc)}

    return compute_metrics


def _trainer_classes():
    """Our Trainer subclass and callbacks (defined lazily: transformers is a heavy import)."""
    import torch.nn.functional as F
    from transformers import Trainer, TrainerCallback

    from ecgqa.losses import labelled_bce

    class ECGQATrainer(Trainer):
        loss_is_scaled_for_ga = False  # our losses are per-batch means; let the Trainer divide for accumulation

        def __init__(self, *args: Any, task: str, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.task = task
            self.model_inputs = ("ecg", "ecg_mask", "input_ids", "attention_mask") if task == "qa" else ("ecg", "lead_mask")

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(**{k: inputs[k] for k in self.model_inputs if k in inputs})
            logits, labels = outputs.logits, inputs["labels"].to(outputs.logits.dtype)
            if self.task == "qa":
                loss = F.binary_cross_entropy_with_logits(logits, labels)
            else:
                loss = labelled_bce(logits, labels, inputs["label_mask"])
            return (loss, outputs) if return_outputs else loss

    class JsonlLog(TrainerCallback):
        """Appends every Trainer log (loss, lr, eval EM, ...) with its step and epoch as one JSON line."""

        def __init__(self, path: Path) -> None:
            self.path = path

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                record = {"step": state.global_step, "epoch": state.epoch, **logs}
                with self.path.open("a") as f:
                    f.write(json.dumps(record) + "\n")

    class StopAfter(TrainerCallback):
        """Stops (after saving) once ``step`` updates are done: an interrupted run, for resume tests."""

        def __init__(self, step: int) -> None:
            self.step = step

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= self.step:
                control.should_save = True
                control.should_training_stop = True
            return control

    return ECGQATrainer, JsonlLog, StopAfter


def train(
    data_dir: str | Path,
    model_name: str,
    out: str | Path,
    *,
    epochs: float = 3.0,
    max_steps: int | None = None,
    batch_size: int = 32,
    grad_accum: int = 1,
    lr: float | None = None,
    weight_decay: float = 0.01,
    warmup: float = 0.05,
    schedule: str = "cosine",
    precision: str = "fp32",
    seed: int = 0,
    train_split: str = "train",
    eval_split: str | None = "valid",
    eval_steps: int | None = None,
    save_steps: int | None = None,
    save_total_limit: int = 2,
    resume: bool | str | Path = False,
    stop_after: int | None = None,
    text_encoder: str | None = None,
    max_question_len: int = 64,
    num_workers: int = 0,
    logging_steps: int = 10,
    overrides: dict[str, Any] | None = None,
    quiet: bool = False,
    callbacks: list[Any] | None = None,
) -> Path:
    """Train ``model_name`` on the prepared directory ``data_dir`` and write the checkpoint ``out``.

    The evaluation split (if present) is scored with exact match every ``eval_steps`` (or per epoch)
    and the best-EM model is what lands in ``out``. ``resume=True`` continues from the last state
    in ``out/checkpoints`` (same step count, data order and schedule as an uninterrupted run).
    ``stop_after`` ends the run early after N updates, saving a resumable state (for tests and
    time-sliced jobs). ``overrides`` set model config fields (e.g. tiny widths). Returns ``out``.
    """
    import torch
    from transformers import PrinterCallback, TrainingArguments, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from ecgqa.data import ECGQADataset, PreparedData, UpperboundDataset, collate_qa, collate_upperbound
    from ecgqa.models import create_model, task_of

    data_dir, out = Path(data_dir), Path(out)
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    data = PreparedData(data_dir)
    task = task_of(model_name)
    if data.meta.get("task") != task:
        raise ValueError(
            f"{data_dir} was prepared for task {data.meta.get('task')!r} but {model_name!r} trains on {task!r} data; "
            f"run `ecgqa prepare --task {task}` (QA models need qa data, se-wrn/resnet-attn need upperbound data)"
        )
    for split in [train_split] + ([eval_split] if eval_split else []):
        if split not in data.splits:
            raise ValueError(f"{data_dir} has no split {split!r}; it holds {data.splits} (--eval-split none skips it)")
    if eval_split and not data.meta["splits"].get(eval_split):
        # e.g. the upperbound task has no samples from comparison-only splits: train without evaluation
        print(f"note: {data_dir} split {eval_split!r} is empty; training without periodic evaluation", file=sys.stderr)
        eval_split = None
    rank0 = int(os.environ.get("RANK", "0")) == 0

    # --- tokenizer, datasets, model
    tokenizer = None
    if task == "qa":
        if text_encoder:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(text_encoder)
        else:
            tokenizer = data.tokenizer
        train_ds = ECGQADataset(data, train_split, tokenizer=tokenizer, max_question_len=max_question_len)
        eval_ds = ECGQADataset(data, eval_split, tokenizer=tokenizer, max_question_len=max_question_len) if eval_split else None
        collate, label_names = collate_qa, ["labels", "valid_mask"]
        model_kwargs = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id or 0,
                            "max_question_len": max_question_len}
    else:
        if text_encoder:
            raise ValueError("--text-encoder applies to QA models only")
        train_ds = UpperboundDataset(data, train_split)
        eval_ds = UpperboundDataset(data, eval_split) if eval_split else None
        collate, label_names = collate_upperbound, ["labels", "label_mask"]
        model_kwargs = {}
    if len(train_ds) == 0:
        raise ValueError(f"{data_dir}: split {train_split!r} is empty; nothing to train on")

    set_seed(seed)
    model = create_model(
        model_name, text_encoder=text_encoder, classes=list(data.classes), rate=int(data.meta["rate"]),
        signal_length=int(data.meta["signal_length"]), **model_kwargs, **(overrides or {}),
    )

    # --- Trainer
    out.mkdir(parents=True, exist_ok=True)
    trainer_dir = out / TRAINER_DIR
    if eval_steps:
        strategy = {"eval_strategy": "steps", "eval_steps": eval_steps, "save_strategy": "steps", "save_steps": eval_steps}
    elif eval_ds is not None:
        strategy = {"eval_strategy": "epoch", "save_strategy": "epoch"}
    elif save_steps:
        strategy = {"eval_strategy": "no", "save_strategy": "steps", "save_steps": save_steps}
    else:
        strategy = {"eval_strategy": "no", "save_strategy": "epoch"}
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    args = TrainingArguments(
        output_dir=str(trainer_dir),
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        num_train_epochs=epochs,
        max_steps=max_steps if max_steps else -1,
        learning_rate=lr if lr is not None else DEFAULT_LR.get(model_name, 1e-4),
        weight_decay=weight_decay,
        adam_beta1=0.9,
        adam_beta2=0.98,
        optim="adamw_torch",
        lr_scheduler_type=schedule,
        warmup_steps=warmup if warmup < 1 else int(warmup),
        bf16=precision == "bf16",
        use_cpu=precision != "fp32" and not torch.cuda.is_available(),  # CPU autocast; the Trainer wants it said
        fp16=precision == "fp16",
        seed=seed,
        logging_steps=logging_steps,
        save_total_limit=save_total_limit,
        load_best_model_at_end=eval_ds is not None,
        metric_for_best_model="em" if eval_ds is not None else None,
        greater_is_better=True,
        label_names=label_names,
        remove_unused_columns=False,
        dataloader_num_workers=num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        dataloader_persistent_workers=num_workers > 0,
        disable_tqdm=quiet,
        log_level="warning",
        report_to="none",
        ddp_backend="gloo" if distributed and not torch.cuda.is_available() else None,
        ddp_find_unused_parameters=bool(text_encoder),
        **strategy,
    )
    ECGQATrainer, JsonlLog, StopAfter = _trainer_classes()
    extra = [JsonlLog(out / METRICS_LOG)] + ([StopAfter(stop_after)] if stop_after else []) + list(callbacks or [])
    trainer = ECGQATrainer(
        model=model, args=args, data_collator=collate, train_dataset=train_ds, eval_dataset=eval_ds,
        compute_metrics=_em_metrics(task), callbacks=extra, task=task,
    )
    if quiet:
        trainer.remove_callback(PrinterCallback)

    resume_from = None
    if resume:
        resume_from = get_last_checkpoint(str(trainer_dir)) if resume is True else str(resume)
        if resume_from is None or not Path(resume_from).is_dir():
            raise FileNotFoundError(
                f"nothing to resume: no checkpoint-N folder in {trainer_dir}" if resume is True
                else f"resume checkpoint {resume} not found"
            )
        if rank0 and not quiet:
            print(f"resuming from {resume_from}", file=sys.stderr)
    trainer.train(resume_from_checkpoint=resume_from)

    if stop_after and trainer.state.global_step < (trainer.state.max_steps or 0):
        return out  # interrupted on purpose: the resumable state is in out/checkpoints
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        _write_checkpoint(trainer.model, tokenizer, data.meta, out, train_options={
            "data": str(data_dir), "model": model_name, "train_split": train_split, "eval_split": eval_split,
            "global_step": trainer.state.global_step, "epoch": trainer.state.epoch, "world_size": args.world_size,
            "best_metric": trainer.state.best_metric, "best_checkpoint": trainer.state.best_model_checkpoint,
            "args": {k: v for k, v in args.to_dict().items() if isinstance(v, (int, float, str, bool, type(None)))},
        })
    trainer.accelerator.wait_for_everyone()
    return out


def _write_checkpoint(model: Any, tokenizer: Any, meta: dict[str, Any], out: Path,
                      train_options: dict[str, Any]) -> None:
    """Write the loadable checkpoint into ``out`` atomically: build it in a temp folder, then rename in."""
    import tempfile

    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".final-"))
    try:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "prepared_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "train_options.json").write_text(json.dumps(train_options, indent=2, default=str) + "\n")
        for item in sorted(tmp.iterdir()):
            target = out / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
