"""``ecgqa train --data PREPARED --model NAME --out CKPT``: train a QA model or an upperbound classifier.

Built on ``transformers.Trainer``, which brings the optimiser loop, gradient accumulation, bf16/fp16,
checkpoint rotation, best-model selection and resuming, and runs unchanged under ``torchrun``
(multi-GPU, multi-node; gloo on CPU). The run folder, the lock, resume and the Trainer classes are
``ecgqa/training/trainer.py``'s (shared with ``pretrain``). :func:`train` reads as its steps:

1. :func:`check_config` — every option checked up front, one-line errors naming the option;
2. :func:`check_task` — the prepared data is for the model's task;
3. ``claim_run_dir`` + ``RunLock`` — ``--out`` is ours (absent, empty, or a run this tool started) and no
   other run writes it;
4. ``resume_state`` — with ``--resume``, the checkpoint to continue and its checks (model, data);
5. :func:`load_datasets` — the prepared splits and the question tokenizer;
6. :func:`build_model` — the registered variant with ``--set`` overrides checked against its config;
7. :func:`build_trainer` — optimiser and schedule from the recipe (``ecgqa/training/recipes.py``), EM metric, JSONL log;
8. ``trainer.train`` (a finished run resumed is not trained again) and ``ecgqa.checkpoint.save_checkpoint``
   of the best-EM model.

The loss is the model's (``model(**batch, labels=..., label_mask=...)`` returns ``.loss``: the reference
baselines' BCE, ``ecgqa/models/losses.py``); the trainer never computes a second one.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from transformers import AutoTokenizer, PretrainedConfig, set_seed

from ecgqa.checkpoint import data_task, save_checkpoint
from ecgqa.data.prepared import PreparedData
from ecgqa.data.torch_datasets import ECGQADataset, UpperboundDataset, collate_qa, collate_upperbound
from ecgqa.evaluation.metrics import decide, exact_match, upperbound_correct
from ecgqa.models import (
    BERT_EMBEDDING_FAMILIES,
    create_config,
    create_model,
    family_of,
    load_bert_embeddings,
    task_of,
)
from ecgqa.training import fairseq_import
from ecgqa.training.recipes import describe_schedule, recipe_for
from ecgqa.training.trainer import (
    COMPLETE_FILES,
    METRICS_LOG,
    RUN_MARKER,
    RUN_OUTPUTS,
    TRAINER_DIR,
    ECGQATrainer,
    ResumeState,
    RunDisplay,
    RunLock,
    StepTimer,
    TrainConfig,
    claim_run_dir,
    display_callbacks,
    estimate_line,
    fill_from_recipe,
    final_options,
    find_resume_checkpoint,
    interrupted,
    is_complete,
    is_main_process,
    library_output,
    planned_steps,
    positive,
    resume_state,
    run_callbacks,
    run_or_restore,
    say,
    start_run_dir,
    training_arguments,
    world_size,
)

if TYPE_CHECKING:
    from transformers import Trainer

#: config fields the run sets itself (from the data, the tokenizer, the registry): not --set-able
RESERVED_FIELDS = frozenset(
    {
        "model_type",
        "model_name",
        "task",
        "classes",
        "num_classes",
        "rate",
        "signal_length",
        "in_d",
        "vocab_size",
        "pad_token_id",
        "sep_token_id",
        "max_question_len",
        "transformers_version",
    }
)
# ------------------------------------------------------------------------------------- 1. the config


def check_config(config: TrainConfig) -> TrainConfig:
    """Resolve the recipe into ``config`` (fields left None) and check every option; returns it.

    Errors are one line naming the option (``--grad-accum 0``, ``--epochs -1`` …), raised before
    anything is written.
    """
    config.data, config.out = Path(config.data), Path(config.out)
    task_of(config.model)  # "unknown model …" with the list
    recipe = recipe_for(config.recipe, config.model)
    positive(config.epochs, "--epochs", integer=False)
    positive(config.max_steps, "--max-steps")
    positive(config.batch_size, "--batch-size")
    positive(config.grad_accum, "--grad-accum")
    positive(config.eval_steps, "--eval-steps")
    positive(config.save_steps, "save_steps")
    positive(config.save_total_limit, "--save-total-limit")
    positive(config.logging_steps, "--logging-steps", allow_none=False)
    positive(config.max_question_len, "--max-question-len", allow_none=False)
    positive(config.lr, "--lr", integer=False)
    if config.weight_decay is not None and not (math.isfinite(config.weight_decay) and config.weight_decay >= 0):
        raise ValueError(f"--weight-decay {config.weight_decay!r}: must be a number >= 0")
    if config.warmup is not None and not (math.isfinite(config.warmup) and config.warmup >= 0):
        raise ValueError(f"--warmup {config.warmup!r}: must be a ratio in [0, 1) or a step count >= 1")
    if config.max_grad_norm is not None and not (math.isfinite(config.max_grad_norm) and config.max_grad_norm >= 0):
        raise ValueError(f"--max-grad-norm {config.max_grad_norm!r}: must be a number >= 0 (0 = no clipping)")
    if config.bert_embeddings is not None:
        if config.text_encoder:
            raise ValueError(
                "--bert-embeddings and --text-encoder exclude each other: the first initialises the "
                "reference embedding tables, the second replaces the text side by a whole encoder"
            )
        if not Path(config.bert_embeddings).is_dir():
            raise ValueError(
                f"--bert-embeddings {config.bert_embeddings}: not a folder; give a local "
                "bert-base-uncased folder in transformers format (config.json + weights)"
            )
    if config.init_from is not None and not Path(config.init_from).exists():
        raise ValueError(
            f"--init-from {config.init_from}: not found; give a fairseq-signals / ECG-FM .pt file or a "
            "checkpoint folder holding a w2v.* encoder"
        )
    if config.init_from is not None and family_of(config.model) not in fairseq_import.INIT_FAMILIES:
        raise ValueError(
            f"--init-from: {config.model} has no W2V encoder or ECG side to initialise; it applies to "
            f"the {', '.join(fairseq_import.INIT_FAMILIES)} families"
        )
    if config.num_workers < 0:
        raise ValueError(f"--workers {config.num_workers}: must be 0 (load in the main process) or more")

    return fill_from_recipe(config, recipe)


def dry_run(config: TrainConfig, *, measure: bool = True) -> str:
    """What ``--recipe NAME`` amounts to on this data: effective batch, updates, epochs, schedule; with
    ``measure``, the time per update and peak memory of a few real updates on this device (an hour or more
    is warned about)."""
    config = check_config(config)
    recipe = recipe_for(config.recipe, config.model)
    data = PreparedData(config.data)
    check_task(config, data)  # the same refusal a real run gives
    n_train = len(data.split(config.train_split))
    steps = planned_steps(config, n_train)
    epochs = steps * config.effective_batch / n_train if n_train else float("nan")
    optimizer = (
        "AdamW over all parameters (upstream Adam, decoupled decay)"
        if recipe.optimizer == "adam"
        else "AdamW (no decay on biases/norms)"
    )
    schedule = replace(recipe, lr=config.lr, schedule=config.schedule, warmup=config.warmup)  # as this run resolved
    batch = f"{config.batch_size} x grad-accum {config.grad_accum} x {world_size()} device(s)"
    lines = [
        f"recipe {config.recipe} for {config.model} ({recipe.source})",
        f"effective batch: {config.effective_batch} = batch {batch}",
        f"updates: {steps}" + ("" if config.max_steps else f" ({config.epochs:g} epochs)"),
        f"samples seen: {steps * config.effective_batch} = {epochs:.2f} epochs of {n_train} "
        f"{config.train_split} samples",
        f"optimizer: {optimizer}, betas {recipe.betas}, eps {recipe.eps:g}, weight decay {config.weight_decay:g}",
        f"lr schedule: {describe_schedule(schedule, steps)}",
        "gradient clipping: "
        + (
            f"max norm {config.max_grad_norm:g}"
            if config.max_grad_norm > 0
            else "none (max_grad_norm 0" + (", as upstream's clip_norm 0.0)" if config.recipe == "paper" else ")")
        ),
    ]
    if config.recipe == "paper" and family_of(config.model) in BERT_EMBEDDING_FAMILIES and not config.text_encoder:
        lines.append(
            "text embeddings: "
            + (
                f"word/position/type tables from {config.bert_embeddings} (as upstream's bert-base-uncased tables)"
                if config.bert_embeddings
                else "random init; upstream started from bert-base-uncased's word, position "
                "and token-type tables (load_bert_embedding: True): pass --bert-embeddings DIR to do the same"
            )
        )
    pre = None
    if config.init_from:
        pre = fairseq_import.read_pretrained(config.init_from)
        lines.append(f"initialised from: {config.init_from} ({pre.source} checkpoint; {pre.keymap.summary()})")
    if family_of(config.model) == "w2v-cmsc-rlm":
        lines.append(_w2v_model_line(config, pre))
    if measure:
        lines.append(measure_updates(config, data, steps))
    return "\n".join(lines)


#: batches timed by the dry run (after a first, warm-up one; fewer when the first took a minute)
MEASURED_BATCHES = 2


def measure_updates(config: TrainConfig, data: Any, steps: int) -> str:
    """Time a few real updates of ``config``'s model on this device (one batch each, in a temporary folder:
    nothing is kept) and extrapolate to ``steps`` updates of ``grad_accum`` batches: the estimate line."""
    if world_size() > 1:
        return "estimate: not measured under torchrun (a dry run times one process; run it without torchrun)"
    with tempfile.TemporaryDirectory(prefix="ecgqa-dry-run-") as tmp, library_output(verbose=config.verbose):
        probe = replace(
            config,
            out=Path(tmp) / "run",
            max_steps=MEASURED_BATCHES + 1,
            epochs=None,
            grad_accum=1,
            eval_split=None,
            resume=False,
            quiet=True,
            logging_steps=MEASURED_BATCHES + 1,
        )
        sets = load_datasets(probe, data)
        set_seed(config.seed)
        timer = StepTimer()
        trainer = build_trainer(probe, sets, build_model(probe, sets), callbacks=[timer])
        trainer.args.save_strategy = "no"
        trainer.train()
    done = len(timer.times) - 1  # updates made (the first is the warm-up)
    timed = done - 1 if done >= 2 else 1
    how = f"{timed} batch{'es' if timed > 1 else ''} of {config.batch_size}" + (
        ", its warm-up included" if done < 2 else ""
    )
    if config.grad_accum > 1:
        how += f", x grad-accum {config.grad_accum}"
    return estimate_line(steps, timer.per_step * config.grad_accum, how)


def _w2v_model_line(config: TrainConfig, pre: Any) -> str:
    """The encoder a w2v-cmsc-rlm run builds (its shapes from ``--init-from`` when given) and the fine-tuning
    regularisation, which the published recipe sets in its model section (base_total.yaml)."""
    arch = fairseq_import.init_overrides(config.model, pre, config.overrides) if pre is not None else {}
    c = create_config(config.model, **arch, **config.overrides)
    convs = ", ".join(f"({d}, {k}, {s})" for d, k, s in c.conv_feature_layers)
    return (
        f"model: {c.encoder_layers} {'pre' if c.layer_norm_first else 'post'}-norm layers of {c.encoder_embed_dim} "
        f"(ffn {c.encoder_ffn_embed_dim}, {c.encoder_attention_heads} heads), convs [{convs}] "
        f"{c.extractor_mode}, positional conv {c.conv_pos}/{c.conv_pos_groups}"
        + (" (from the checkpoint)" if pre is not None else "")
        + f"; dropout {c.dropout:g}, attention dropout {c.attention_dropout:g}, activation dropout "
        f"{c.activation_dropout:g}, feature_grad_mult {c.feature_grad_mult:g}, final dropout {c.final_dropout:g}"
    )


# ------------------------------------------------------------------------------------- 3. data


@dataclass
class Datasets:
    data: Any  # PreparedData
    task: str
    train: Any
    eval: Any | None
    tokenizer: Any | None
    collate: Any
    label_names: list[str]


def _load_text_encoder_tokenizer(name: str) -> Any:
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise ValueError(
            f"--text-encoder {name}: cannot load it ({'offline, and ' if offline else ''}not a local model folder"
            f"{' nor in the Hugging Face cache' if offline else ' or hub id'}); give a folder holding a "
            f"transformers encoder and its tokenizer"
        ) from e


def check_task(config: TrainConfig, data: Any) -> str:
    """The model's task ("qa" / "upperbound"), after checking the prepared data is for it."""
    task = task_of(config.model)
    if data_task(data.meta.get("task")) != task:
        raise ValueError(
            f"{config.data} was prepared for task {data.meta.get('task')!r} but {config.model!r} trains on {task!r} "
            f"data; run `ecgqa prepare --task {task}` (QA models need qa data, se-wrn/resnet-attn need upperbound data)"
        )
    return task


