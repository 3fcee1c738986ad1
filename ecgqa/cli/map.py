"""``ecgqa map ptbxl|mimic RELEASE_DIR --records ROOT --out OUT`` (also ``python -m mapping``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mapping.sources import SOURCE_ALIASES


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("source", choices=sorted(SOURCE_ALIASES), help="which ECG-QA version: ptbxl or mimic")
    parser.add_argument(
        "release_dir",
        nargs="?",
        type=Path,
        help="ECG-QA release folder (ecgqa/ptbxl or its parent); default: the bundled sample",
    )
    parser.add_argument(
        "--records",
        type=Path,
        help="PTB-XL root (holds records500/) or MIMIC-IV-ECG root (holds record_list.csv); "
        "default: the bundled sample's PTB-XL records",
    )
    parser.add_argument("--out", type=Path, help="output folder (default: mapped/<version>)")
    parser.add_argument("--rate", type=int, default=500, choices=[100, 500], help="PTB-XL record rate (default 500)")
    parser.add_argument(
        "--skip-missing", action="store_true", help="map only samples whose records all exist; report the rest"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ecgqa import sample
    from mapping.mapper import MissingRecordsError, map_release

    version = SOURCE_ALIASES[args.source]
    release_dir, records = args.release_dir, args.records
    if release_dir is None:
        release_dir = sample.paths().release
        print(f"using the bundled sample release: {release_dir}", file=sys.stderr)
    if records is None:
        if version != "ptbxl":
            raise SystemExit("--records is required for MIMIC-IV-ECG (the bundled sample holds PTB-XL records only)")
        records = sample.paths().ptbxl_records
        print(f"using the bundled sample records: {records}", file=sys.stderr)
    out = args.out or Path("mapped") / version
    try:
        report = map_release(
            version, release_dir, records, out, rate=args.rate, skip_missing=args.skip_missing, progress=not args.quiet
        )
    except MissingRecordsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    t = report["totals"]
    print(
        f"mapped {t['mapped']} of {t['samples']} samples into {out} "
        f"({t['skipped']} skipped, {t['n_missing_ids']} missing records, {report['seconds']} s)"
    )
    for rel, f in report["files"].items():
        print(f"  {rel}: {f['mapped']}/{f['samples']}")
    if not args.quiet and t["n_missing_ids"]:
        print(json.dumps({"first_missing_ids": t["missing_ids"]}))
    return 0


def main(argv: list[str] | None = None) -> int:
    from ecgqa.cli.common import dispatch

    parser = configure(argparse.ArgumentParser(prog="python -m mapping", description=__doc__))
    return dispatch(parser.parse_args(argv))
