"""Mapping at full PTB-XL scale: ~414k samples per variant over 21.8k records (synthetic ids, stub files).

Builds a release shaped like the real one (shards of 10,000 samples, 1–2 ids each, drawn from
ids 1–21,837) and a records root of empty stub files, then times `map_release` against a
baseline that checks the record files once per sample (as the upstream scripts do). Prints
samples/s, records checked, peak RSS and the ratio of the two.

    python benchmarks/map_release.py [--samples 414348] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ecgqa.data.records import record_files
from mapping.mapper import map_release
from mapping.sources import ptbxl_record_path


def build(root: Path, n_samples: int, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    records = root / "ptbxl"
    for ecg_id in range(1, 21838):
        for f in record_files(records / ptbxl_record_path(ecg_id)):
            f.parent.mkdir(parents=True, exist_ok=True)
            f.touch()
    release = root / "ecgqa" / "ptbxl"
    release.mkdir(parents=True)
    (release / "answers.csv").write_text("index,class\n0,no\n1,yes\n")
    template = {
        "template_id": 26,
        "question_id": 1709,
        "question_type": "single-verify",
        "attribute_type": "noise",
        "question": "Does this ECG show static noise in lead aVL?",
        "answer": ["no"],
        "attribute": ["static noise"],
    }
    for start in range(0, n_samples, 10_000):
        count = min(10_000, n_samples - start)
        ids = rng.integers(1, 21838, size=(count, 2))
        two = rng.random(count) < 0.2
        shard = [
            {**template, "sample_id": start + k, "ecg_id": ids[k].tolist() if two[k] else [int(ids[k, 0])]}
            for k in range(count)
        ]
        (release / "template" / "train").mkdir(parents=True, exist_ok=True)
        (release / "template" / "train" / f"{start:06d}.json").write_text(json.dumps(shard))
    return release, records


def per_sample_baseline(release: Path, records: Path, out: Path) -> int:
    """The upstream way: every sample checks its records' files again; shards written in place."""
    n = 0
    out.mkdir(parents=True)
    for shard in sorted((release / "template" / "train").glob("*.json")):
        kept = []
        for s in json.loads(shard.read_text()):
            paths = [str(records / ptbxl_record_path(i)) for i in s["ecg_id"]]
            if all(os.path.exists(p + ".hea") and os.path.exists(p + ".dat") for p in paths):
                s["ecg_path"] = paths
                kept.append(s)
        (out / shard.name).write_text(json.dumps(kept))
        n += len(kept)
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=414_348)
    parser.add_argument("--keep", type=Path, help="build the synthetic release here and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="ecgqa-bench-map-"))
    try:
        t = time.perf_counter()
        release, records = build(root, args.samples)
        print(f"built {args.samples} samples over 21,837 stub records in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        report = map_release("ptbxl", release, records, root / "out", progress=False)
        ours = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t = time.perf_counter()
        n = per_sample_baseline(release, records, root / "baseline")
        base = time.perf_counter() - t
        assert n == report["totals"]["mapped"] == args.samples
        print(
            f"map_release:          {ours:6.2f} s  {args.samples / ours:9.0f} samples/s  "
            f"records checked {report['records_checked']}  peak RSS {peak:.0f} MiB"
        )
        print(
            f"per-sample baseline:  {base:6.2f} s  {args.samples / base:9.0f} samples/s  "
            "(per-sample checks, non-atomic writes)"
        )
        print(f"ratio baseline/ours:  {base / ours:.2f}x")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