#: the usual splits of a prepared folder; data with only one of them uses it (said on stderr)
USUAL_SPLITS = ("train", "valid", "test")


def resolve_splits(config: TrainConfig, data: Any) -> None:
    """``--train-split`` and ``--eval-split`` against the splits ``data`` has: the default train split
    falls back to the only usual split present; the default ``valid`` evaluation split is skipped when the
    data has none (said); a split named explicitly must exist."""
    usual = [s for s in USUAL_SPLITS if s in data.splits]
    if config.train_split == "train" and "train" not in data.splits and len(usual) == 1:
        config.train_split = usual[0]
        say(config, f"note: {config.data} has one split, {usual[0]!r}: training on it (--train-split)")
    if config.eval_split == "valid" and "valid" not in data.splits:
        config.eval_split = None
        say(config, f"note: {config.data} has no 'valid' split; training without periodic evaluation (--eval-split)")
    if config.eval_split == config.train_split and config.eval_split is not None and len(usual) == 1:
        config.eval_split = None
    for split in [config.train_split] + ([config.eval_split] if config.eval_split else []):
        if split not in data.splits:
            raise ValueError(
                f"{config.data} has no split {split!r}; it holds {data.splits} (--eval-split none skips it)"
            )


def load_datasets(config: TrainConfig, data: Any = None, tokenizer: Any = None) -> Datasets:
    """The prepared splits of ``data`` (default: read ``config.data``) as torch datasets; QA questions are
    tokenized with ``tokenizer`` (default: the text encoder's, else the prepared data's)."""
    data = data if data is not None else PreparedData(config.data)
    task = check_task(config, data)
    resolve_splits(config, data)
    eval_split = config.eval_split
    if eval_split and not data.meta["splits"].get(eval_split):
        # e.g. the upperbound task has no samples from comparison-only splits: train without evaluation
        say(config, f"note: {config.data} split {eval_split!r} is empty; training without periodic evaluation")
        eval_split = config.eval_split = None
    if task == "qa":
        if tokenizer is None:
            tokenizer = _load_text_encoder_tokenizer(config.text_encoder) if config.text_encoder else data.tokenizer
        kw = {"tokenizer": tokenizer, "max_question_len": config.max_question_len}
        train_ds = ECGQADataset(data, config.train_split, **kw)
        eval_ds = ECGQADataset(data, eval_split, **kw) if eval_split else None
        collate, label_names = collate_qa, ["labels", "valid_mask"]
    else:
        if config.text_encoder:
            raise ValueError("--text-encoder applies to QA models only")
        train_ds = UpperboundDataset(data, config.train_split)
        eval_ds = UpperboundDataset(data, eval_split) if eval_split else None
        collate, label_names = collate_upperbound, ["labels", "label_mask"]
    if len(train_ds) == 0:
        raise ValueError(f"{config.data}: split {config.train_split!r} is empty; nothing to train on")
    return Datasets(data, task, train_ds, eval_ds, tokenizer, collate, label_names)


