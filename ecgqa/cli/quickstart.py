"""``ecgqa quickstart``: the main job on the bundled sample (library: ``ecgqa.quickstart``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ecgqa.quickstart import MODELS


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="working folder")
    parser.add_argument(
        "--minutes",
        type=float,
        default=0.8,
        help="training time cap per trained model in minutes (default 0.8: four models, so the whole run "
        "stays under 5 minutes on a busy 2-core machine; on an idle one --max-steps ends training first)",
    )
    parser.add_argument("--max-steps", type=int, default=400, help="optimizer updates per model (default 400)")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per step (default 16)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    parser.add_argument("--test-fraction", type=float, default=0.25, help="share of ECGs held out (default 0.25)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the ECG hold-out and training (default 0)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: these small models gain nothing from more, and on a "
        "shared machine extra threads made steps ~4x slower)",
    )
    parser.add_argument(
        "--models", nargs="+", default=list(MODELS), help=f"models to train (default: {' '.join(MODELS)})"
    )
    parser.add_argument(
        "--attribute-steps",
        type=int,
        default=300,
        help="optimizer updates of the attribute classifier and of its shuffled control (default 300; "
        "0 skips the attribute classifier)",
    )
    parser.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap replicates for the AUC intervals (default 1000)"
    )
    parser.add_argument(
        "--qa-steps",
        type=int,
        default=300,
        help="QA learning: optimizer updates of the fusion model and the blind baseline on balanced questions "
        "`ecgqa generate --balanced` writes over the bundled records, scored on held-out patients beside the "
        "shuffled-ECG and question-only controls (default 300; 0 skips it)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import os

    import torch

    from ecgqa import quickstart as stage  # the stage, imported only when the command runs

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        return stage._run(args)
    finally:
        torch.set_num_threads(threads)
