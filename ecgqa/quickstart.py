"""``ecgqa quickstart``: the main job on the bundled sample, end to end."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="working folder")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from collections import Counter

    from ecgqa import sample
    from ecgqa.release import AnswerSpace, load_shard, shards
    from mapping.mapper import map_release

    paths = sample.paths()
    mapped = args.out / "mapped" / "ptbxl"
    print(f"[1/1] mapping the bundled sample into {mapped}", file=sys.stderr)
    report = map_release("ptbxl", paths.ptbxl_release, paths.ptbxl_records, mapped, progress=not args.quiet)
    space = AnswerSpace.from_release(mapped)
    print(f"\nECG-QA PTB-XL sample: {report['totals']['mapped']} samples mapped, {len(space)} answer classes")
    for shard in shards(mapped, variants=("template",)):
        samples = load_shard(shard)
        ecgs = {i for s in samples for i in s["ecg_id"]}
        print(f"  {shard.relative_to(mapped)}: {len(samples)} samples over {len(ecgs)} ECGs")
        for qtype, n in sorted(Counter(s["question_type"] for s in samples).items()):
            print(f"    {qtype:32s} {n}")
    print(f"\nwritten: {mapped} (see {mapped / 'mapping_report.json'})")
    return 0
