"""``ecgqa prepare`` (command-line side): options, the bundled-sample default, the summary line.

The library side (``ecgqa/data/prepare.py``) never maps anything itself. Without an input folder this
command takes what ``ecgqa map`` wrote by default (``mapped/ptbxl`` or ``mapped/mimic-iv-ecg``, see
``ecgqa/cli/map.py``), or else maps the bundled sample into a temporary folder first
(``mapping.mapper.map_bundled_sample``). ``--task attributes`` without ``--metadata`` reads the PTB-XL
``ptbxl_database.csv`` beside the records the mapping used, when there is one. Each choice is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from ecgqa.data.constants import DEFAULT_RATE, DEFAULT_SECONDS, TASK_NAMES, TOKENIZERS, VARIANTS
from ecgqa.data.release import SPLITS


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "mapped_dir",
        nargs="?",
        type=Path,
        help="output of `ecgqa map` (holds template/ or paraphrased/ and mapping_report.json); "
        "default: what `ecgqa map` wrote by default (mapped/ptbxl or mapped/mimic-iv-ecg) if it exists, "
        "else the bundled sample, mapped on the fly",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="prepared directory to write (default: prepared/<version>-<variant>-<task>); "
        "an existing folder is replaced only when it is empty or a prepared directory",
    )
    parser.add_argument("--variant", choices=VARIANTS, default="template")
    parser.add_argument("--splits", nargs="+", choices=SPLITS, help="default: every split present")
    parser.add_argument(
        "--rate",
        type=int,
        default=DEFAULT_RATE,
        help=f"signal rate in Hz (records are resampled; default {DEFAULT_RATE})",
    )
    parser.add_argument(
        "--seconds", type=float, default=DEFAULT_SECONDS, help=f"signal length in seconds (default {DEFAULT_SECONDS})"
    )
    parser.add_argument(
        "--task",
        choices=TASK_NAMES,
        default="qa",
        help="qa (default), upperbound (attribute labels from the questions) or attributes (every "
        "attribute of every ECG from the source metadata, see --metadata; docs/attributes.md)",
    )
    parser.add_argument(
        "--tokenizer",
        choices=TOKENIZERS,
        default="bert",
        help="question tokenizer (task qa): bert = BERT's uncased WordPiece vocabulary, shipped "
        "with the package, as upstream (default); trained = a WordPiece vocabulary built from "
        "the train questions only",
    )
    parser.add_argument("--num-proc", type=int, default=1, help="parallel record readers (default 1)")
    parser.add_argument("--drop-bad", action="store_true", help="drop samples whose records are unreadable or hold NaN")
    parser.add_argument(
        "--grounding-classes", type=Path, help="grounding_class.csv for --task upperbound (default: the bundled list)"
    )
    parser.add_argument(
        "--metadata",
        type=Path,
        help="--task attributes: PTB-XL's ptbxl_database.csv (scp_statements.csv beside it); default: the one in "
        "the PTB-XL root the mapping read its records from (the bundled sample has one)",
    )
    parser.add_argument(
        "--version", dest="ecg_version", choices=["ptbxl", "mimic-iv-ecg"], help="default: from the mapping"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when the content hash matches")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ecgqa.data.prepare import default_out, detect_version, prepare  # the stage, imported when it runs

    mapped = args.mapped_dir
    tmp = None
    try:
        if mapped is None:
            mapped = default_mapped()
            if mapped is not None:
                print(f"using {mapped} (written by `ecgqa map`; name another folder to prepare that)", file=sys.stderr)
        if mapped is None:
            from mapping.mapper import map_bundled_sample

            tmp = tempfile.TemporaryDirectory(prefix="ecgqa-mapped-")
            mapped = map_bundled_sample(Path(tmp.name), progress=not args.quiet)
            print(f"using the bundled sample (mapped into {mapped})", file=sys.stderr)
        version = args.ecg_version or detect_version(mapped)
        out = args.out or default_out(version, args.variant, args.task)
        metadata = args.metadata
        if args.task == "attributes" and metadata is None:
            metadata = metadata_beside_records(mapped)
            if metadata is not None:
                print(
                    f"using the PTB-XL metadata {metadata} (beside the mapped records; --metadata to choose)",
                    file=sys.stderr,
                )
        meta = prepare(
            mapped,
            out,
            variant=args.variant,
            splits=args.splits,
            rate=args.rate,
            seconds=args.seconds,
            task=args.task,
            num_proc=args.num_proc,
            drop_bad=args.drop_bad,
            grounding_classes=args.grounding_classes,
            metadata=metadata,
            version=version,
            tokenizer=args.tokenizer,
            force=args.force,
            progress=not args.quiet,
        )
    finally:
        if tmp is not None:
            tmp.cleanup()
    status = "up to date" if meta.get("_noop") else f"prepared in {meta['seconds']} s"
    splits = ", ".join(f"{k} {v}" for k, v in meta["splits"].items())
    print(
        f"{out}: {status}; {meta['task']} {meta['version']}/{meta['variant']}, {meta['n_ecgs']} ECGs, samples: {splits}"
    )
    if meta["dropped"]:
        print(f"dropped: {json.dumps(meta['dropped'])[:500]}")
    return 0


def default_mapped(root: Path = Path("mapped")) -> Path | None:
    """``ecgqa map``'s default output (``mapped/<version>``) when exactly one exists, else None; both: an error."""
    from mapping.mapper import REPORT
    from mapping.sources import SOURCE_ALIASES

    found = [root / v for v in sorted(set(SOURCE_ALIASES.values())) if (root / v / REPORT).is_file()]
    if len(found) > 1:
        raise ValueError(
            f"both {' and '.join(str(f) for f in found)} hold a mapping (`ecgqa map`); name the one to prepare, "
            f"e.g. `ecgqa prepare {found[0]}`"
        )
    return found[0] if found else None


def metadata_beside_records(mapped: Path) -> Path | None:
    """``ptbxl_database.csv`` in the PTB-XL root a mapping read its records from (its mapping_report.json)."""
    from mapping.mapper import REPORT

    try:
        records = json.loads((Path(mapped) / REPORT).read_text()).get("records")
    except (OSError, ValueError, AttributeError):
        return None
    candidate = Path(records) / "ptbxl_database.csv" if isinstance(records, str) else None
    return candidate if candidate is not None and candidate.is_file() else None
