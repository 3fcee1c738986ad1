"""Training throughput of the reference models at their published widths, and of the data loader.

    python benchmarks/train.py                       # every reference model, CPU, batch 2, 2 timed steps
    python benchmarks/train.py --models fusion-small se-wrn --steps 5
    python benchmarks/train.py --device cuda --precision bf16 --batch-size 16 --steps 20   # + MFU
    python benchmarks/train.py --loader --model fusion-test --steps 30                       # loader vs memory

Models mode: each model does optimizer steps (forward with labels → the model's own loss, backward, Adam)
on one in-memory batch of the published input shapes (two 12-lead ECGs of 5000 samples and a 24-token
question for QA; one ECG for the upperbound classifiers). The first model (``fusion-small`` by default) is
the baseline, timed first and again last in the same run (the ratio uses the mean of both), so
``× baseline`` compares models on this machine even when its load drifts. Model FLOPs per step are
counted once with ``torch.utils.flop_counter`` (the warm-up step); on CUDA the model FLOP utilisation
is printed against the device's dense bf16/fp32 peak (``--peak-tflops`` or a table of known GPUs).

Loader mode (``--loader``): the same model fed by the real data loader vs one in-memory batch, on a
prepared directory (default: the bundled sample, prepared now). ``loader / in-memory`` close to 1.0
means data loading does not hold training back.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

#: dense (no sparsity) peak TFLOP/s per GPU name fragment, for MFU: (bf16, fp32 via TF32)
PEAK_TFLOPS = {"H100": (989.0, 494.0), "H200": (989.0, 494.0), "A100": (312.0, 156.0), "L40S": (362.0, 183.0)}
QUESTION_TOKENS = 24


def build_sample(dest: Path) -> Path:
    """Prepare the bundled PTB-XL sample (task qa, template, 500 Hz) into ``dest``."""
    from ecgqa.data.prepare import prepare
    from mapping.mapper import map_bundled_sample

    mapped = map_bundled_sample(dest / "mapped")
    out = dest / "prepared-qa"
    prepare(mapped, out, variant="template", task="qa", rate=500, progress=False)
    return out


def synthetic_batch(name: str, batch_size: int, generator: Any) -> tuple[dict[str, Any], int]:
    """A batch of the published input shapes for model ``name`` (random values), and its class count."""
    import torch

    from ecgqa.models import task_of

    if task_of(name) == "qa":
        n_classes = 103
        ecg_mask = torch.ones(batch_size, 2, dtype=torch.bool)
        ecg_mask[: batch_size // 2, 1] = False  # half single-ECG questions, as in the data
        batch = {
            "ecg": torch.randn(batch_size, 2, 12, 5000, generator=generator),
            "ecg_mask": ecg_mask,
            "input_ids": torch.randint(1000, 30000, (batch_size, QUESTION_TOKENS), generator=generator),
            "attention_mask": torch.ones(batch_size, QUESTION_TOKENS, dtype=torch.long),
            "labels": (torch.rand(batch_size, n_classes, generator=generator) < 0.02).float(),
        }
    else:
        n_classes = 83
        batch = {
            "ecg": torch.randn(batch_size, 12, 5000, generator=generator),
            "lead_mask": torch.ones(batch_size, 12, dtype=torch.bool),
            "labels": (torch.rand(batch_size, n_classes, generator=generator) < 0.5).float(),
            "label_mask": torch.rand(batch_size, n_classes, generator=generator) < 0.05,
        }
    return batch, n_classes


def make_step(model: Any, device: Any, precision: str) -> Callable[[dict[str, Any]], None]:
    """One optimizer update on ``batch`` with the model's own loss (Adam, betas 0.9/0.98 as upstream)."""
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

    def step(batch: dict[str, Any]) -> None:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "sample_id"}
        with autocast:
            loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def peak_tflops(device: Any, precision: str, given: float | None) -> float | None:
    """The device's dense peak for ``precision``: ``given``, else the table for a known GPU, else None."""
    if given or device.type != "cuda":
        return given
    import torch

    name = torch.cuda.get_device_name(device)
    for fragment, (bf16, fp32) in PEAK_TFLOPS.items():
        if fragment in name:
            return bf16 if precision == "bf16" else fp32
    return None


def timed(step: Callable[[dict[str, Any]], None], batch: dict[str, Any], steps: int, sync: Callable[[], None]) -> float:
    """Seconds per step over ``steps`` steps (after the caller's warm-up)."""
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(batch)
    sync()
    return (time.perf_counter() - t0) / steps


