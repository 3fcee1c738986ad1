"""Loader throughput against a GPU's appetite: ``make_loader`` samples/s vs what fusion-base eats on one H100.

    python benchmarks/loader.py                                   # the bundled sample, prepared on the fly
    python benchmarks/loader.py --data PREPARED_QA --workers 0 1 2 --batch-size 8 64 --seconds 20 [--cold]

1. Appetite: fusion-base's training FLOPs per sample (2 ECGs × 12 × 5000 samples and the split's mean
   question length), counted with ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass on
   the CPU (matmuls and convolutions; the attention products, which the counter does not see through
   CPU SDPA, are added analytically: 4·S²·D per layer), times 3 for forward + backward. The samples/s
   a bf16 step consumes at 40 % MFU of an H100's dense bf16 peak (989 TFLOP/s) is
   ``0.4 · 989e12 / FLOPs_per_sample``.
2. Supply: samples/s of ``make_loader`` (shuffled, as in training) with 0 (the baseline, in this
   process), 1, 2, ... workers, timed after the first batch (worker start-up is reported apart), for
   ``--seconds`` per setting. ``--cold`` drops the signal store from the page cache before each
   setting (``posix_fadvise(DONTNEED)``), so reads come from disk.
3. The ratio supply / appetite per setting, and an extrapolation to a GPU machine's cores: the best
   measured per-worker rate × (cores − 1) — labelled as such, measured here on a shared 2-core machine.
4. Where a sample's time goes (one process): the Arrow row read, tokenising, copying the ECGs out of
   the store, collating.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

H100_BF16_DENSE = 989e12  # FLOP/s, NVIDIA H100 SXM dense bf16 (no sparsity)
MFU = 0.4


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f} (1/5 min)"


def mean_question_tokens(data, split: str, limit: int = 5000, max_len: int = 64) -> float:
    table = data.split(split)
    questions = list(table.select(range(min(limit, len(table))))["question"])
    ids = data.tokenizer(questions, truncation=True, max_length=max_len)["input_ids"]
    return sum(map(len, ids)) / len(ids)


def appetite(data, question_tokens: float) -> dict:
    """fusion-base FLOPs per training sample and the samples/s one H100 consumes at 40 % MFU."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ecgqa.models import create_model

    model = create_model("fusion-base", classes=data.classes, vocab_size=len(data.tokenizer)).eval()
    c = model.config
    q = max(1, round(question_tokens))
    t = data.signal_length
    batch = {
        "ecg": torch.randn(1, 2, 12, t),
        "ecg_mask": torch.ones(1, 2, dtype=torch.bool),
        "input_ids": torch.randint(1000, 2000, (1, q)),
        "attention_mask": torch.ones(1, q, dtype=torch.long),
    }
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**batch)
    counts = {str(k).removeprefix("aten."): v for k, v in counter.get_flop_counts()["Global"].items()}
    ecg_tokens = t
    for _ in range(c.conv_layers):
        ecg_tokens = (ecg_tokens - c.conv_kernel) // c.conv_stride + 1
    seq = 2 * ecg_tokens + 1 + q  # [ECG1][SEP][ECG2][question]
    attention = 4 * seq * seq * c.hidden_size * c.num_layers  # QK^T and AV, 2 FLOPs per multiply-add
    counted = sum(counts.values())
    fwd = counted + (0 if any("scaled_dot_product" in k for k in counts) else attention)
    params = sum(p.numel() for p in model.parameters())
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    per_sample = 3 * fwd
    return {
        "params": params,
        "dense_params": params - embeddings,
        "seq": seq,
        "q": q,
        "counts": counts,
        "attention": attention,
        "fwd": fwd,
        "per_sample": per_sample,
        "six_n_s": 6 * (params - embeddings) * seq,
        "need": MFU * H100_BF16_DENSE / per_sample,
    }


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def supply(data, split: str, batch_size: int, workers: int, seconds: float, cold: bool) -> dict:
    """Samples/s of make_loader after its first batch, over ``seconds`` (or the whole split when shorter)."""
    from ecgqa.data.prepared import SIGNALS
    from ecgqa.data.torch_datasets import make_loader

    if cold:
        drop_cache(data.path / SIGNALS)
    t0 = time.perf_counter()
    loader = make_loader(
        data, split, batch_size=batch_size, shuffle=True, num_workers=workers, prefetch_factor=4 if workers else None
    )
    it = iter(loader)
    first = next(it)
    startup = time.perf_counter() - t0
    n, t1 = 0, time.perf_counter()
    assert first["ecg"].shape[1:] == (2, 12, data.signal_length)
    for batch in it:
        n += len(batch["sample_id"])
        if time.perf_counter() - t1 > seconds:
            break
    wall = time.perf_counter() - t1
    del it, loader
    return {"rate": n / wall if wall else 0.0, "startup": startup, "n": n, "wall": wall}


