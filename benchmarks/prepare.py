"""`ecgqa prepare` against the one-file-per-sample layout of the upstream preprocessing.

Part 1 (bundled sample, real records): prepares the sample, and in the same run writes the baseline
layout (one ``.mat`` per QA sample holding its ECG(s) as read by wfdb, each ECG read once per sample,
as upstream does). Prints samples/s of both, bytes on disk of both, and loader throughput (samples/s
through a DataLoader with 2 workers) of the prepared directory vs a loader over the ``.mat`` files.

Part 2 (``--scale N``): a synthetic release of N ECGs (copies of real records under new ids) and
~26 samples per ECG, prepared with ``--num-proc``; prints ECGs/s and peak memory of the main process
and of one reader, to show memory stays flat as N grows (the store is streamed, never held in RAM).

    python benchmarks/prepare.py [--scale 2000] [--num-proc 2] [--epochs 3]
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
import scipy.io
import torch
import wfdb
from torch.utils.data import DataLoader, Dataset

from ecgqa.data.prepare import prepare
from ecgqa.data.prepared import SIGNALS, PreparedData
from ecgqa.data.torch_datasets import make_loader
from mapping.mapper import map_bundled_sample


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def baseline_write(mapped: Path, dest: Path) -> int:
    """The upstream layout: one .mat per QA sample, each ECG read (again) for every sample that uses it."""
    n = 0
    for split_dir in sorted((mapped / "template").iterdir()):
        out = dest / split_dir.name
        out.mkdir(parents=True)
        for shard in sorted(split_dir.glob("*.json")):
            for s in json.loads(shard.read_text()):
                ecgs = [wfdb.rdsamp(p)[0].T for p in s["ecg_path"]]
                scipy.io.savemat(
                    out / f"{s['sample_id']}.mat",
                    {"ecg": np.stack(ecgs), "question": s["question"], "answer": s["answer"]},
                )
                n += 1
    return n


class MatDataset(Dataset):
    def __init__(self, folder: Path) -> None:
        self.files = sorted(folder.glob("*.mat"))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        ecg = scipy.io.loadmat(self.files[i])["ecg"].astype(np.float32)
        out = np.zeros((2, 12, ecg.shape[-1]), dtype=np.float32)
        out[: len(ecg)] = ecg
        return torch.from_numpy(out)


def throughput(loader: DataLoader, epochs: int) -> float:
    it = iter(loader)
    next(it)  # workers up
    start, n = time.perf_counter(), 0
    for epoch in range(epochs):
        for batch in it if epoch == 0 else loader:
            n += len(batch["sample_id"]) if isinstance(batch, dict) else len(batch)
    return n / (time.perf_counter() - start)


def part1(tmp: Path, epochs: int) -> float:
    mapped = map_bundled_sample(tmp / "mapped")
    start = time.perf_counter()
    meta = prepare(mapped, tmp / "prepared", progress=False)
    t_prep = time.perf_counter() - start
    n_samples = sum(meta["splits"].values())

    start = time.perf_counter()
    n_base = baseline_write(mapped, tmp / "baseline")
    t_base = time.perf_counter() - start
    assert n_base == n_samples

    prep_bytes, base_bytes = du(tmp / "prepared"), du(tmp / "baseline")
    print(f"bundled sample: {n_samples} QA samples over {meta['n_ecgs']} ECGs")
    print(f"  write    prepare  {n_samples / t_prep:9.0f} samples/s ({t_prep:.2f} s, incl. the tokenizer)")
    print(
        f"           one .mat per sample {n_base / t_base:9.0f} samples/s ({t_base:.2f} s)   "
        f"speed ratio {t_base / t_prep:.2f}x"
    )
    print(
        f"  on disk  prepared {prep_bytes / 1e6:9.1f} MB   one .mat per sample {base_bytes / 1e6:9.1f} MB   "
        f"ratio {base_bytes / prep_bytes:.2f}x smaller"
    )

    data = PreparedData(tmp / "prepared")
    ours = throughput(make_loader(data, "train", batch_size=64, shuffle=True, num_workers=2), epochs)
    mats = DataLoader(
        MatDataset(tmp / "baseline" / "train"), batch_size=64, shuffle=True, num_workers=2, persistent_workers=True
    )
    theirs = throughput(mats, epochs)
    print(
        f"  loader   prepared {ours:9.0f} samples/s   .mat files {theirs:9.0f} samples/s   "
        f"ratio {ours / theirs:.2f}x   (2 workers, batch 64, {epochs} epochs of train)"
    )
    return n_base / t_base


def part2(tmp: Path, n_ecgs: int, num_proc: int, baseline_rate: float) -> None:
    from ecgqa import sample

    src = sample.paths()
    real = sorted((src.ptbxl_records / "records500" / "00000").glob("*_hr.hea"))[:50]
    records = tmp / "scale" / "ptbxl"
    for ecg_id in range(1, n_ecgs + 1):
        base = real[ecg_id % len(real)]
        folder = records / "records500" / f"{ecg_id // 1000 * 1000:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{ecg_id:05d}_hr"
        (folder / f"{name}.hea").write_text(base.read_text().replace(base.stem, name))
        os.link(base.with_suffix(".dat"), folder / f"{name}.dat")
    release = tmp / "scale" / "release"
    (release / "template" / "train").mkdir(parents=True)
    for f in ("answers.csv", "answers_for_each_template.csv"):
        shutil.copy(src.ptbxl_release / f, release / f)
    rng = np.random.default_rng(0)
    n_samples = n_ecgs * 26
    samples = [
        {
            "template_id": 26,
            "question_id": 1709,
            "sample_id": i,
            "question_type": "single-verify",
            "attribute_type": "noise",
            "question": "Does this ECG show static noise in lead aVL?",
            "answer": ["no"],
            "ecg_id": [int(rng.integers(1, n_ecgs + 1))],
            "attribute": ["static noise"],
        }
        for i in range(n_samples)
    ]
    for k in range(0, n_samples, 10_000):
        (release / "template" / "train" / f"{k}.json").write_text(json.dumps(samples[k : k + 10_000]))
    del samples
    from mapping.mapper import map_release

    mapped = tmp / "scale" / "mapped"
    map_release("ptbxl", release, records, mapped, progress=False)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    meta = prepare(mapped, tmp / "scale" / "prepared", num_proc=num_proc, progress=False)
    t = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    store = (tmp / "scale" / "prepared" / SIGNALS).stat().st_size
    grown = (rss - rss0) / 1e3
    print(
        f"scale: {meta['n_ecgs']} ECGs, {meta['splits']['train']} samples (26 per ECG, as in PTB-XL), "
        f"--num-proc {num_proc}: {meta['n_ecgs'] / t:.0f} ECGs/s, {meta['splits']['train'] / t:.0f} samples/s "
        f"({t:.1f} s)"
    )
    print(
        f"  vs one .mat per sample at the rate measured above ({baseline_rate:.0f} samples/s, 1 process): "
        f"{meta['splits']['train'] / t / baseline_rate:.1f}x faster"
    )
    print(
        f"  memory: store {store / 1e6:.0f} MB on disk; main process peak RSS grew {grown:.0f} MB during prepare "
        f"(peak {rss / 1e3:.0f} MB); largest child process {child / 1e3:.0f} MB (forked, shares the parent's pages)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=0, help="also run the synthetic scale test with N ECGs")
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="ecgqa-bench-prepare-") as tmp:
        rate = part1(Path(tmp), args.epochs)
        if args.scale:
            part2(Path(tmp), args.scale, args.num_proc, rate)


if __name__ == "__main__":
    main()
