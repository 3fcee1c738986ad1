"""``ecgqa quickstart``: the main job on the bundled sample, end to end, in a few minutes on a laptop CPU.

map → hold out a test split BY ECG → prepare → train a small fusion model and a blind (question-only)
baseline → evaluate both on the held-out split → print their exact-match table side by side.

The bundled sample has only train and valid questions, so the quickstart writes its own re-split
copy of the mapped release (``OUT/release/ptbxl``): the ECGs are shuffled (seeded) and a share of them
is held out; a question goes to ``test`` when all its ECGs are held out, to ``train`` when none is,
and is left out when it mixes both (a comparison question across the cut). No ECG is ever seen in
training and scored in test, so the fusion-vs-blind gap is an honest one. ``split_report.json``
lists the ECGs of each side and the questions left out.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

#: The quickstart's "small" models: the reference architectures at a width that trains in minutes on
#: two CPU cores (3 strided convs of kernel/stride 4: 5000 samples → 78 tokens per ECG).
QUICK_MODEL: dict[str, Any] = {
    "hidden_size": 64, "num_layers": 2, "num_heads": 4, "ffn_size": 128, "dropout": 0.1,
    "conv_channels": 32, "conv_layers": 3, "conv_kernel": 4, "conv_stride": 4, "pos_conv_kernel": 9,
    "pos_conv_groups": 4,
}
MODELS = ("fusion-small", "blind")


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="working folder")
    parser.add_argument("--minutes", type=float, default=3.0,
                        help="training time cap per model in minutes (default 3; training also stops at --max-steps)")
    parser.add_argument("--max-steps", type=int, default=400, help="optimizer updates per model (default 400)")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per step (default 16)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    parser.add_argument("--test-fraction", type=float, default=0.25, help="share of ECGs held out (default 0.25)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the ECG hold-out and training (default 0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: these small models gain nothing from more, and on a "
                        "shared machine extra threads made steps ~4x slower)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help=f"models to train (default: {' '.join(MODELS)})")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def holdout_by_ecg(mapped: Path, out: Path, *, test_fraction: float = 0.25, seed: int = 0,
                   variant: str = "template") -> dict[str, Any]:
    """Write a copy of the mapped release ``mapped`` to ``out`` with ``train``/``test`` splits disjoint by ECG.

    Every question of ``variant`` (all splits) is pooled; a seeded ``test_fraction`` of its ECGs is held
    out. Returns the split report (also written as ``out/split_report.json``).
    """
    from ecgqa.release import load_shard, shards

    if not 0 < test_fraction < 1:
        raise ValueError(f"--test-fraction must be between 0 and 1, not {test_fraction}")
    samples = [s for shard in shards(mapped, variants=(variant,)) for s in load_shard(shard)]
    if not samples:
        raise FileNotFoundError(f"{mapped}: no {variant} questions; expected the output of `ecgqa map`")
    ecgs = sorted({int(e) for s in samples for e in s["ecg_id"]})
    random.Random(seed).shuffle(ecgs)
    test_ecgs = set(ecgs[: max(1, round(test_fraction * len(ecgs)))])
    split: dict[str, list[dict]] = {"train": [], "test": []}
    left_out = []
    for s in samples:
        held = [int(e) in test_ecgs for e in s["ecg_id"]]
        if all(held):
            split["test"].append(s)
        elif not any(held):
            split["train"].append(s)
        else:
            left_out.append(s["sample_id"])

    if out.exists():
        shutil.rmtree(out)
    staging = out.parent / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in ("answers.csv", "answers_for_each_template.csv", "mapping_report.json"):
        if (mapped / name).is_file():
            shutil.copy2(mapped / name, staging / name)
    report = {"source": str(mapped), "variant": variant, "seed": seed, "test_fraction": test_fraction,
              "left_out_samples": left_out, "samples": {}, "ecgs": {}}
    for name, rows in split.items():
        folder = staging / variant / name
        folder.mkdir(parents=True)
        (folder / "00000.json").write_text(json.dumps(rows))
        ids = sorted({int(e) for s in rows for e in s["ecg_id"]})
        (staging / f"{name}_ecgs.tsv").write_text("".join(f"{i}\t{e}\n" for i, e in enumerate(ids)))
        report["samples"][name] = len(rows)
        report["ecgs"][name] = ids
    (staging / "split_report.json").write_text(json.dumps(report, indent=1))
    staging.rename(out)
    return report


def _time_limit(seconds: float):
    """A Trainer callback that ends training once ``seconds`` have passed (the model so far is kept)."""
    from transformers import TrainerCallback

    class TimeLimit(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.deadline = time.monotonic() + seconds

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() > self.deadline:
                control.should_training_stop = True
                self.stopped_at = state.global_step

    return TimeLimit()


def run(args: argparse.Namespace) -> int:
    import os

    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    from ecgqa import sample
    from ecgqa.evaluate import evaluate
    from ecgqa.files import atomic_write
    from ecgqa.prepare import prepare
    from ecgqa.report import compare_table
    from ecgqa.train import TrainConfig, train
    from mapping.mapper import map_release

    start = time.perf_counter()
    out: Path = args.out
    progress = not args.quiet
    steps = 4 + len(args.models) * 2

    def say(step: int, text: str) -> None:
        print(f"[{step}/{steps}] {text}  ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)

    paths = sample.paths()
    mapped = out / "mapped" / "ptbxl"
    say(1, f"mapping the bundled sample into {mapped}")
    map_release("ptbxl", paths.ptbxl_release, paths.ptbxl_records, mapped, progress=progress)

    release = out / "release" / "ptbxl"
    say(2, f"holding out {args.test_fraction:.0%} of the ECGs as the test split: {release}")
    split = holdout_by_ecg(mapped, release, test_fraction=args.test_fraction, seed=args.seed)
    print(f"  train {split['samples']['train']} questions over {len(split['ecgs']['train'])} ECGs, "
          f"test {split['samples']['test']} over {len(split['ecgs']['test'])} ECGs, "
          f"{len(split['left_out_samples'])} comparison questions across the cut left out", file=sys.stderr)

    prepared = out / "prepared" / "ptbxl-template-qa"
    say(3, f"preparing {prepared}")
    prepare(release, prepared, variant="template", task="qa", rate=500, progress=progress)

    reports = []
    step = 4
    for name in args.models:
        ckpt = out / "checkpoints" / name
        say(step, f"training {name} (at most {args.max_steps} steps or {args.minutes:g} min) into {ckpt}")
        limit = _time_limit(60 * args.minutes)
        if ckpt.exists():
            shutil.rmtree(ckpt)  # a fresh run each time: an old Trainer state would be resumed otherwise
        train(TrainConfig(data=prepared, model=name, out=ckpt, max_steps=args.max_steps, batch_size=args.batch_size,
                          lr=args.lr, warmup=0.05, seed=args.seed, eval_split=None, overrides=dict(QUICK_MODEL),
                          logging_steps=50, quiet=args.quiet), callbacks=[limit])
        if getattr(limit, "stopped_at", None):
            print(f"  time cap reached after {limit.stopped_at} steps", file=sys.stderr)
        report_dir = out / "reports" / name
        say(step + 1, f"evaluating {name} on the held-out test split into {report_dir}")
        reports.append(evaluate(ckpt, prepared, "test", report_dir, progress=progress))
        step += 2

    say(steps, "done")
    table = compare_table(reports, list(args.models))
    atomic_write(out / "comparison.md", table)
    print("\nExact match (%) on the held-out test split (no test ECG was seen in training):\n")
    print(table)
    print(f"mapped release:   {mapped}\nre-split release: {release} (split_report.json)\nprepared data:    {prepared}")
    for name in args.models:
        print(f"{name + ':':17s} checkpoint {out / 'checkpoints' / name}, report {out / 'reports' / name}/report.md")
    print(f"comparison:       {out / 'comparison.md'}  (ecgqa report {' '.join(str(out / 'reports' / n) for n in args.models)})")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0