# ------------------------------------------------------------------------------------- 4. model


def check_overrides(model: str, overrides: dict[str, Any]) -> None:
    """``--set FIELD=VALUE``: the field must exist in the model's config and the value fit its type."""
    generic = set(PretrainedConfig().to_dict())
    defaults = {k: v for k, v in create_config(model).to_dict().items() if k not in generic}
    for key, value in overrides.items():
        if key in RESERVED_FIELDS:
            raise ValueError(
                f"--set {key}={value!r}: {key} comes from the prepared data or the tokenizer, not --set "
                f"(max question length: --max-question-len)"
            )
        if key not in defaults:
            known = ", ".join(sorted(k for k in defaults if k not in RESERVED_FIELDS))
            raise ValueError(f"--set {key}={value!r}: {model} has no config field {key!r}; its fields: {known}")
        default = defaults[key]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= (1 if default >= 1 else 0)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
            if ok and "dropout" in key:
                ok = value < 1
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            ok = default is None or isinstance(value, type(default))
        if not ok:
            kind = {"bool": "true or false", "int": "an integer", "float": "a number >= 0", "str": "a string"}.get(
                type(default).__name__, f"a {type(default).__name__}"
            )
            extra = " >= 1" if isinstance(default, int) and not isinstance(default, bool) and default >= 1 else ""
            if isinstance(default, float) and "dropout" in key:
                kind = "a probability in [0, 1)"
            raise ValueError(f"--set {key}={value!r}: expected {kind}{extra} (the default is {default!r})")


