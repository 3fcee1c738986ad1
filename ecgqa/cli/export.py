"""``ecgqa export hub PREPARED... | CHECKPOINT --out DIR``: Hub-ready dataset folders and model cards.

The library side is ``ecgqa/distribution/`` (hub_dataset.py, hub_model.py); this module only parses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sub = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    hub = sub.add_parser(
        "hub",
        help="a folder `datasets.load_dataset` / `ecgqa.load` read as is, with its card (README.md)",
        description="Prepared QA folders -> Parquet shards per split + dataset card (load with "
        "datasets.load_dataset(DIR, CONFIG)); or a checkpoint folder -> a copy with its model card.",
    )
    hub.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="PREPARED_OR_CHECKPOINT",
        help="prepared folders (`ecgqa prepare --task qa`; one per version/variant, e.g. template and paraphrased) "
        "or one checkpoint folder (`ecgqa train`)",
    )
    hub.add_argument("--out", type=Path, required=True, help="folder to write (replaced only if this tool wrote it)")
    hub.add_argument(
        "--signals",
        choices=["embed", "none"],
        default="embed",
        help="datasets: embed the signals (PTB-XL only: CC BY 4.0) or none (questions and record references "
        "only; required for MIMIC-IV-ECG, whose waveforms are PhysioNet's to distribute). Default: embed",
    )
    hub.add_argument(
        "--report",
        type=Path,
        help="checkpoints: an `ecgqa evaluate` report folder (or its report.json) whose metrics go into the card",
    )
    hub.add_argument("--repo-id", help="checkpoints: the Hub repo id the card's usage example names (org/name)")
    hub.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    hub.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ecgqa.checkpoint import CONFIG

    inputs: list[Path] = args.inputs
    if all((p / CONFIG).is_file() and not (p / "meta.json").is_file() for p in inputs):
        from ecgqa.distribution.hub_model import export_checkpoint

        if len(inputs) != 1:
            raise ValueError("give one checkpoint folder at a time")
        out = export_checkpoint(inputs[0], args.out, report=args.report, repo_id=args.repo_id)
        print(f"{out}: checkpoint with its model card (README.md); upload with `hf upload ORG/NAME {out}`")
        return 0
    from ecgqa.distribution.hub_dataset import export_dataset

    if args.report or args.repo_id:
        print("note: --report and --repo-id apply to checkpoints; ignored for datasets", file=sys.stderr)
    summary = export_dataset(inputs, args.out, signals=args.signals, progress=not args.quiet)
    parts = [
        f"{name} ({', '.join(f'{s} {n}' for s, n in c['splits'].items())})" for name, c in summary["configs"].items()
    ]
    print(f"{args.out}: Hub dataset, configs: {'; '.join(parts)}")
    print(
        f"load with datasets.load_dataset({str(args.out)!r}, CONFIG); "
        f"upload with `hf upload ORG/NAME {args.out} --repo-type dataset`"
    )
    return 0
