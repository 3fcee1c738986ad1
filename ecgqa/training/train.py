"""Train a QA model or an upperbound classifier (``ecgqa train --data PREPARED --model NAME --out CKPT``).

Built on ``transformers.Trainer``, which brings the optimiser loop, gradient accumulation, bf16/fp16,
checkpoint rotation, best-model selection and resuming, and runs unchanged under ``torchrun``
(multi-GPU, multi-node; gloo on CPU). :func:`train` reads as its steps:

1. :func:`check_config` — every option checked up front, one-line errors naming the option;
2. :func:`claim_run_dir` — ``--out`` is ours (absent, empty, or a run this command started), never a user's folder;
3. :func:`load_datasets` — the prepared splits and the question tokenizer;
4. :func:`build_model` — the registered variant with ``--set`` overrides checked against its config;
5. :func:`build_trainer` — optimiser and schedule from the recipe (``ecgqa/training/recipes.py``), EM metric, JSONL log;
6. :func:`find_resume_checkpoint` — the newest *complete* ``checkpoint-N`` (torn ones skipped, said so);
7. ``trainer.train`` and ``ecgqa.checkpoint.save_checkpoint`` of the best-EM model.

The loss is the model's (``model(**batch, labels=..., label_mask=...)`` returns ``.loss``: the reference
baselines' BCE, ``ecgqa/models/losses.py``); the trainer never computes a second one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ecgqa.checkpoint import PREPARED_META, TOKENIZER_DIR, TRAIN_OPTIONS, data_task, save_checkpoint
from ecgqa.training.errors import clear_error
from ecgqa.training.recipes import (
    DEFAULT_RECIPE,
    describe_schedule,
    grad_accum_for,
    recipe_for,
    tri_stage_factor,
)

TRAINER_DIR = "checkpoints"
METRICS_LOG = "metrics.jsonl"
#: written first into --out: proves the folder is a training run this command started
RUN_MARKER = "train_run.json"
#: what a run writes into --out (a fresh run replaces exactly these)
RUN_OUTPUTS = (
    TRAINER_DIR,
    METRICS_LOG,
    RUN_MARKER,
    TRAIN_OPTIONS,
    PREPARED_META,
    TOKENIZER_DIR,
    "config.json",
    "model.safetensors",
    "generation_config.json",
)
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
#: a Trainer checkpoint-N is complete once these exist (trainer_state.json is written last)
COMPLETE_FILES = ("trainer_state.json",)


@dataclass
class TrainConfig:
    """Everything one training run needs. Fields left None take the recipe's value (``ecgqa/training/recipes.py``)."""

    data: Path
    model: str
    out: Path
    recipe: str = DEFAULT_RECIPE
    # length: updates (max_steps) or epochs
    max_steps: int | None = None
    epochs: float | None = None
    # batch: per device; the effective batch (batch × accumulation × devices) comes from the recipe
    batch_size: int | None = None
    grad_accum: int | None = None
    effective_batch: int | None = None
    # optimiser and schedule
    lr: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    warmup: float | None = None
    max_grad_norm: float | None = None  # gradient clipping; 0 = none (the paper recipe's, upstream clip_norm 0.0)
    precision: str = "fp32"
    seed: int = 0
    # data and evaluation
    train_split: str = "train"
    eval_split: str | None = "valid"
    eval_steps: int | None = None
    save_steps: int | None = None
    save_total_limit: int | None = 2
    resume: bool | str | Path = False
    text_encoder: str | None = None
    bert_embeddings: str | None = None  # local bert-base-uncased folder: initial word/position/type tables
    init_from: str | None = (
        None  # pretrained W2V encoder: fairseq .pt or a folder with w2v.* (ecgqa/training/fairseq_import.py)
    )
    max_question_len: int = 64
    num_workers: int = 0
    logging_steps: int = 10
    overrides: dict[str, Any] = field(default_factory=dict)
    quiet: bool = False


# ----------------------------------------------------------------------------------------------- CLI


def interrupted(out: Path) -> int:
    """Ctrl-C in ``train`` / ``pretrain``: the generic advice (re-run the same command) would start afresh,
    and a fresh run clears ``OUT/checkpoints``; point at ``--resume`` instead. Exit status 130 as dispatch."""
    folder = Path(out) / TRAINER_DIR
    saved = [p for p in folder.glob("checkpoint-*") if _step_of(p) >= 0] if folder.is_dir() else []
    if not saved:
        print(
            "interrupted before the first checkpoint was saved; re-run the same command to start again", file=sys.stderr
        )
        return 130
    newest = max(saved, key=_step_of)
    print(
        f"interrupted; continue with the same command plus --resume (newest saved state: {newest}); without "
        f"--resume the run starts afresh and deletes {folder}",
        file=sys.stderr,
    )
    return 130