def build_model(config: TrainConfig, sets: Datasets) -> Any:
    check_overrides(config.model, config.overrides)
    kwargs: dict[str, Any] = {}
    if sets.task == "qa":
        tok = sets.tokenizer
        kwargs = {
            "vocab_size": len(tok),
            "pad_token_id": tok.pad_token_id or 0,
            "sep_token_id": tok.sep_token_id,
            "max_question_len": config.max_question_len,
        }
    meta = sets.data.meta
    pretrained = None
    if config.init_from:
        pretrained = fairseq_import.read_pretrained(config.init_from)
        kwargs.update(fairseq_import.init_overrides(config.model, pretrained, config.overrides))
    try:
        model = create_model(
            config.model,
            text_encoder=config.text_encoder,
            classes=list(sets.data.classes),
            rate=int(meta["rate"]),
            signal_length=int(meta["signal_length"]),
            **kwargs,
            **config.overrides,
        )
    except OSError as e:
        raise ValueError(
            f"--text-encoder {config.text_encoder}: cannot load its weights ({e.__class__.__name__})"
        ) from e
    except (ZeroDivisionError, TypeError, AssertionError) as e:
        raise ValueError(f"--set {config.overrides}: the model cannot be built with these values ({e})") from e
    if config.bert_embeddings:
        load_bert_embeddings(model, config.bert_embeddings)
    if pretrained is not None:
        summary = fairseq_import.init_model(model, pretrained)
        if is_main_process() and not config.quiet:
            print(summary)
    return model


