"""``ecgqa prepare`` (command-line side): options, the bundled-sample default, the summary line.

The library side (``ecgqa/data/prepare.py``) never maps anything itself; without an input folder this
command maps the bundled sample into a temporary folder first (``mapping.mapper.map_bundled_sample``).
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
        "default: the bundled sample, mapped on the fly",
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
        "--metadata", type=Path, help="--task attributes: PTB-XL's ptbxl_database.csv (scp_statements.csv beside it)"
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
            from mapping.mapper import map_bundled_sample

            tmp = tempfile.TemporaryDirectory(prefix="ecgqa-mapped-")
            mapped = map_bundled_sample(Path(tmp.name), progress=not args.quiet)
            print(f"using the bundled sample (mapped into {mapped})", file=sys.stderr)
        version = args.ecg_version or detect_version(mapped)
        out = args.out or default_out(version, args.variant, args.task)
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
            metadata=args.metadata,
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
