"""Training throughput of a QA model: the real data loader vs the same model fed one in-memory batch.

    python benchmarks/train.py                      # fusion-small, batch 8, on the bundled sample (CPU)
    python benchmarks/train.py --tiny --steps 30    # quick look
    python benchmarks/train.py --device cuda --precision bf16 --model fusion-base --steps 300 --peak-tflops 989

Both runs do the same optimizer steps (forward, BCE, backward, AdamW) on the same model; the only
difference is where the batch comes from. ``loader / in-memory`` close to 1.0 means data loading
does not hold training back; well below 1.0 means add ``--workers`` (or faster storage).
Model FLOPs per step are counted once with ``torch.utils.flop_counter``; with ``--peak-tflops``
(the device's dense peak for the precision used) the model FLOP utilisation is printed too.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path


def build_sample(dest: Path) -> Path:
    """Prepare the bundled PTB-XL sample (task qa, template, 500 Hz) into ``dest``."""
    from ecgqa.prepare import prepare
    from mapping.mapper import map_bundled_sample

    mapped = map_bundled_sample(dest / "mapped")
    out = dest / "prepared-qa"
    prepare(mapped, out, variant="template", task="qa", rate=500, progress=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="prepared qa directory (default: the bundled sample, prepared now)")
    ap.add_argument("--model", default="fusion-small")
    ap.add_argument("--tiny", action="store_true", help="tiny widths (ecgqa.models.TINY)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per run (after one warm-up step)")
    ap.add_argument("--workers", type=int, default=2, help="data loader workers of the real-loader run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak TFLOP/s, for MFU")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from ecgqa.data import make_loader
    from ecgqa.prepared import PreparedData
    from ecgqa.models import create_model, tiny

    tmp = tempfile.TemporaryDirectory()
    data_dir = args.data or build_sample(Path(tmp.name))
    data = PreparedData(data_dir)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(args.model, classes=data.classes, vocab_size=len(data.tokenizer),
                         pad_token_id=data.tokenizer.pad_token_id, **(tiny(args.model) if args.tiny else {}))
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98))
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext())
    keys = ("ecg", "ecg_mask", "input_ids", "attention_mask")

    def step(batch: dict) -> None:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k in keys or k == "labels"}
        with autocast:
            logits = model(**{k: batch[k] for k in keys}).logits
            loss = F.binary_cross_entropy_with_logits(logits.float(), batch["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    loader = make_loader(data, "train", args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True,
                         pin_memory=device.type == "cuda")
    fixed = next(iter(make_loader(data, "train", args.batch_size, shuffle=True)))

    with FlopCounterMode(display=False) as counter:
        step(fixed)
    flops_per_step = counter.get_total_flops()

    def timed(batches) -> float:
        it = iter(batches)
        step(next(it))  # warm-up (worker start, allocator, kernels)
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(next(it))
        sync()
        return args.steps * args.batch_size / (time.perf_counter() - t0)

    def forever_loader():
        while True:
            yield from loader

    def forever_fixed():
        while True:
            yield fixed

    memory_sps = timed(forever_fixed())
    loader_sps = timed(forever_loader())
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {args.model}{' (tiny)' if args.tiny else ''}: {n_params / 1e6:.2f} M parameters, batch {args.batch_size}, "
          f"{args.steps} timed steps, device {device} ({torch.get_num_threads()} threads), {args.precision}")
    print(f"{'feed':<22}{'samples/s':>12}{'TFLOP/s':>10}")
    for name, sps in (("in-memory batch", memory_sps), (f"real loader ({args.workers} workers)", loader_sps)):
        tflops = sps / args.batch_size * flops_per_step / 1e12
        print(f"{name:<22}{sps:>12.2f}{tflops:>10.3f}")
    print(f"ratio loader / in-memory: {loader_sps / memory_sps:.2f}")
    if args.peak_tflops:
        mfu = loader_sps / args.batch_size * flops_per_step / 1e12 / args.peak_tflops
        print(f"model FLOP utilisation (real loader): {100 * mfu:.1f} % of {args.peak_tflops} TFLOP/s")
    tmp.cleanup()


if __name__ == "__main__":
    main()