# ------------------------------------------------------------------------------------- 5. trainer


def _em_metrics(task: str):
    """compute_metrics for the Trainer: EM (and mean labelled-class accuracy for upperbound models)."""

    def compute_metrics(pred: Any) -> dict[str, float]:
        logits = np.asarray(pred.predictions, dtype=np.float64)
        labels, mask = pred.label_ids
        probs = 1.0 / (1.0 + np.exp(-logits))
        if task == "qa":
            return {"em": float(exact_match(probs, labels, mask).mean())}
        correct = upperbound_correct(probs, labels, mask)
        mask = np.asarray(mask, dtype=bool)
        label_acc = (decide(probs) == np.asarray(labels, dtype=bool))[mask].mean() if mask.any() else float("nan")
        return {"em": float(correct.mean()), "label_accuracy": float(label_acc)}

    return compute_metrics


def build_trainer(
    config: TrainConfig,
    sets: Datasets,
    model: Any,
    *,
    resume: ResumeState | None = None,
    stop_after: int | None = None,
    callbacks: list[Any] | None = None,
) -> Trainer:
    args = training_arguments(config, sets.eval is not None, sets.label_names)
    trainer = ECGQATrainer(
        model=model,
        args=args,
        data_collator=sets.collate,
        train_dataset=sets.train,
        eval_dataset=sets.eval,
        processing_class=sets.tokenizer,  # saved in every checkpoint-N: --resume reuses the run's tokenizer
        compute_metrics=_em_metrics(sets.task),
        callbacks=run_callbacks(config, resume, stop_after) + list(callbacks or []),
        task=sets.task,
        recipe=recipe_for(config.recipe, config.model),
        schedule=config.schedule,
    )
    display_callbacks(trainer, RunDisplay(quiet=config.quiet, desc=config.model))
    return trainer