# ------------------------------------------------------------------------------------- 1. the config


def _world_size() -> int:
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def _positive(value: Any, option: str, *, allow_none: bool = True, integer: bool = True) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        kind = "a positive integer" if integer else "a positive number"
        raise ValueError(f"{option} {value!r}: must be {kind}")


def check_config(config: TrainConfig) -> TrainConfig:
    """Resolve the recipe into ``config`` (fields left None) and check every option; returns it.

    Errors are one line naming the option (``--grad-accum 0``, ``--epochs -1`` …), raised before
    anything is written.
    """
    from ecgqa.models import task_of

    config.data, config.out = Path(config.data), Path(config.out)
    task_of(config.model)  # "unknown model …" with the list
    recipe = recipe_for(config.recipe, config.model)
    _positive(config.epochs, "--epochs", integer=False)
    _positive(config.max_steps, "--max-steps")
    _positive(config.batch_size, "--batch-size")
    _positive(config.grad_accum, "--grad-accum")
    _positive(config.eval_steps, "--eval-steps")
    _positive(config.save_steps, "save_steps")
    _positive(config.save_total_limit, "--save-total-limit")
    _positive(config.logging_steps, "--logging-steps", allow_none=False)
    _positive(config.max_question_len, "--max-question-len", allow_none=False)
    _positive(config.lr, "--lr", integer=False)
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
    if config.init_from is not None:
        from ecgqa.models import family_of
        from ecgqa.training.fairseq_import import INIT_FAMILIES

        if family_of(config.model) not in INIT_FAMILIES:
            raise ValueError(
                f"--init-from: {config.model} has no W2V encoder or ECG side to initialise; it applies to "
                f"the {', '.join(INIT_FAMILIES)} families"
            )
    if config.num_workers < 0:
        raise ValueError(f"--workers {config.num_workers}: must be 0 (load in the main process) or more")

    return fill_from_recipe(config, recipe)


