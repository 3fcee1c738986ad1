"""Training recipes: the optimiser, schedule, batch and length each model family is trained with.

One readable table. ``ecgqa train --recipe paper`` reproduces the published ECG-QA settings; every
number below is the reference config's, with the config file it comes from (Jwoo5/fairseq-signals):

| model | config (fairseq-signals) | batch × update_freq × world | = effective | updates | lr | weight decay |
|---|---|---|---:|---:|---:|---:|
| fusion-base | examples/scratch/ecg_question_answering/ecg_transformer/base.yaml | 8 × 8 × 4 | 256 | 50k | 1e-4 | 0 |
| fusion-small | …/ecg_transformer/small.yaml | 16 × 4 × 1 | 64 | 50k | 1e-4 | 0 |
| blind | …/blind_transformer/base.yaml | 256 × 1 × 1 | 256 | 50k | 1e-4 | 0 |
| deaf | …/deaf_transformer/base.yaml | 16 × 4 × 4 | 256 | 50k | 1e-4 | 0 |
| m3ae-* | examples/m3ae/config/finetuning/ecg_question_answering/base.yaml | 16 × 4 × 4 | 256 | 50k | 5e-5 | 0 |
| medvill | examples/medvill/config/finetuning/ecg_question_answering/base.yaml | 8 × 8 × 4 | 256 | 50k | 1e-4 | 0 |
| resnet-lstm | …/resnet_lstm/deeper.yaml | 64 × 1 × 1 | 64 | 50 epochs | 5e-5 | 1e-4 (fixed lr) |
| se-wrn | examples/scratch/ecg_classification/resnet/se_wrn_total.yaml | 128 × 1 × 1 | 128 | 100k | 1e-4 | 5e-4 |
| resnet-attn | …/ecg_classification/resnet/nejedly2021_total.yaml | 128 × 1 × 1 | 128 | 100k | 1e-4 | 1e-4 |
| w2v-cmsc-rlm | examples/w2v_cmsc/…/grounding_classification/base_total.yaml | 64 × 1 × 1 | 64 | 100k | 5e-5 | 1e-4 |

All use Adam with betas (0.9, 0.98), eps 1e-8, and (except resnet-lstm's fixed rate) the tri-stage
schedule with phase ratios 10/40/50 % of the updates: linear warmup from ``init_lr_scale`` = 0.01 × lr
(fairseq's default; no config overrides it) to lr, hold, then exponential decay to
``final_lr_scale`` = 0.05 × lr. Upstream's Adam applies weight decay decoupled (``p -= wd·lr·p``) to
every parameter, which is ``torch.optim.AdamW`` over all parameters; that is what the paper recipe uses.
No gradient clipping: fairseq's ``clip_norm`` defaults to 0.0 (``fairseq_signals/dataclass/configs.py``)
and no config sets it, so the paper recipe passes ``max_grad_norm=0`` to ``TrainingArguments`` (0 turns
the Trainer's clipping off). The text embeddings upstream start from ``bert-base-uncased``'s tables
(``load_bert_embedding: True``): ``ecgqa train --bert-embeddings DIR`` does the same; without it they
start from a random init (the dry run says so).

The effective batch is reached on any number of devices: gradient accumulation =
effective / (per-device batch × devices), see :func:`grad_accum_for`.

``quick`` (the default) is for the bundled sample and CPUs: AdamW (weight decay 0.01 except biases
and norms), 5 % warmup then cosine decay, batch 32 per device without accumulation, 3 epochs. The paper
recipe's 50k updates of 256 samples are 12.8 M samples, days on a CPU; choose it explicitly on the full
release. ``quick`` clips gradients at norm 1.0 (the transformers default it always used).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

_QA = "examples/scratch/ecg_question_answering"
_CLS = "examples/scratch/ecg_classification/resnet"


@dataclass(frozen=True)
class Recipe:
    """How to train one model: every field maps onto a ``TrainConfig`` field of the same name."""

    name: str
    source: str  # where the numbers come from
    lr: float
    effective_batch: int | None  # None: whatever --batch-size x devices gives (no accumulation)
    batch_size: int  # per device, the reference config's (the default of --batch-size)
    max_steps: int | None = None  # optimizer updates; None → epochs
    epochs: float | None = None
    optimizer: str = "adam"  # "adam": torch AdamW over all parameters (upstream Adam); "adamw": HF default groups
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: str = "tri_stage"  # or a transformers scheduler name: "cosine", "linear", "constant", ...
    warmup: float = 0.0  # non-tri-stage schedules: ratio (<1) or steps
    phase_ratio: tuple[float, float, float] = (0.1, 0.4, 0.5)
    init_lr_scale: float = 0.01
    final_lr_scale: float = 0.05
    max_grad_norm: float = 0.0  # gradient clipping norm; 0 = none (upstream clip_norm 0.0)
    notes: tuple[str, ...] = field(default_factory=tuple)


def _qa(config: str, lr: float, per_device: int, update_freq: int, world: int) -> Recipe:
    return Recipe(
        name="paper",
        source=f"fairseq-signals {config}: batch_size {per_device} x update_freq "
        f"{update_freq} x distributed_world_size {world}",
        lr=lr,
        effective_batch=per_device * update_freq * world,
        batch_size=per_device,
        max_steps=50_000,
    )


#: The published settings per model (see the module docstring's table).
PAPER: dict[str, Recipe] = {
    "fusion-small": _qa(f"{_QA}/ecg_transformer/small.yaml", 1e-4, 16, 4, 1),
    "fusion-base": _qa(f"{_QA}/ecg_transformer/base.yaml", 1e-4, 8, 8, 4),
    "blind": _qa(f"{_QA}/blind_transformer/base.yaml", 1e-4, 256, 1, 1),
    "deaf": _qa(f"{_QA}/deaf_transformer/base.yaml", 1e-4, 16, 4, 4),
    "m3ae-base": _qa("examples/m3ae/config/finetuning/ecg_question_answering/base.yaml", 5e-5, 16, 4, 4),
    "medvill": _qa("examples/medvill/config/finetuning/ecg_question_answering/base.yaml", 1e-4, 8, 8, 4),
    "resnet-lstm": Recipe(
        name="paper",
        source=f"fairseq-signals {_QA}/resnet_lstm/deeper.yaml: batch_size 64, max_epoch 50, "
        "lr_scheduler fixed, weight_decay 1e-4",
        lr=5e-5,
        effective_batch=64,
        batch_size=64,
        epochs=50.0,
        weight_decay=1e-4,
        schedule="constant",
    ),
    "se-wrn": Recipe(
        name="paper",
        source=f"fairseq-signals {_CLS}/se_wrn_total.yaml: batch_size 128, max_update 100000",
        lr=1e-4,
        effective_batch=128,
        batch_size=128,
        max_steps=100_000,
        weight_decay=5e-4,
    ),
    "resnet-attn": Recipe(
        name="paper",
        source=f"fairseq-signals {_CLS}/nejedly2021_total.yaml: batch_size 128, max_update 100000",
        lr=1e-4,
        effective_batch=128,
        batch_size=128,
        max_steps=100_000,
        weight_decay=1e-4,
    ),
    # the fine-tuning of a W2V+CMSC+RLM-pretrained encoder (`--init-from`); its dropouts (0 / 0 / activation
    # 0.1) and feature_grad_mult 0.1 are the w2v-cmsc-rlm config's defaults
    "w2v-cmsc-rlm": Recipe(
        name="paper",
        source="fairseq-signals examples/w2v_cmsc/config/finetuning/ecg_transformer/"
        "grounding_classification/base_total.yaml: batch_size 64, distributed_world_size 1, max_update 100000",
        lr=5e-5,
        effective_batch=64,
        batch_size=64,
        max_steps=100_000,
        weight_decay=1e-4,
    ),
}
PAPER["m3ae-small"] = PAPER["m3ae-base"]  # the same fine-tuning config; only the width differs

QUICK = Recipe(
    name="quick",
    source="this project's default for the bundled sample and CPUs",
    lr=1e-4,
    effective_batch=None,
    batch_size=32,
    epochs=3.0,
    optimizer="adamw",
    weight_decay=0.01,
    schedule="cosine",
    warmup=0.05,
    max_grad_norm=1.0,
)

RECIPES = ("quick", "paper")
DEFAULT_RECIPE = "quick"


def recipe_for(recipe: str, model: str) -> Recipe:
    """The recipe ``recipe`` ("quick" or "paper") for ``model``."""
    if recipe == "quick":
        return QUICK if not model.startswith("m3ae") else _with_lr(QUICK, 5e-5)
    if recipe != "paper":
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    found = PAPER.get(model) or PAPER.get(model.replace("-prenorm", ""))  # fusion-prenorm-* train as fusion-*
    if found is None:  # a test/quick size: its family's first (smallest) published entry
        from ecgqa.models import family_of

        family = family_of(model).replace("-prenorm", "")
        found = next((r for name, r in PAPER.items() if family_of(name) == family), None)
    if found is None:
        raise ValueError(f"no published recipe for model {model!r}; the paper recipe covers {', '.join(sorted(PAPER))}")
    return found


def _with_lr(recipe: Recipe, lr: float) -> Recipe:
    from dataclasses import replace

    return replace(recipe, lr=lr)


def grad_accum_for(effective_batch: int, batch_size: int, world_size: int) -> int:
    """Gradient-accumulation steps so that batch_size × accumulation × devices = effective_batch."""
    per_step = batch_size * world_size
    if per_step <= 0 or effective_batch % per_step:
        divisors = [d for d in range(1, effective_batch + 1) if effective_batch % (d * world_size) == 0]
        hint = (
            f"choose a --batch-size dividing it, e.g. {', '.join(map(str, divisors[-4:]))}"
            if divisors
            else "run on a device count dividing it, or set --batch-size and --grad-accum yourself "
            "(the effective batch is then batch x accumulation x devices)"
        )
        raise ValueError(
            f"an effective batch of {effective_batch} cannot be made of --batch-size {batch_size} on {world_size} "
            f"device(s); {hint}"
        )
    return effective_batch // per_step


def tri_stage_factor(
    step: int,
    total: int,
    phase_ratio: tuple[float, float, float] = (0.1, 0.4, 0.5),
    init_lr_scale: float = 0.01,
    final_lr_scale: float = 0.05,
) -> float:
    """The tri-stage learning-rate multiplier (of the peak lr) for update ``step`` (0-based) of ``total``.

    Warmup: linear from ``init_lr_scale`` towards 1 over the first ``int(total·r0)`` updates; hold at 1
    for ``int(total·r1)``; decay exponentially to ``final_lr_scale`` over ``int(total·r2)``; then stay there.
    The same stage boundaries and formulas as fairseq's ``tri_stage`` scheduler.
    """
    warmup, hold, decay = (int(total * r) for r in phase_ratio)
    if step < warmup:
        return init_lr_scale + (1.0 - init_lr_scale) * step / warmup
    step -= warmup
    if step < hold:
        return 1.0
    step -= hold
    if step <= decay:
        return math.exp(math.log(final_lr_scale) * step / decay) if decay else final_lr_scale
    return final_lr_scale


def describe_schedule(recipe_or_config: Recipe, total: int) -> str:
    """One line saying what the learning rate does over ``total`` updates."""
    r = recipe_or_config
    lr = r.lr
    if r.schedule == "tri_stage":
        w, h, d = (int(total * x) for x in r.phase_ratio)
        return (
            f"tri-stage: warmup {w} updates {r.init_lr_scale * lr:.3g} -> {lr:.3g}, hold {h}, "
            f"exponential decay {d} to {r.final_lr_scale * lr:.3g}"
        )
    warmup = r.warmup
    steps = math.ceil(warmup * total) if warmup < 1 else int(warmup)  # as transformers rounds a ratio
    return f"{r.schedule}: warmup {steps} updates to {lr:.3g}, then {r.schedule} decay"


# ----------------------------------------------------------------------------------------------- pretraining

#: encoder sizes that pretrain (``ecgqa.models`` registry names; their objective settings are
#: ``ecgqa.models.w2v_pretrain.PRETRAIN_SIZES``)
PRETRAIN_MODELS = ("w2v-cmsc-rlm", "w2v-cmsc-rlm-quick", "w2v-cmsc-rlm-test")
SOURCE_YAML = "fairseq-signals examples/w2v_cmsc/config/pretraining/w2v_cmsc_rlm.yaml"

#: ``--recipe``: the optimiser, schedule, batch and length of a pretraining run. "paper" is the yaml's
#: (batch 64 CMSC pairs × update_freq 2 × 4 GPUs, 200 epochs, Adam (0.9, 0.98) eps 1e-6, decoupled
#: weight decay 0.01, fixed lr 5e-5, no clipping); "quick" is this project's for the bundled sample.
PRETRAIN_RECIPES: dict[str, Recipe] = {
    "paper": Recipe(
        name="paper",
        source=f"{SOURCE_YAML}: batch_size 64 x update_freq 2 x distributed_world_size "
        "4, max_epoch 200, adam (0.9, 0.98) eps 1e-06, weight_decay 0.01, lr 5e-05, lr_scheduler fixed",
        lr=5e-5,
        effective_batch=64 * 2 * 4,
        batch_size=64,
        epochs=200.0,
        eps=1e-6,
        weight_decay=0.01,
        schedule="constant",
        max_grad_norm=0.0,
    ),
    "quick": Recipe(
        name="quick",
        source="this project's, for the bundled sample and CPUs: the yaml's Adam "
        "with a higher lr (2e-3), 5% warmup and cosine decay, clipping at 1.0",
        lr=2e-3,
        effective_batch=None,
        batch_size=16,
        max_steps=400,
        eps=1e-6,
        weight_decay=0.01,
        schedule="cosine",
        warmup=0.05,
        max_grad_norm=1.0,
    ),
}
DEFAULT_PRETRAIN_RECIPE = "quick"