# ------------------------------------------------------------------------------------- 6. the run


def train(config: TrainConfig, *, stop_after: int | None = None, callbacks: list[Any] | None = None) -> Path:
    """Train ``config.model`` on ``config.data`` and write the checkpoint ``config.out``; returns it.

    The evaluation split (if present) is scored with exact match every ``eval_steps`` (or per epoch)
    and the best-EM model is what lands in ``out``. ``resume=True`` continues from the newest complete
    state in ``out/checkpoints`` (same step count, data order, schedule and tokenizer as an uninterrupted
    run); a run already at its last step is not trained again, its final output is only rewritten.
    ``stop_after`` ends the run early after N updates, saving a resumable state (tests, time-sliced jobs).
    """
    config = check_config(config)
    data = PreparedData(config.data)
    check_task(config, data)
    claim_run_dir(config)  # before anything is written: --out is ours
    with RunLock(config.out), library_output(verbose=config.verbose):
        resume = resume_state(config, data)  # every check before anything changes
        tokenizer = None
        if resume is not None:
            say(config, f"resuming from {resume.path} (step {resume.step})")
            if (resume.path / "tokenizer_config.json").is_file():
                tokenizer = AutoTokenizer.from_pretrained(str(resume.path))
        sets = load_datasets(config, data, tokenizer=tokenizer)
        set_seed(config.seed)
        model = build_model(config, sets)
        start_run_dir(config)  # the options, data and model are good: clear an earlier run, write the marker
        trainer = build_trainer(config, sets, model, resume=resume, stop_after=stop_after, callbacks=callbacks)
        planned = planned_steps(config, len(sets.train))
        if not run_or_restore(config, trainer, resume, planned, best=sets.eval is not None, stop_after=stop_after):
            return config.out  # interrupted on purpose: the resumable state is in out/checkpoints
        trainer.accelerator.wait_for_everyone()
        if trainer.is_world_process_zero():
            save_checkpoint(
                config.out,
                trainer.model,
                sets.tokenizer,
                sets.data.meta,
                train_options={
                    **final_options(config, trainer),
                    "best_metric": trainer.state.best_metric,
                    "best_checkpoint": trainer.state.best_model_checkpoint,
                    "args": {
                        k: v
                        for k, v in trainer.args.to_dict().items()
                        if isinstance(v, (int, float, str, bool, type(None)))
                    },
                },
            )
        trainer.accelerator.wait_for_everyone()
    return config.out


# names that lived here before ecgqa/training/trainer.py was carved out (old imports keep working)
__all__ = [
    "COMPLETE_FILES",
    "METRICS_LOG",
    "RUN_MARKER",
    "RUN_OUTPUTS",
    "TRAINER_DIR",
    "TrainConfig",
    "check_config",
    "claim_run_dir",
    "dry_run",
    "fill_from_recipe",
    "find_resume_checkpoint",
    "interrupted",
    "is_complete",
    "train",
]
