"""``ecgqa pretrain --data PREPARED --out DIR``: W2V+CMSC+RLM self-supervised pretraining of the
``w2v-cmsc-rlm`` encoder, whose ``w2v.*`` weights then start ``ecgqa train --model w2v-cmsc-rlm* --init-from DIR``.

The objective (masked contrastive loss over Gumbel-quantized targets, diversity and feature penalties,
CMSC, random lead masking) is the model's own loss, ``ecgqa/models/w2v_pretrain.py``; the recipes
(``PRETRAIN_RECIPES``, ``paper`` = fairseq-signals' ``examples/w2v_cmsc/config/pretraining/w2v_cmsc_rlm.yaml``)
are ``ecgqa/training/recipes.py``'s. This module is the stage: the CMSC pairs read from a prepared
directory's signal store (every ECG once, whatever task it was prepared for) or a folder of WFDB records,
and the run, on ``ecgqa/training/trainer.py``'s machinery: the ``--out`` claim and lock, resume from the
newest complete ``checkpoint-N`` (checked against the data's rate and length), ``metrics.jsonl`` (with every
loss part, the code perplexity and the Gumbel temperature), Trainer arguments, the upstream Adam.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PretrainedConfig, set_seed

from ecgqa.checkpoint import save_checkpoint
from ecgqa.data.prepared import PreparedData, is_prepared
from ecgqa.data.records import RecordError, fit_length, read_header_rate, read_record
from ecgqa.models.w2v_pretrain import W2VPretrainConfig, W2VPretrainModel, compute_mask, pretrain_config
from ecgqa.training import fairseq_import
from ecgqa.training.recipes import (
    DEFAULT_PRETRAIN_RECIPE,
    PRETRAIN_MODELS,
    PRETRAIN_RECIPES,
    SOURCE_YAML,
    describe_schedule,
)
from ecgqa.training.trainer import (
    RecipeTrainer,
    RunDisplay,
    RunLock,
    TrainConfig,
    claim_run_dir,
    display_callbacks,
    fill_from_recipe,
    final_options,
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

# ----------------------------------------------------------------------------------------------- data


class RecordsFolder:
    """A folder of WFDB records (every ``*.hea`` below it) read into memory once, as a prepared store:
    ``rate`` Hz, the first ``seconds`` (shorter records zero-padded, ``ecgqa.data.records.fit_length``). The ECG
    id is the record name's leading number (PTB-XL ``00002_hr`` → 2, MIMIC-IV-ECG ``40689238``); a record
    present at several rates (PTB-XL's records100/records500) is read once, from its highest rate. For
    large sets, ``ecgqa prepare`` once and pretrain on the prepared directory (a memory-mapped store)."""

    def __init__(self, folder: Path, rate: int, seconds: float, progress: bool = True) -> None:
        self.path, self.rate, self.signal_length = folder, int(rate), round(seconds * rate)
        chosen: dict[int, tuple[float, Path]] = {}
        for header in sorted(folder.rglob("*.hea")):
            found = re.match(r"\d+", header.stem)
            if found is None:
                raise ValueError(
                    f"record {header.with_suffix('')}: its name has no leading number to use as the "
                    "ECG id (PTB-XL 00002_hr, MIMIC-IV-ECG 40689238); prepare the folder instead"
                )
            fs = read_header_rate(header)
            ecg = int(found.group())
            if ecg not in chosen or fs > chosen[ecg][0]:
                chosen[ecg] = (fs, header.with_suffix(""))
        self.ecg_ids = np.array(sorted(chosen), dtype=np.int64)
        self.signals = np.zeros((len(self.ecg_ids), 12, self.signal_length), dtype=np.float32)
        for i, ecg in enumerate(tqdm(self.ecg_ids, desc="read records", unit="ecg", disable=not progress)):
            try:
                record = read_record(chosen[int(ecg)][1], fs=self.rate)
            except RecordError as e:
                raise ValueError(str(e)) from e
            self.signals[i] = fit_length(record.signal, self.signal_length)
        self.meta = {
            "source": "records",
            "folder": str(folder),
            "rate": self.rate,
            "signal_length": self.signal_length,
            "n_ecgs": len(self.ecg_ids),
        }


class SegmentPairs:
    """CMSC items: segments 2k and 2k+1 of one stored ECG (upstream's ``convert_to_cmsc_manifest``
    pairs adjacent crops); every ECG of ``rows`` gives ``length // (2 · segment)`` pairs."""

    def __init__(self, data: Any, rows: np.ndarray, segment_length: int, patients: np.ndarray) -> None:
        self.data, self.rows, self.segment, self.patients = data, rows, int(segment_length), patients
        self.pairs = int(data.signal_length) // (2 * self.segment)
        if self.pairs < 1:
            raise ValueError(
                f"{data.path}: its ECGs have {data.signal_length} samples, fewer than two segments of "
                f"{self.segment}; choose shorter --segment-seconds"
            )

    def __len__(self) -> int:
        return len(self.rows) * self.pairs

    def __getitem__(self, index: int) -> dict[str, Any]:
        i, k = divmod(int(index), self.pairs)
        start = 2 * k * self.segment
        signal = np.array(self.data.signals[self.rows[i], :, start : start + 2 * self.segment], dtype=np.float32)
        pair = signal.reshape(signal.shape[0], 2, self.segment).transpose(1, 0, 2)
        return {"source": np.ascontiguousarray(pair), "patient_id": int(self.patients[i])}


def collate_pairs(items: list[dict[str, Any]]) -> dict[str, Any]:
    """(B pairs) → source (2B, 12, S) ordered pair by pair, segment 0,1,0,1…, patient_id per segment."""
    source = torch.from_numpy(np.stack([it["source"] for it in items])).flatten(0, 1)
    patient = torch.tensor([it["patient_id"] for it in items], dtype=torch.long).repeat_interleave(2)
    segment = torch.arange(source.shape[0], dtype=torch.long) % 2
    return {"source": source, "patient_id": patient, "segment": segment}


def read_patients(path: str | Path, ecg_ids: np.ndarray) -> np.ndarray:
    """Patient id of each of ``ecg_ids`` from a CSV with ecg_id/patient_id columns (PTB-XL's
    ``ptbxl_database.csv``) or study_id/subject_id (MIMIC-IV-ECG's ``record_list.csv``)."""
    path = Path(path)
    try:
        head = pd.read_csv(path, nrows=0).columns
    except (OSError, ValueError) as e:
        raise ValueError(f"--patients {path}: cannot read it as CSV ({e})") from e
    key = next((c for c in ("ecg_id", "study_id") if c in head), None)
    value = next((c for c in ("patient_id", "subject_id") if c in head), None)
    if key is None or value is None:
        raise ValueError(
            f"--patients {path}: needs columns ecg_id and patient_id (PTB-XL) or study_id and "
            f"subject_id (MIMIC-IV-ECG); it has {', '.join(map(str, head[:8]))}"
        )
    frame = pd.read_csv(path, usecols=[key, value])
    table: dict[int, int] = {}
    for line, (ecg, patient) in enumerate(zip(frame[key].tolist(), frame[value].tolist(), strict=False), start=2):
        try:
            table[int(ecg)] = int(float(patient))
        except (TypeError, ValueError):
            raise ValueError(
                f"--patients {path} line {line}: {key} {ecg!r} / {value} {patient!r} is not a number"
            ) from None
    missing = [int(e) for e in ecg_ids if int(e) not in table]
    if missing:
        raise ValueError(
            f"--patients {path}: no {value} for ecg id {missing[0]} ({len(missing)} of the "
            f"{len(ecg_ids)} ECGs are missing)"
        )
    return np.array([table[int(e)] for e in ecg_ids], dtype=np.int64)


# ----------------------------------------------------------------------------------------------- config


@dataclass
class PretrainConfig(TrainConfig):
    """One pretraining run (the ``TrainConfig`` fields ``train.py``'s machinery reads, plus the data's)."""

    recipe: str = DEFAULT_PRETRAIN_RECIPE
    eval_split: str | None = None
    save_steps: int | None = 100
    segment_seconds: float = 5.0
    split: str | None = None  # only the ECGs this split's questions use (default: the whole store)
    patients: Path | None = None
    rate: int = 500  # a records folder is read at this rate, its first `seconds` kept (prepared data: its own)
    seconds: float = 10.0
    overrides: dict[str, Any] = field(default_factory=dict)


#: fields the run sets itself (from the data, --segment-seconds, the registry): not --set-able
RESERVED_FIELDS = frozenset(
    {
        "model_type",
        "model_name",
        "task",
        "classes",
        "rate",
        "signal_length",
        "segment_length",
        "in_d",
        "transformers_version",
    }
)  # in_d: the data's 12 leads


def check_overrides(overrides: dict[str, Any]) -> None:
    """``--set FIELD=VALUE``: a field of the pretraining config (encoder or objective) of the default's type."""
    generic = set(PretrainedConfig().to_dict())
    defaults = {k: v for k, v in W2VPretrainConfig().to_dict().items() if k not in generic}
    for key, value in overrides.items():
        if key in RESERVED_FIELDS or key not in defaults:
            known = ", ".join(sorted(k for k in defaults if k not in RESERVED_FIELDS))
            why = (
                "comes from the data or the options" if key in RESERVED_FIELDS else "is not a pretraining config field"
            )
            raise ValueError(f"--set {key}={value!r}: {key} {why}; the fields: {known}")
        default = defaults[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = number and float(value).is_integer() and value >= 0
        elif isinstance(default, float):
            ok = number and value >= 0 and (value < 1 or not ("prob" in key or "dropout" in key))
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ValueError(
                f"--set {key}={value!r}: expected a value like the default {default!r}"
                + (" (a probability below 1)" if "prob" in key or "dropout" in key else "")
            )


def check_config(config: PretrainConfig) -> PretrainConfig:
    """Resolve the recipe into the fields left None and check every option (one-line errors)."""
    config.data, config.out = Path(config.data), Path(config.out)
    if config.recipe not in PRETRAIN_RECIPES:
        raise ValueError(f"unknown recipe {config.recipe!r}; choose one of {', '.join(PRETRAIN_RECIPES)}")
    check_overrides(config.overrides)
    pretrain_config(config.model, **config.overrides)  # unknown model / impossible values fail here
    recipe = PRETRAIN_RECIPES[config.recipe]
    for value, option in (
        (config.max_steps, "--max-steps"),
        (config.batch_size, "--batch-size"),
        (config.grad_accum, "--grad-accum"),
        (config.save_steps, "--save-steps"),
    ):
        positive(value, option)
    positive(config.epochs, "--epochs", integer=False)
    positive(config.lr, "--lr", integer=False)
    positive(config.segment_seconds, "--segment-seconds", allow_none=False, integer=False)
    positive(config.rate, "--rate", allow_none=False)
    positive(config.seconds, "--seconds", allow_none=False, integer=False)
    positive(config.logging_steps, "--logging-steps", allow_none=False)
    if config.init_from is not None and not Path(config.init_from).exists():
        raise ValueError(
            f"--init-from {config.init_from}: not found; give a fairseq-signals / ECG-FM .pt file or a "
            "checkpoint folder holding w2v.* weights"
        )
    if config.patients is not None and not Path(config.patients).is_file():
        raise ValueError(f"--patients {config.patients}: no such file")
    fill_from_recipe(config, recipe)
    config.eval_split, config.eval_steps = None, None
    return config


def load_pairs(config: PretrainConfig) -> tuple[Any, SegmentPairs]:
    """The ECGs (a prepared directory, or a folder of WFDB records) and their CMSC pairs (every ECG once,
    or those of ``--split``)."""
    folder = Path(config.data)
    if not folder.is_dir():
        raise ValueError(
            f"--data {folder}: "
            + ("is a file" if folder.exists() else "not found")
            + "; give a prepared directory (`ecgqa prepare`) or a folder of WFDB records (.hea + .dat)"
        )
    prepared = is_prepared(folder)
    if not prepared and not any(folder.rglob("*.hea")):
        raise ValueError(
            f"--data {folder}: neither a complete prepared directory (no meta.json) nor a folder of "
            "WFDB records (no .hea header under it); run `ecgqa prepare` or point --data at the records"
        )
    if prepared:
        data = PreparedData(config.data)
    else:
        if config.split is not None:
            raise ValueError(f"--split {config.split}: {config.data} is a records folder, it has no splits")
        data = RecordsFolder(Path(config.data), config.rate, config.seconds, progress=not config.quiet)
    rows = np.arange(len(data.ecg_ids))
    if config.split is not None:
        if config.split not in data.splits:
            raise ValueError(f"{config.data} has no split {config.split!r}; it holds {data.splits}")
        used = data.split(config.split)["ecg_rows"]
        rows = np.unique(np.fromiter((r for row in used for r in row), dtype=np.int64))
        if not len(rows):
            raise ValueError(f"{config.data}: split {config.split!r} uses no ECGs; nothing to pretrain on")
    ids = np.asarray(data.ecg_ids)[rows]
    patients = read_patients(config.patients, ids) if config.patients else ids.astype(np.int64)
    segment = round(config.segment_seconds * data.rate)
    return data, SegmentPairs(data, rows, segment, patients)


def dry_run(config: PretrainConfig) -> str:
    """What the recipe amounts to on this data, and the objective's settings."""
    config = check_config(config)
    recipe = PRETRAIN_RECIPES[config.recipe]
    data, pairs = load_pairs(config)
    steps = planned_steps(config, len(pairs))
    pre, fields = init_source(config)
    model_config = pretrain_config(config.model, segment_length=pairs.segment, **fields, **config.overrides)
    view = replace(recipe, lr=config.lr, schedule=config.schedule, warmup=config.warmup)
    c = model_config
    lines = [
        f"recipe {config.recipe} for pretraining {config.model} ({recipe.source})",
        f"data: {len(pairs.rows)} ECGs x {pairs.pairs} CMSC pair(s) of {pairs.segment}-sample segments "
        f"({config.segment_seconds:g} s at {data.rate} Hz) = {len(pairs)} pairs"
        + (f"; patients from {config.patients}" if config.patients else "; positives: the same ECG"),
        (
            f"effective batch: {config.effective_batch} pairs ({2 * config.effective_batch} segments) = batch "
            f"{config.batch_size} x grad-accum {config.grad_accum} x {world_size()} device(s)"
        ),
        f"updates: {steps}" + ("" if config.max_steps else f" ({config.epochs:g} epochs)"),
        *(
            [
                f"initialised from: {config.init_from} ({pre.source} checkpoint; "
                + (
                    "encoder and pretraining parts)"
                    if _pretraining_extras(pre)
                    else "encoder only; the pretraining parts start from their init)"
                )
            ]
            if pre is not None
            else []
        ),
        (
            f"optimizer: AdamW over all parameters (upstream Adam, decoupled decay), betas {recipe.betas}, "
            f"eps {recipe.eps:g}, weight decay {config.weight_decay:g}"
        ),
        "lr schedule: "
        + (
            f"fixed at {config.lr:g} (fairseq lr_scheduler fixed, no warmup)"
            if config.schedule == "constant" and not config.warmup
            else describe_schedule(view, steps)
        ),
        "gradient clipping: " + (f"max norm {config.max_grad_norm:g}" if config.max_grad_norm else "none"),
        (
            f"objective: mask_prob {c.mask_prob}, mask_length {c.mask_length}, num_negatives {c.num_negatives}, "
            f"codebook {c.latent_groups} x {c.latent_vars}, final_dim {c.final_dim}, latent_temp "
            f"{tuple(c.latent_temp)}, logit_temp {c.logit_temp}, loss weights diversity {c.diversity_weight} / "
            f"feature penalty {c.feature_pen_weight} / cmsc {c.cmsc_weight} (temp {c.cmsc_temp}), lead masking p "
            f"{c.mask_leads_prob}"
        ),
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- --init-from

#: the pretraining parts ``--init-from`` continues (fairseq's names = ours)
PRETRAINING_PARTS = ("mask_emb", "quantizer.", "project_q.", "final_proj.")
#: objective fields that fix tensor shapes: taken from the checkpoint (fairseq ``cfg.model`` or our config.json)
SHAPE_FIELDS = ("latent_vars", "latent_groups", "latent_dim", "final_dim")


def _pretraining_extras(pre: Any) -> dict[str, Any]:
    return {k: v for k, v in pre.keymap.extras.items() if k.startswith(PRETRAINING_PARTS)}


def init_source(config: PretrainConfig) -> tuple[Any, dict[str, Any]]:
    """(the ``--init-from`` checkpoint or None, the config fields it fixes): the encoder architecture
    (``ecgqa.training.fairseq_import.init_overrides``) and, when it carries a quantizer, the codebook and
    projection sizes. A ``--set`` contradicting one of them is an error naming both values."""
    if config.init_from is None:
        return None, {}
    pre = fairseq_import.read_pretrained(config.init_from)
    fields = fairseq_import.init_overrides(config.model, pre, config.overrides)
    unsupported = sorted(k for k in pre.keymap.extras if not k.startswith(PRETRAINING_PARTS))
    if unsupported:
        raise ValueError(
            f"--init-from {config.init_from}: {', '.join(unsupported[:4])} belong to pretraining options "
            "ecgqa pretrain does not implement (quantize_input, target_glu); start from its encoder with "
            "`ecgqa convert-fairseq` and --init-from the converted folder"
        )
    if _pretraining_extras(pre):
        if pre.source == "fairseq":
            source = dict(pre.cfg)
        else:
            source = json.loads((Path(config.init_from) / "config.json").read_text())
        width = int(fields.get("encoder_embed_dim", source.get("encoder_embed_dim", 768)))
        final = int(source.get("final_dim", 0) or 0) or width
        found = {
            "latent_vars": int(source.get("latent_vars", 320)),
            "latent_groups": int(source.get("latent_groups", 2)),
            "latent_dim": int(source.get("latent_dim", 0) or 0),
            "final_dim": final,
        }
        for name in SHAPE_FIELDS:
            if name in config.overrides and config.overrides[name] != found[name]:
                raise ValueError(
                    f"--set {name}={config.overrides[name]!r} contradicts --init-from {config.init_from}, "
                    f"whose {name} is {found[name]!r}"
                )
        fields.update(found)
    return pre, fields


def load_init(model: Any, pre: Any) -> str:
    """Load ``pre``'s encoder (and its pretraining parts, when it has them) into the pretraining model;
    every tensor shape-checked first (an error names the key; the model is untouched then)."""
    check_and_load = fairseq_import.check_and_load
    encoder = pre.encoder_tensors()
    check_and_load(model, encoder, pre.path, prefix="w2v.", what="pretrained encoder")
    extras = _pretraining_extras(pre)
    if not extras:
        return (
            f"--init-from {pre.path}: encoder loaded into w2v ({len(encoder)} tensors); mask_emb, "
            "quantizer, project_q and final_proj start from their init"
        )
    for prefix in PRETRAINING_PARTS:
        check_and_load(model, extras, pre.path, prefix=prefix, what="pretraining checkpoint")
    return (
        f"--init-from {pre.path}: encoder ({len(encoder)} tensors) and pretraining parts ({len(extras)} tensors) loaded"
    )


# ----------------------------------------------------------------------------------------------- trainer


#: the parts of ``W2VPretrainOutput`` logged beside the loss (means over the logging interval)
LOGGED_PARTS = (
    "contrastive_loss",
    "diversity_loss",
    "feature_penalty",
    "cmsc_loss",
    "code_perplexity",
    "prob_perplexity",
    "temperature",
    "accuracy",
)


class PretrainTrainer(RecipeTrainer):
    """The recipe's Trainer (upstream Adam) with the objective's parts logged beside the loss."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parts: dict[str, Any] = {}  # summed as tensors: no device sync per step, only per log
        self._count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        unwrapped = self.accelerator.unwrap_model(model)
        unwrapped.set_num_updates(self.state.global_step)
        outputs = model(**inputs)
        if model.training:
            for name in LOGGED_PARTS:
                value = getattr(outputs, name)
                if value is not None:
                    self._parts[name] = self._parts.get(name, 0.0) + value.detach().float()
            self._count += 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._count:
            logs.update({k: round(float(v) / self._count, 5) for k, v in self._parts.items()})
            self._parts, self._count = {}, 0
        super().log(logs, start_time)


def pretrain(config: PretrainConfig, *, stop_after: int | None = None) -> Path:
    """Pretrain ``config.model``'s encoder on ``config.data`` and write the checkpoint ``config.out``.

    ``resume`` continues from the newest complete ``checkpoint-N`` (same data order, masks, schedule and
    temperature as an uninterrupted run; the data must have the checkpoint's rate and length); a run already
    at its last step is not trained again, its final output is only rewritten. ``stop_after`` ends early
    after N updates with a resumable state.
    """
    config = check_config(config)
    data, pairs = load_pairs(config)
    claim_run_dir(config)
    with RunLock(config.out), library_output(verbose=config.verbose):
        resume = resume_state(config, data, signal_only=True)  # every check before anything changes
        if resume is not None:
            say(config, f"resuming from {resume.path} (step {resume.step})")
        set_seed(config.seed)
        pre, fields = init_source(config)
        model = W2VPretrainModel(
            pretrain_config(
                config.model,
                rate=int(data.rate),
                signal_length=int(data.signal_length),
                segment_length=pairs.segment,
                **fields,
                **config.overrides,
            )
        )
        if pre is not None and resume is None:
            say(config, load_init(model, pre))
        tokens = int(model.w2v.feature_extractor.output_lengths(torch.tensor([pairs.segment]))[0])
        compute_mask((1, tokens), model.config.mask_prob, model.config.mask_length)  # too few tokens: says so now
        start_run_dir(config)  # the options, data and model are good: clear an earlier run, write the marker
        trainer = PretrainTrainer(
            model=model,
            args=training_arguments(config, False, []),
            data_collator=collate_pairs,
            train_dataset=pairs,
            callbacks=run_callbacks(config, resume, stop_after),
            recipe=PRETRAIN_RECIPES[config.recipe],
            schedule=config.schedule,
        )
        display_callbacks(trainer, RunDisplay(quiet=config.quiet, desc=f"pretrain {config.model}"))
        planned = planned_steps(config, len(pairs))
        if not run_or_restore(config, trainer, resume, planned, best=False, stop_after=stop_after):
            return config.out  # interrupted on purpose: the resumable state is in out/checkpoints
        trainer.accelerator.wait_for_everyone()
        if trainer.is_world_process_zero():
            save_checkpoint(
                config.out,
                trainer.model,
                None,
                data.meta,
                train_options={
                    **final_options(config, trainer),
                    "objective": "w2v+cmsc+rlm",
                    "pairs": len(pairs),
                    "ecgs": len(pairs.rows),
                },
            )
        trainer.accelerator.wait_for_everyone()
    return config.out


__all__ = [
    "DEFAULT_PRETRAIN_RECIPE",
    "PRETRAIN_MODELS",
    "PRETRAIN_RECIPES",
    "SOURCE_YAML",
    "PretrainConfig",
    "PretrainTrainer",
    "RecordsFolder",
    "SegmentPairs",
    "collate_pairs",
    "dry_run",
    "pretrain",
    "read_patients",
]
