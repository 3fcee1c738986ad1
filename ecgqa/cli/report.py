"""``ecgqa report``: evaluation reports side by side (library: ``ecgqa.evaluation.report``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ecgqa.files import atomic_write


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("reports", nargs="+", type=Path, help="report.json files or folders holding one")
    parser.add_argument("--names", nargs="+", help="column titles (default: each report's folder name)")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    parser.add_argument(
        "--paper",
        action="store_true",
        help="print the paper's table layout with the published results (ecgqa/paper_results.json) as reference "
        "rows, each only beside the runs whose protocol card matches it (same test questions and metric), and "
        "why not otherwise; figures on other splits apart",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ecgqa.evaluation import report as stage  # the stage, imported only when the command runs

    reports = [stage.load_report(p) for p in args.reports]
    table = stage.compare_table(reports, args.names)
    if any(r.get("controls") for r in reports):
        table += "\n" + stage.controls_section(reports, args.names)
    if args.paper:
        table += "\n" + stage.paper_section(reports, args.names)
    if args.out:
        atomic_write(args.out, table)
        print(f"written: {args.out}", file=sys.stderr)
    print(table, end="")
    return 0