def breakdown(data, split: str, batch_size: int, batches: int = 20) -> dict:
    """Seconds per sample of each step of the in-process path (shuffled indices)."""
    import numpy as np

    from ecgqa.data.torch_datasets import ECGQADataset, collate_qa

    ds = ECGQADataset(data, split)
    rng = np.random.default_rng(0)
    idx = [rng.choice(len(ds), batch_size, replace=len(ds) < batch_size).tolist() for _ in range(batches)]
    out = {"arrow rows": 0.0, "tokenise": 0.0, "ECG copy + item": 0.0, "collate": 0.0}
    for ids in idx:
        t0 = time.perf_counter()
        rows = ds._rows(ids)
        t1 = time.perf_counter()
        enc = ds.tokenizer([r["question"] for r in rows], truncation=True, max_length=ds.max_question_len)
        t2 = time.perf_counter()
        items = [ds._item(r, e) for r, e in zip(rows, enc["input_ids"], strict=False)]
        t3 = time.perf_counter()
        collate_qa(items)
        t4 = time.perf_counter()
        for k, dt in zip(out, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=False):
            out[k] += dt
    n = batches * batch_size
    return {k: v / n for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="prepared QA directory (default: the bundled sample, prepared)")
    ap.add_argument("--split", default="train")
    ap.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        default=[8, 64],
        help="8 = the paper recipe's per-device batch for fusion-base",
    )
    ap.add_argument("--workers", type=int, nargs="+", default=None, help="default: 0 1 2 … this machine's cores")
    ap.add_argument("--seconds", type=float, default=15.0, help="per setting")
    ap.add_argument("--gpu-cores", type=int, default=16, help="CPU cores of the GPU machine (extrapolation)")
    ap.add_argument("--cold", action="store_true", help="drop the signal store from the page cache before each run")
    args = ap.parse_args()

    from ecgqa.data.prepared import SIGNALS, PreparedData

    if args.data is None:
        args.data = Path(tempfile.mkdtemp(prefix="ecgqa-loader-")) / "prepared"
        subprocess.run(
            [sys.executable, "-m", "ecgqa", "prepare", "--out", str(args.data), "-q"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    data = PreparedData(args.data)
    cores = os.cpu_count() or 1
    workers = args.workers if args.workers is not None else sorted({0, 1, 2, cores})
    store_gb = (data.path / SIGNALS).stat().st_size / 1e9
    print(
        f"# loader throughput: {data.path} ({data.info.n_ecgs} ECGs, store {store_gb:.2f} GB "
        f"{data.signals.dtype}, split {args.split}: {len(data.split(args.split))} questions)"
    )
    print(
        f"this machine: {cores} cores, {_load()}; shared with six other engineers' jobs, so every rate "
        "below is a lower bound of what the cores give alone"
    )

    q = mean_question_tokens(data, args.split)
    a = appetite(data, q)
    print("\n## appetite: fusion-base, one H100, bf16, 40 % MFU")
    print(
        f"params {a['params'] / 1e6:.1f} M ({a['dense_params'] / 1e6:.1f} M outside the embedding tables); "
        f"sequence S = 2·{(a['seq'] - 1 - a['q']) // 2} ECG tokens + 1 SEP + {a['q']} question tokens "
        f"(split mean {q:.1f}) = {a['seq']}"
    )
    counted = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in a["counts"].items())
    print(
        f"forward, counted by FlopCounterMode (GFLOP): {counted}; attention 4·S²·D·layers = "
        f"{a['attention'] / 1e9:.1f} (added)"
    )
    print(
        f"FLOPs/sample = 3 × forward = 3 × {a['fwd'] / 1e9:.1f} G = {a['per_sample'] / 1e9:.0f} GFLOP "
        f"(cross-check 6·N·S = {a['six_n_s'] / 1e9:.0f} G + attention 3·4·S²·D·L = "
        f"{3 * a['attention'] / 1e9:.0f} G)"
    )
    print(
        f"appetite = {MFU} × {H100_BF16_DENSE / 1e12:.0f} TFLOP/s (H100 dense bf16 peak) / FLOPs per sample = "
        f"{a['need']:.0f} samples/s"
    )

    print("\n## supply: make_loader samples/s (shuffled; after the first batch)")
    print(
        f"{'batch':>5} {'workers':>7} {'samples/s':>10} {'per worker':>10} {'vs 0 workers':>12} "
        f"{'supply/appetite':>15} {'start-up s':>10}  load"
    )
    best_per_worker = 0.0
    for bs in args.batch_size:
        base = None
        for w in workers:
            r = supply(data, args.split, bs, w, args.seconds, args.cold)
            base = base or r["rate"]
            per = r["rate"] / max(w, 1)
            if w:
                best_per_worker = max(best_per_worker, per)
            print(
                f"{bs:>5} {w:>7} {r['rate']:>10.0f} {per:>10.0f} {r['rate'] / base:>12.2f} "
                f"{r['rate'] / a['need']:>15.2f} {r['startup']:>10.2f}  {_load()}",
                flush=True,
            )
    n_gpu = args.gpu_cores - 1
    print(
        f"\nEXTRAPOLATION (not measured): a GPU machine with {args.gpu_cores} cores runs {n_gpu} workers beside the "
        f"training process; at the best per-worker rate measured here ({best_per_worker:.0f} samples/s) that is "
        f"{best_per_worker * n_gpu:.0f} samples/s = {best_per_worker * n_gpu / a['need']:.1f} × the appetite "
        f"(goal ≥ 2). It assumes the per-worker rate holds per core (workers share nothing but the page cache)."
    )

    bs = args.batch_size[0]
    parts = breakdown(data, args.split, bs)
    total = sum(parts.values())
    print(
        f"\n## where a sample's time goes (one process, batch {bs}): {1e3 * total:.2f} ms/sample = "
        f"{1 / total:.0f} samples/s"
    )
    for k, v in parts.items():
        print(f"  {k:<16} {1e3 * v:7.3f} ms  {100 * v / total:5.1f} %")


if __name__ == "__main__":
    main()
