"""``ecgqa pretrain``: W2V+CMSC+RLM self-supervised pretraining (library: ``ecgqa.training.pretrain``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ecgqa.cli.common import add_threads_option, parse_overrides, torch_threads
from ecgqa.training.recipes import DEFAULT_PRETRAIN_RECIPE, PRETRAIN_MODELS, PRETRAIN_RECIPES, SOURCE_YAML

if TYPE_CHECKING:  # annotations only: the stage is imported when the command runs
    from ecgqa.training.pretrain import PretrainConfig


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="prepared directory (`ecgqa prepare`, any task): its signal store, each ECG once; or a "
        "folder of WFDB records (read once into memory, see --rate/--seconds)",
    )
    parser.add_argument("--rate", type=int, default=500, help="records folder only: sampling rate to read at")
    parser.add_argument("--seconds", type=float, default=10.0, help="records folder only: seconds kept per record")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument(
        "--model",
        default="w2v-cmsc-rlm-quick",
        choices=PRETRAIN_MODELS,
        help="encoder size (the ecgqa.models registry entry fine-tuned later; default %(default)s)",
    )
    parser.add_argument(
        "--recipe",
        choices=list(PRETRAIN_RECIPES),
        default=DEFAULT_PRETRAIN_RECIPE,
        help=f"'paper' = {SOURCE_YAML}; 'quick' = 400 updates for the bundled sample (default)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the recipe and the objective; train nothing")
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer updates (overrides the recipe)")
    parser.add_argument("--epochs", type=float, default=None, help="epochs over the CMSC pairs (without --max-steps)")
    parser.add_argument("--batch-size", type=int, default=None, help="CMSC pairs (2 segments each) per device")
    parser.add_argument("--grad-accum", type=int, default=None, help="gradient accumulation steps")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate")
    parser.add_argument(
        "--segment-seconds",
        type=float,
        default=5.0,
        help="CMSC segment length; adjacent segments of one ECG are pairs (default 5, as upstream)",
    )
    parser.add_argument(
        "--split",
        default=None,
        help="pretrain only on the ECGs of this split's questions (default: every stored ECG)",
    )
    parser.add_argument(
        "--patients",
        type=Path,
        default=None,
        metavar="CSV",
        help="ecg_id,patient_id table (PTB-XL ptbxl_database.csv, MIMIC-IV-ECG record_list.csv): "
        "segments of one patient's ECGs are CMSC positives too (default: the same ECG only)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a pretraining config field, e.g. --set mask_prob=0.5 --set num_negatives=50",
    )
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="PATH",
        help="continue from a fairseq-signals / ECG-FM .pt or an ecgqa folder holding w2v.* (its "
        "architecture, encoder and, when present, quantizer and projections; ecgqa/training/fairseq_import.py)",
    )
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="mixed precision")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-steps", type=int, default=100, help="resumable state every N updates")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="resume from OUT's newest complete checkpoint, or from the given checkpoint folder",
    )
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    add_threads_option(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or notes")
    parser.set_defaults(func=run)
    return parser


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    from ecgqa.training import pretrain as stage  # the stage, imported only when the command runs

    return stage.PretrainConfig(
        data=args.data,
        model=args.model,
        out=args.out,
        recipe=args.recipe,
        max_steps=args.max_steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        seed=args.seed,
        save_steps=args.save_steps,
        resume=args.resume,
        logging_steps=args.logging_steps,
        num_workers=args.workers,
        quiet=args.quiet,
        verbose=args.verbose,
        segment_seconds=args.segment_seconds,
        split=args.split,
        patients=args.patients,
        rate=args.rate,
        seconds=args.seconds,
        init_from=args.init_from,
        precision=args.precision,
        overrides=parse_overrides(args.set),
    )


def run(args: argparse.Namespace) -> int:
    from ecgqa.training import pretrain as stage  # the stage, imported only when the command runs
    from ecgqa.training import trainer

    config = config_from_args(args)
    with torch_threads(args.threads):
        if args.dry_run:
            print(stage.dry_run(config))
            return 0
        try:
            out = stage.pretrain(config)
        except KeyboardInterrupt:
            return trainer.interrupted(config.out)
    if trainer.is_main_process():
        print(f"checkpoint: {out} (fine-tune it with `ecgqa train --model {config.model} --init-from {out}`)")
    return 0
