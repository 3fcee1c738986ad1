"""``ecgqa quickstart``: the main job on the bundled sample (library: ``ecgqa.quickstart``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ecgqa.quickstart import DEFAULTS, MODELS, QA_MODELS


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", type=Path, default=DEFAULTS["out"], help="working folder")
    parser.add_argument(
        "--minutes",
        type=float,
        default=DEFAULTS["minutes"],
        help="training time cap per trained model in minutes (default %(default)s: four models, so the whole run "
        "stays under 5 minutes on a busy 2-core machine; on an idle one --max-steps ends training first)",
    )
    parser.add_argument(
        "--max-steps", type=int, default=DEFAULTS["max_steps"], help="optimizer updates per model (default %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULTS["batch_size"], help="samples per step (default %(default)s)"
    )
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="peak learning rate (default %(default)s)")
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=DEFAULTS["test_fraction"],
        help="share of ECGs held out (default %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULTS["seed"], help="seeds the ECG hold-out and training (default %(default)s)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULTS["threads"],
        help="torch CPU threads (default %(default)s: these small models gain nothing from more, and on a "
        "shared machine extra threads made steps ~4x slower)",
    )
    parser.add_argument(
        "--models", nargs="+", default=list(DEFAULTS["models"]), help=f"models to train (default: {' '.join(MODELS)})"
    )
    parser.add_argument(
        "--attribute-steps",
        type=int,
        default=DEFAULTS["attribute_steps"],
        help="optimizer updates of the attribute classifier and of its shuffled control (default %(default)s; "
        "0 skips the attribute classifier)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=DEFAULTS["bootstrap"],
        help="bootstrap replicates for the AUC intervals (default %(default)s)",
    )
    parser.add_argument(
        "--qa-steps",
        type=int,
        default=DEFAULTS["qa_steps"],
        help="QA learning: optimizer updates of the fusion model and the blind baseline on balanced questions "
        "`ecgqa generate --balanced` writes over the bundled records, scored on held-out patients beside the "
        "shuffled-ECG and question-only controls (default: "
        + ", ".join(f"{q.steps} for {name}" for name, q in QA_MODELS.items())
        + "; 0 skips it)",
    )
    parser.add_argument(
        "--qa-model",
        choices=list(QA_MODELS),
        default=DEFAULTS["qa_model"],
        help="QA learning's fusion model (default %(default)s, from scratch). fusion-sewrn-quick first trains "
        "se-wrn-quick on the training patients' attribute labels (300 steps), then starts its ECG side from it, "
        "frozen, lr 3e-3, 1200 steps: the run that uses the ECG (docs/controls.md); a few more minutes on 2 cores",
    )
    parser.add_argument(
        "--qa-minutes",
        type=float,
        default=DEFAULTS["qa_minutes"],
        help="time cap per QA-learning model in minutes (default: --minutes for fusion-quick, "
        + ", ".join(f"{q.minutes:g} for {n}" for n, q in QA_MODELS.items() if q.minutes is not None)
        + ")",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ecgqa import quickstart as stage  # the stage, imported only when the command runs

    return stage.run(args)
