"""``ecgqa evaluate``: exact-match report of a checkpoint on a prepared split.

The library side is ``ecgqa.evaluation.evaluate``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ecgqa.cli.common import add_threads_option, print_report, resolve_split, set_threads


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder written by `ecgqa train`")
    parser.add_argument("--data", type=Path, required=True, help="prepared folder written by `ecgqa prepare`")
    parser.add_argument(
        "--split",
        default=None,
        help="which split of the prepared data (default: test; without one, valid or the only split, said on stderr)",
    )
    parser.add_argument("--out", type=Path, required=True, help="report folder to write")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per forward pass (default 32)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N samples of the split (smoke runs)")
    add_threads_option(parser)
    parser.add_argument(
        "--blind",
        type=Path,
        metavar="CKPT",
        help="a blind (question-only) checkpoint as the question-only control (default: the majority answer per "
        "question text of the prepared data's train split)",
    )
    parser.add_argument(
        "--no-controls",
        action="store_true",
        help="skip the shuffled-ECG and question-only controls (they double the evaluation time)",
    )
    parser.add_argument("--control-seed", type=int, default=0, help="seed of the ECG permutation and the bootstrap")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ecgqa.evaluation import evaluate as stage  # the stage, imported only when the command runs

    for option, value in (("--batch-size", args.batch_size), ("--limit", args.limit)):
        if value is not None and value < 1:
            raise ValueError(f"{option} {value}: must be a positive integer")
    split = resolve_split(args)
    set_threads(args.threads)
    report = stage.evaluate(
        args.checkpoint,
        args.data,
        split,
        args.out,
        batch_size=args.batch_size,
        device=args.device,
        limit=args.limit,
        progress=not args.quiet,
        controls=not args.no_controls,
        blind=args.blind,
        control_seed=args.control_seed,
    )
    print(f"{report['model']} on {report['split']} ({report['n']} samples): EM {100 * report['em']:.1f} %")
    print_report(report, args.out)
    return 0
