"""``ecgqa records-needed ptbxl|mimic RELEASE --out FILE [--check ROOT]``.

The library side is ``ecgqa/distribution/records_needed.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ecgqa.data.release import SPLITS
from mapping.sources import SOURCE_ALIASES


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("source", choices=sorted(SOURCE_ALIASES), help="which database: ptbxl or mimic")
    parser.add_argument(
        "release",
        type=Path,
        help="ECG-QA release folder (ecgqa/<version> or its parent), or any folder / file of questions in the "
        "release format (e.g. a generated set)",
    )
    parser.add_argument("--splits", nargs="+", choices=SPLITS, help="default: every split")
    parser.add_argument(
        "--record-list", type=Path, help="MIMIC-IV-ECG: its record_list.csv (or the folder holding it); required"
    )
    parser.add_argument("--rate", type=int, default=500, choices=[100, 500], help="PTB-XL record rate (default 500)")
    parser.add_argument(
        "--format",
        choices=["urls", "paths"],
        default="urls",
        help="urls: PhysioNet URLs for `wget -i` (default); paths: root-relative paths (rsync --files-from, ...)",
    )
    parser.add_argument(
        "--out", type=Path, help="the list to write (with --check: only what is missing or truncated); default: stdout"
    )
    parser.add_argument(
        "--check", type=Path, metavar="ROOT", help="report which needed records ROOT holds, misses or holds truncated"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ecgqa.distribution.records_needed import FULL_SIZE, PHYSIONET_BASE, check, human_bytes, records_needed
    from ecgqa.files import atomic_write

    version = SOURCE_ALIASES[args.source]
    needed = records_needed(version, args.release, splits=args.splits, rate=args.rate, record_list=args.record_list)
    files = needed.files()
    status = 0
    if args.check is not None:
        result = check(args.check, needed, progress=not args.quiet)
        print(
            f"{args.check}: {len(result.present)} of {len(needed.records)} records present, "
            f"{len(result.missing)} missing, {len(result.truncated)} truncated"
            + (f"; root files missing: {', '.join(result.missing_root_files)}" if result.missing_root_files else ""),
            file=sys.stderr,
        )
        for rec, why in result.truncated[:20]:
            print(f"truncated: {rec}: {why}", file=sys.stderr)
        for rec in result.missing[:5]:
            print(f"missing: {rec}", file=sys.stderr)
        if len(result.missing) > 5:
            print(f"... and {len(result.missing) - 5} more missing", file=sys.stderr)
        files = result.refetch()
        status = 0 if result.ok else 1
    base = PHYSIONET_BASE[version]
    lines = [base + f for f in files] if args.format == "urls" else files
    text = "".join(f"{line}\n" for line in lines)
    if args.out is not None:
        atomic_write(args.out, text)
    else:
        sys.stdout.write(text)
    print(
        f"{needed.questions} questions in {needed.question_files} files reference {len(needed.ids)} ECGs: "
        f"{len(needed.records)} records, about {human_bytes(needed.estimated_bytes())} "
        f"(the whole database: {FULL_SIZE[version]}); {len(lines)} files listed"
        + (f" in {args.out}" if args.out else ""),
        file=sys.stderr,
    )
    if args.out is not None and args.format == "urls" and lines:
        cut = base.rstrip("/").count("/") - 2  # path parts after the host: files/<project>/<version>
        print(
            f"download: wget -c -x -nH --cut-dirs={cut} -P ROOT -i {args.out}"
            + (
                "  (if PhysioNet asks you to sign in: add --user YOUR_USERNAME --ask-password)"
                if version != "ptbxl"
                else ""
            ),
            file=sys.stderr,
        )
    return status