def measure(name: str, args: argparse.Namespace, device: Any, sync: Callable[[], None]) -> tuple[int, float, float]:
    """(parameters, model FLOPs per step, seconds per step) of ``name`` at its published width."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ecgqa.models import create_model

    torch.manual_seed(0)
    batch, n_classes = synthetic_batch(name, args.batch_size, torch.Generator().manual_seed(0))
    model = create_model(name, classes=[f"c{i}" for i in range(n_classes)]).to(device).train()
    step = make_step(model, device, args.precision)
    with FlopCounterMode(display=False) as counter:
        step(batch)  # warm-up, counted
    seconds = timed(step, batch, args.steps, sync)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops(), seconds


def run_models(args: argparse.Namespace) -> None:
    import sys

    import torch

    device = torch.device(args.device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    peak = peak_tflops(device, args.precision, args.peak_tflops)
    results = {}
    for name in args.models:
        results[name] = measure(name, args, device, sync)
        print(f"  {name}: {args.batch_size / results[name][2]:.3f} samples/s", file=sys.stderr, flush=True)
    # the baseline is timed first and again last: on a shared machine the load drifts, and the ratios
    # use the mean of both baseline timings (both are printed, so the drift is visible)
    base = args.models[0]
    base_again = measure(base, args, device, sync)[2] if len(args.models) > 1 else results[base][2]
    base_sps = args.batch_size / ((results[base][2] + base_again) / 2)
    print(
        f"device {device} ({torch.get_num_threads()} threads), {args.precision}, batch {args.batch_size}, "
        f"{args.steps} timed steps after 1 warm-up; baseline {base}: {args.batch_size / results[base][2]:.4f} "
        f"samples/s first, {args.batch_size / base_again:.4f} last"
    )
    header = f"{'model':<22}{'params (M)':>11}{'GFLOP/sample':>14}{'samples/s':>11}{'× baseline':>11}"
    print(header + (f"{'MFU %':>8}" if peak else ""))
    for name, (n_params, flops, seconds) in results.items():
        sps = args.batch_size / seconds
        line = (
            f"{name:<22}{n_params / 1e6:>11.1f}{flops / args.batch_size / 1e9:>14.2f}{sps:>11.4f}"
            f"{sps / base_sps:>11.3f}"
        )
        if peak:
            line += f"{100 * flops / seconds / 1e12 / peak:>8.1f}"
        print(line)
    if peak:
        print(f"MFU = counted model FLOPs per second / {peak:g} TFLOP/s (dense {args.precision} peak)")


def run_loader(args: argparse.Namespace) -> None:
    import torch

    from ecgqa.data.torch_datasets import PreparedData, make_loader
    from ecgqa.models import create_model

    tmp = tempfile.TemporaryDirectory()
    data = PreparedData(args.data or build_sample(Path(tmp.name)))
    device = torch.device(args.device)
    torch.manual_seed(0)
    tok = data.tokenizer
    model = (
        create_model(
            args.model,
            classes=data.classes,
            vocab_size=len(tok),
            pad_token_id=tok.pad_token_id,
            sep_token_id=tok.sep_token_id,
        )
        .to(device)
        .train()
    )
    step = make_step(model, device, args.precision)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    loader = make_loader(
        data,
        "train",
        args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    fixed = next(iter(make_loader(data, "train", args.batch_size, shuffle=True)))

    def run(batches: Any) -> float:
        it = iter(batches)
        step(next(it))  # warm-up (worker start, allocator, kernels)
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(next(it))
        sync()
        return args.steps * args.batch_size / (time.perf_counter() - t0)

    def forever(make: Callable[[], Any]) -> Any:
        while True:
            yield from make()

    memory_sps = run(forever(lambda: [fixed]))
    loader_sps = run(forever(lambda: loader))
    print(f"model {args.model}, batch {args.batch_size}, {args.steps} timed steps, device {device}, {args.precision}")
    print(f"{'in-memory batch':<26}{memory_sps:>10.2f} samples/s")
    print(f"{f'real loader ({args.workers} workers)':<26}{loader_sps:>10.2f} samples/s")
    print(f"ratio loader / in-memory: {loader_sps / memory_sps:.2f}")
    tmp.cleanup()


def main() -> None:
    from ecgqa.models import reference_models

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--models",
        nargs="+",
        default=reference_models(),
        help="models to time; the first is the baseline (default: every reference model)",
    )
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per model (after one warm-up step)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak TFLOP/s for MFU (default: known GPUs)")
    ap.add_argument("--loader", action="store_true", help="loader mode: real data loader vs one in-memory batch")
    ap.add_argument("--model", default="fusion-test", help="loader mode: the model")
    ap.add_argument("--data", type=Path, help="loader mode: prepared qa directory (default: the bundled sample)")
    ap.add_argument("--workers", type=int, default=2, help="loader mode: data loader workers")
    args = ap.parse_args()
    if args.precision == "bf16" and args.device == "cpu":
        ap.error("--precision bf16 is for GPUs (CPU autocast to bf16 is slower than fp32 on most CPUs)")
    (run_loader if args.loader else run_models)(args)


if __name__ == "__main__":
    main()