def fill_from_recipe(config: TrainConfig, recipe: Any) -> TrainConfig:
    """The recipe fills what the user did not set (``train`` and ``pretrain``); returns ``config``."""
    if config.max_steps is None and config.epochs is None:
        config.max_steps, config.epochs = recipe.max_steps, recipe.epochs
    if config.batch_size is None:
        config.batch_size = recipe.batch_size
        if recipe.effective_batch and config.grad_accum is None:
            # the reference per-device batch, made smaller where more devices share the effective batch
            fits = [
                b
                for b in range(min(recipe.batch_size, recipe.effective_batch // _world_size()), 0, -1)
                if recipe.effective_batch % (b * _world_size()) == 0
            ]
            config.batch_size = fits[0] if fits else recipe.batch_size  # none fits: grad_accum_for says so
    if config.grad_accum is None:
        config.effective_batch = config.effective_batch or recipe.effective_batch
        config.grad_accum = (
            grad_accum_for(config.effective_batch, config.batch_size, _world_size()) if config.effective_batch else 1
        )
    config.effective_batch = config.batch_size * config.grad_accum * _world_size()
    config.lr = config.lr if config.lr is not None else recipe.lr
    config.weight_decay = config.weight_decay if config.weight_decay is not None else recipe.weight_decay
    config.schedule = config.schedule or recipe.schedule
    config.warmup = config.warmup if config.warmup is not None else recipe.warmup
    config.max_grad_norm = config.max_grad_norm if config.max_grad_norm is not None else recipe.max_grad_norm
    return config


def dry_run(config: TrainConfig) -> str:
    """What ``--recipe NAME`` amounts to on this data: effective batch, updates, epochs, schedule."""
    from ecgqa.data.prepared import PreparedData

    config = check_config(config)
    recipe = recipe_for(config.recipe, config.model)
    data = PreparedData(config.data)
    check_task(config, data)  # the same refusal a real run gives
    n_train = len(data.split(config.train_split))
    # as the Trainer counts: each device's loader has ceil(n / devices / batch) batches; an update takes grad_accum
    batches = math.ceil(math.ceil(n_train / _world_size()) / config.batch_size)
    per_epoch = max(math.ceil(batches / config.grad_accum), 1)
    steps = config.max_steps or math.ceil((config.epochs or 0) * per_epoch)
    epochs = steps * config.effective_batch / n_train if n_train else float("nan")
    optimizer = (
        "AdamW over all parameters (upstream Adam, decoupled decay)"
        if recipe.optimizer == "adam"
        else "AdamW (no decay on biases/norms)"
    )
    batch = f"{config.batch_size} x grad-accum {config.grad_accum} x {_world_size()} device(s)"
    lines = [
        f"recipe {config.recipe} for {config.model} ({recipe.source})",
        f"effective batch: {config.effective_batch} = batch {batch}",
        f"updates: {steps}" + ("" if config.max_steps else f" ({config.epochs:g} epochs)"),
        f"samples seen: {steps * config.effective_batch} = "
        f"{epochs:.2f} epochs of {n_train} {config.train_split} samples",
        f"optimizer: {optimizer}, betas {recipe.betas}, eps {recipe.eps:g}, weight decay {config.weight_decay:g}",
        f"lr schedule: {describe_schedule(_schedule_view(config, recipe), steps)}",
        "gradient clipping: "
        + (
            f"max norm {config.max_grad_norm:g}"
            if config.max_grad_norm > 0
            else "none (max_grad_norm 0" + (", as upstream's clip_norm 0.0)" if config.recipe == "paper" else ")")
        ),
    ]
    from ecgqa.models import BERT_EMBEDDING_FAMILIES, family_of

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
        from ecgqa.training.fairseq_import import read_pretrained

        pre = read_pretrained(config.init_from)
        lines.append(f"initialised from: {config.init_from} ({pre.source} checkpoint; {pre.keymap.summary()})")
    if family_of(config.model) == "w2v-cmsc-rlm":
        lines.append(_w2v_model_line(config, pre))
    return "\n".join(lines)


def _w2v_model_line(config: TrainConfig, pre: Any) -> str:
    """The encoder a w2v-cmsc-rlm run builds (its shapes from ``--init-from`` when given) and the fine-tuning
    regularisation, which the published recipe sets in its model section (base_total.yaml)."""
    from ecgqa.models import create_config
    from ecgqa.training.fairseq_import import init_overrides

    arch = init_overrides(config.model, pre, config.overrides) if pre is not None else {}
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


@dataclass
class _ScheduleView:
    lr: float
    schedule: str
    warmup: float
    phase_ratio: tuple[float, float, float]
    init_lr_scale: float
    final_lr_scale: float


def _schedule_view(config: TrainConfig, recipe: Any) -> Any:
    return _ScheduleView(
        config.lr, config.schedule, config.warmup, recipe.phase_ratio, recipe.init_lr_scale, recipe.final_lr_scale
    )


# ------------------------------------------------------------------------------------- 2. --out


def _is_run_dir(out: Path) -> bool:
    return (out / RUN_MARKER).is_file() or (out / TRAIN_OPTIONS).is_file() or (out / TRAINER_DIR).is_dir()


def claim_run_dir(config: TrainConfig) -> None:
    """``--out`` must be absent, empty, or a run this command started; a fresh run clears its own outputs.

    A file, or a folder holding anything else, is refused (``ecgqa.files.claim_output_dir``): the run
    never deletes what it did not write. With ``--resume`` the previous run's state is kept.
    """
    from ecgqa.files import claim_output_dir

    if int(os.environ.get("RANK", "0")) != 0:
        return  # rank 0 decides (and clears); the others would race with its clean-up
    out = config.out
    if not (out.is_dir() and _is_run_dir(out)):
        claim_output_dir(out, marker=RUN_MARKER, what="training run")
    if config.resume:
        return
    for name in RUN_OUTPUTS:  # a fresh run into our own folder: nothing of the old run may mix in
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def _write_marker(config: TrainConfig) -> None:
    from ecgqa.files import atomic_write_json

    config.out.mkdir(parents=True, exist_ok=True)
    if not (config.out / RUN_MARKER).is_file():
        atomic_write_json(
            config.out / RUN_MARKER,
            {"format": "ecgqa-train-run", "model": config.model, "data": str(config.data)},
            indent=2,
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
    from transformers import AutoTokenizer

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
    from ecgqa.models import task_of

    task = task_of(config.model)
    if data_task(data.meta.get("task")) != task:
        raise ValueError(
            f"{config.data} was prepared for task {data.meta.get('task')!r} but {config.model!r} trains on {task!r} "
            f"data; run `ecgqa prepare --task {task}` (QA models need qa data, se-wrn/resnet-attn need upperbound data)"
        )
    return task


def load_datasets(config: TrainConfig, tokenizer: Any = None) -> Datasets:
    """The prepared splits as torch datasets; QA questions are tokenized with ``tokenizer`` (default:
    the text encoder's, else the prepared data's)."""
    from ecgqa.data.prepared import PreparedData
    from ecgqa.data.torch_datasets import ECGQADataset, UpperboundDataset, collate_qa, collate_upperbound

    data = PreparedData(config.data)
    task = check_task(config, data)
    eval_split = config.eval_split
    for split in [config.train_split] + ([eval_split] if eval_split else []):
        if split not in data.splits:
            raise ValueError(
                f"{config.data} has no split {split!r}; it holds {data.splits} (--eval-split none skips it)"
            )
    if eval_split and not data.meta["splits"].get(eval_split):
        # e.g. the upperbound task has no samples from comparison-only splits: train without evaluation
        print(
            f"note: {config.data} split {eval_split!r} is empty; training without periodic evaluation", file=sys.stderr
        )
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
    from transformers import PretrainedConfig

    from ecgqa.models import create_config

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
    from ecgqa.models import create_model

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
        from ecgqa.training.fairseq_import import init_overrides, read_pretrained

        pretrained = read_pretrained(config.init_from)
        kwargs.update(init_overrides(config.model, pretrained, config.overrides))
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
        from ecgqa.models import load_bert_embeddings

        load_bert_embeddings(model, config.bert_embeddings)
    if pretrained is not None:
        from ecgqa.training.fairseq_import import init_model

        summary = init_model(model, pretrained)
        if int(os.environ.get("RANK", "0")) == 0 and not config.quiet:
            print(summary)
    return model


# ------------------------------------------------------------------------------------- 5. trainer


def _em_metrics(task: str):
    """compute_metrics for the Trainer: EM (and mean labelled-class accuracy for upperbound models)."""
    import numpy as np

    from ecgqa.evaluation.metrics import decide, exact_match, upperbound_correct

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


def _trainer_classes():
    """Our Trainer subclass and callbacks (defined lazily: transformers is a heavy import)."""
    import torch
    from transformers import Trainer, TrainerCallback

    class ECGQATrainer(Trainer):
        loss_is_scaled_for_ga = False  # our losses are per-batch means; let the Trainer divide for accumulation

        def __init__(self, *args: Any, task: str, run: TrainConfig, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.task = task
            self.run = run
            self.recipe = recipe_for(run.recipe, run.model)
            self.model_inputs = (
                ("ecg", "ecg_mask", "input_ids", "attention_mask") if task == "qa" else ("ecg", "lead_mask")
            )

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            batch = {k: inputs[k] for k in self.model_inputs if k in inputs}
            batch["labels"] = inputs["labels"]
            if "label_mask" in inputs:
                batch["label_mask"] = inputs["label_mask"]
            outputs = model(**batch)
            if outputs.loss is None:
                raise RuntimeError(f"{type(model).__name__} returned no loss for a batch with labels")
            return (outputs.loss, outputs) if return_outputs else outputs.loss

        def create_optimizer(self, model=None):
            if self.recipe.optimizer != "adam":
                return super().create_optimizer(model) if model is not None else super().create_optimizer()
            if self.optimizer is None:  # upstream Adam: decoupled decay on every parameter
                params = [p for p in self.model.parameters() if p.requires_grad]
                self.optimizer = torch.optim.AdamW(
                    params,
                    lr=self.args.learning_rate,
                    betas=self.recipe.betas,
                    eps=self.recipe.eps,
                    weight_decay=self.args.weight_decay,
                )
            return self.optimizer

        def create_scheduler(self, num_training_steps: int, optimizer=None):
            if self.run.schedule != "tri_stage":
                return super().create_scheduler(num_training_steps, optimizer)
            if self.lr_scheduler is None:
                r = self.recipe
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                    optimizer or self.optimizer,
                    lambda step: tri_stage_factor(
                        step, num_training_steps, r.phase_ratio, r.init_lr_scale, r.final_lr_scale
                    ),
                )
            return self.lr_scheduler

    class JsonlLog(TrainerCallback):
        """Appends every Trainer log (loss, lr, eval EM, ...) with its step and epoch as one JSON line."""

        def __init__(self, path: Path) -> None:
            self.path = path

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                record = {"step": state.global_step, "epoch": state.epoch, **logs}
                with self.path.open("a") as f:
                    f.write(json.dumps(record) + "\n")

    class UmaskModes(TrainerCallback):
        """Every ``checkpoint-N`` follows the umask like our own files (safetensors writes 0600)."""

        def on_save(self, args, state, control, **kwargs):
            from ecgqa.files import apply_umask

            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                apply_umask(folder)

    class StopAfter(TrainerCallback):
        """Stops (after saving) once ``step`` updates are done: an interrupted run, for resume tests."""

        def __init__(self, step: int) -> None:
            self.step = step

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= self.step:
                control.should_save = True
                control.should_training_stop = True
            return control

    return ECGQATrainer, JsonlLog, StopAfter, UmaskModes


def _training_arguments(config: TrainConfig, has_eval: bool, label_names: list[str]) -> Any:
    import torch
    from transformers import TrainingArguments

    if config.eval_steps:
        strategy = {
            "eval_strategy": "steps",
            "eval_steps": config.eval_steps,
            "save_strategy": "steps",
            "save_steps": config.eval_steps,
        }
    elif has_eval:
        strategy = {"eval_strategy": "epoch", "save_strategy": "epoch"}
    elif config.save_steps:
        strategy = {"eval_strategy": "no", "save_strategy": "steps", "save_steps": config.save_steps}
    else:
        strategy = {"eval_strategy": "no", "save_strategy": "epoch"}
    warmup = config.warmup if config.schedule != "tri_stage" else 0
    return TrainingArguments(
        output_dir=str(config.out / TRAINER_DIR),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        num_train_epochs=config.epochs or 1.0,
        max_steps=config.max_steps or -1,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        adam_beta1=0.9,
        adam_beta2=0.98,
        adam_epsilon=1e-8,
        optim="adamw_torch",
        lr_scheduler_type=config.schedule if config.schedule != "tri_stage" else "constant",
        warmup_steps=warmup if warmup < 1 else int(warmup),
        max_grad_norm=config.max_grad_norm,  # 0: no clipping (the Trainer clips only when > 0)
        bf16=config.precision == "bf16",
        use_cpu=config.precision != "fp32" and not torch.cuda.is_available(),  # CPU autocast; the Trainer wants it said
        fp16=config.precision == "fp16",
        seed=config.seed,
        logging_steps=config.logging_steps,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=has_eval,
        metric_for_best_model="em" if has_eval else None,
        greater_is_better=True,
        label_names=label_names,
        remove_unused_columns=False,
        dataloader_num_workers=config.num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        dataloader_persistent_workers=config.num_workers > 0,
        disable_tqdm=config.quiet,
        log_level="warning",
        report_to="none",
        ddp_backend="gloo" if _world_size() > 1 and not torch.cuda.is_available() else None,
        ddp_find_unused_parameters=bool(config.text_encoder),
        **strategy,
    )


def build_trainer(
    config: TrainConfig,
    sets: Datasets,
    model: Any,
    *,
    stop_after: int | None = None,
    callbacks: list[Any] | None = None,
) -> Any:
    from transformers import PrinterCallback

    args = _training_arguments(config, sets.eval is not None, sets.label_names)
    ECGQATrainer, JsonlLog, StopAfter, UmaskModes = _trainer_classes()
    extra = (
        [JsonlLog(config.out / METRICS_LOG), UmaskModes()]
        + ([StopAfter(stop_after)] if stop_after else [])
        + list(callbacks or [])
    )
    trainer = ECGQATrainer(
        model=model,
        args=args,
        data_collator=sets.collate,
        train_dataset=sets.train,
        eval_dataset=sets.eval,
        processing_class=sets.tokenizer,  # saved in every checkpoint-N: --resume reuses the run's tokenizer
        compute_metrics=_em_metrics(sets.task),
        callbacks=extra,
        task=sets.task,
        run=config,
    )
    if config.quiet:
        trainer.remove_callback(PrinterCallback)
    return trainer


# ------------------------------------------------------------------------------------- 6. resume


def _step_of(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def is_complete(checkpoint: Path) -> bool:
    """Whether a Trainer ``checkpoint-N`` folder was fully written (``trainer_state.json`` comes last)."""
    return all((checkpoint / name).is_file() for name in COMPLETE_FILES)


def find_resume_checkpoint(config: TrainConfig) -> Path:
    """The checkpoint to resume from: the given folder, or the newest complete ``checkpoint-N`` in
    ``OUT/checkpoints``; torn ones (a save killed midway) are skipped with a message on stderr."""
    if config.resume is not True:
        path = Path(config.resume)
        if not path.is_dir():
            raise FileNotFoundError(f"resume checkpoint {path} not found")
        if not is_complete(path):
            raise ValueError(
                f"resume checkpoint {path} is incomplete (no trainer_state.json: its save was "
                f"interrupted); resume from an earlier one or use --resume alone"
            )
        return path
    trainer_dir = config.out / TRAINER_DIR
    found = (
        sorted(
            (p for p in trainer_dir.glob("checkpoint-*") if p.is_dir() and _step_of(p) >= 0), key=_step_of, reverse=True
        )
        if trainer_dir.is_dir()
        else []
    )
    for path in found:
        if is_complete(path):
            return path
        print(f"note: skipping {path}: incomplete (no trainer_state.json; its save was interrupted)", file=sys.stderr)
    raise FileNotFoundError(f"nothing to resume: no complete checkpoint-N folder in {trainer_dir}")


def _trim_log(path: Path, step: int) -> None:
    """Drop log lines of steps after ``step``: they are re-run (and re-logged) after the resume."""
    from ecgqa.files import atomic_write

    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by the kill
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    atomic_write(path, "".join(line + "\n" for line in kept))


def _resume_state(config: TrainConfig) -> tuple[str | None, Any]:
    """(checkpoint to resume from, its saved tokenizer or None); trims the metrics log to that step."""
    if not config.resume:
        return None, None
    path = find_resume_checkpoint(config)
    marker = config.out / RUN_MARKER
    started = json.loads(marker.read_text()).get("model") if marker.is_file() else None
    if started and started != config.model:  # else the state dict fails to load, in a many-line error
        raise ValueError(
            f"--resume: {config.out} is a run of --model {started}, not {config.model}; resume it "
            f"with --model {started} (or start the {config.model} run in another --out)"
        )
    step = json.loads((path / "trainer_state.json").read_text()).get("global_step", _step_of(path))
    if int(os.environ.get("RANK", "0")) == 0:
        _trim_log(config.out / METRICS_LOG, int(step))
        if not config.quiet:
            print(f"resuming from {path}", file=sys.stderr)
    tokenizer = None
    if (path / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))
    return str(path), tokenizer


# ------------------------------------------------------------------------------------- 7. the run


def train(config: TrainConfig, *, stop_after: int | None = None, callbacks: list[Any] | None = None) -> Path:
    """Train ``config.model`` on ``config.data`` and write the checkpoint ``config.out``; returns it.

    The evaluation split (if present) is scored with exact match every ``eval_steps`` (or per epoch)
    and the best-EM model is what lands in ``out``. ``resume=True`` continues from the newest complete
    state in ``out/checkpoints`` (same step count, data order, schedule and tokenizer as an uninterrupted
    run). ``stop_after`` ends the run early after N updates, saving a resumable state (tests,
    time-sliced jobs).
    """
    from transformers import set_seed

    config = check_config(config)
    if config.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    claim_run_dir(config)
    resume_from, run_tokenizer = _resume_state(config)
    sets = load_datasets(config, tokenizer=run_tokenizer)
    set_seed(config.seed)
    model = build_model(config, sets)
    if int(os.environ.get("RANK", "0")) == 0:
        _write_marker(config)
    trainer = build_trainer(config, sets, model, stop_after=stop_after, callbacks=callbacks)
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except Exception as e:  # a full disk, a refused state file: one line (ecgqa/training/errors.py)
        clear = clear_error(e, config.out, resume_from)
        if clear is None:
            raise
        raise clear from e

    if stop_after and trainer.state.global_step < (trainer.state.max_steps or 0):
        return config.out  # interrupted on purpose: the resumable state is in out/checkpoints
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
        save_checkpoint(
            config.out,
            trainer.model,
            sets.tokenizer,
            sets.data.meta,
            train_options={
                **options,
                "global_step": trainer.state.global_step,
                "epoch": trainer.state.epoch,
                "world_size": trainer.args.world_size,
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


__all__ = ["TrainConfig", "check_config", "dry_run", "find_resume_checkpoint", "train"]
