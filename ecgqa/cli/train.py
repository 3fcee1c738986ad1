"""``ecgqa train``: train a QA model or an upperbound classifier on a prepared folder.

The library side is ``ecgqa.training.train``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ecgqa.cli.common import add_threads_option, parse_overrides, torch_threads
from ecgqa.training.recipes import DEFAULT_RECIPE, RECIPES

if TYPE_CHECKING:  # annotations only: the stage is imported when the command runs
    from ecgqa.training.trainer import TrainConfig


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--data", type=Path, required=True, help="prepared directory (`ecgqa prepare` output)")
    parser.add_argument(
        "--model",
        required=True,
        help="model variant: fusion-small, fusion-base, blind, deaf, medvill, m3ae-base, resnet-lstm "
        "(QA baselines), fusion-prenorm-*, m3ae-small; se-wrn, resnet-attn (upperbound); each family "
        "also has a -test size — the registry is ecgqa.models.MODELS (docs/models.md)",
    )
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument(
        "--recipe",
        choices=RECIPES,
        default=DEFAULT_RECIPE,
        help="optimiser, schedule, batch and length: 'paper' = the published settings per model "
        "(ecgqa/training/recipes.py), 'quick' = short CPU-friendly runs (default); flags below override it",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the effective batch, updates, epochs on this data and the schedule, and the time per "
        "update and peak memory measured over a few updates on this device; keep no weights",
    )
    parser.add_argument(
        "--no-measure",
        action="store_true",
        help="with --dry-run: print the plan only, without timing updates on this device",
    )
    parser.add_argument("--epochs", type=float, default=None, help="training epochs (ignored with --max-steps)")
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer updates to run (overrides --epochs)")
    parser.add_argument("--batch-size", type=int, default=None, help="samples per device per step")
    parser.add_argument(
        "--grad-accum",
        type=int,
        default=None,
        help="gradient accumulation steps (default: what reaches the recipe's effective batch)",
    )
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's)")
    parser.add_argument("--weight-decay", type=float, default=None, help="weight decay (default: the recipe's)")
    parser.add_argument("--warmup", type=float, default=None, help="warmup: a ratio of all steps (<1) or a count")
    parser.add_argument(
        "--schedule", default=None, help="tri_stage, or a transformers schedule (cosine, linear, constant, ...)"
    )
    parser.add_argument(
        "--max-grad-norm",
        type=float,
        default=None,
        help="clip gradients to this norm; 0 = no clipping (default: the recipe's: paper 0, as upstream; quick 1.0)",
    )
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="mixed precision")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--train-split", default="train", help="split to train on (default train; data with one split: that one)"
    )
    parser.add_argument(
        "--eval-split",
        default="valid",
        help="split for periodic EM evaluation and best-checkpoint choice ('none' to skip; default valid, "
        "skipped with a note when the data has none)",
    )
    parser.add_argument("--eval-steps", type=int, default=None, help="evaluate/save every N steps (default: per epoch)")
    parser.add_argument("--save-total-limit", type=int, default=2, help="Trainer checkpoints kept")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="resume from OUT's newest complete checkpoint, or from the given checkpoint folder",
    )
    parser.add_argument(
        "--text-encoder",
        default=None,
        metavar="PATH_OR_ID",
        help="initialise the text side from a pretrained transformers encoder (and use its tokenizer)",
    )
    parser.add_argument(
        "--bert-embeddings",
        default=None,
        metavar="DIR",
        help="initialise the text side's word, position and token-type embedding tables from a "
        "local bert-base-uncased folder (transformers format), as upstream's load_bert_embedding; "
        "no BERT encoder is attached (fusion, blind, medvill; resnet-lstm: word embedding)",
    )
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="PATH",
        help="initialise the W2V encoder (w2v-cmsc-rlm-*) or the ECG side (fusion-*, medvill, deaf) "
        "from a fairseq-signals / ECG-FM .pt, a `convert-fairseq` folder or an `ecgqa pretrain` folder",
    )
    parser.add_argument("--max-question-len", type=int, default=64, help="question tokens kept")
    parser.add_argument("--workers", type=int, default=2, help="data loader worker processes")
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a model config field, e.g. --set hidden_size=256 --set num_layers=4",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="train the -test size of the model's family (ecgqa.models.variant_for_tests, e.g. "
        "fusion-small -> fusion-test) for smoke runs and CI; --set fields still apply",
    )
    add_threads_option(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, table or notes")
    parser.set_defaults(func=run)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from ecgqa.training.trainer import TrainConfig  # the stage, imported only when the command runs

    overrides = parse_overrides(args.set)
    model = args.model
    if args.tiny:
        from ecgqa.models import variant_for_tests

        model = variant_for_tests(args.model)
    return TrainConfig(
        data=args.data,
        model=model,
        out=args.out,
        recipe=args.recipe,
        max_steps=args.max_steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        warmup=args.warmup,
        max_grad_norm=args.max_grad_norm,
        precision=args.precision,
        seed=args.seed,
        train_split=args.train_split,
        eval_split=None if args.eval_split.lower() == "none" else args.eval_split,
        eval_steps=args.eval_steps,
        save_total_limit=args.save_total_limit,
        resume=args.resume,
        text_encoder=args.text_encoder,
        bert_embeddings=args.bert_embeddings,
        init_from=args.init_from,
        max_question_len=args.max_question_len,
        num_workers=args.workers,
        logging_steps=args.logging_steps,
        overrides=overrides,
        quiet=args.quiet,
        verbose=args.verbose,
    )


def run(args: argparse.Namespace) -> int:
    from ecgqa.training import train as stage  # the stage, imported only when the command runs

    config = config_from_args(args)
    with torch_threads(args.threads):
        if args.dry_run:
            print(stage.dry_run(config, measure=not args.no_measure))
            return 0
        try:
            ckpt = stage.train(config)
        except KeyboardInterrupt:
            return stage.interrupted(config.out)
    if stage.is_main_process():
        print(f"checkpoint: {ckpt} (load it with ecgqa.load({str(ckpt)!r}))")
    return 0
