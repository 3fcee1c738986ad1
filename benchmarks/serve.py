"""Load test of `ecgqa serve`: N requests at concurrency C against /api/answer from a second process.

    python benchmarks/serve.py                                # quickstart model, bundled sample
    python benchmarks/serve.py --checkpoint CKPT --data PREPARED --requests 200 --concurrency 8

Starts the server as a subprocess on a free localhost port, measures a direct in-process
``ecgqa.load(CKPT).answer(...)`` baseline on the same questions in this process (before the load,
so the two do not compete for cores), then fires the load with a thread pool of httpx clients.
Prints p50/p95/p99 latency, requests/s, errors (must be 0) and the served/direct latency ratio.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="QA checkpoint (default: the quickstart model)")
    ap.add_argument("--data", type=Path, default=None, help="prepared QA dir (default: the quickstart data)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--direct", type=int, default=30, help="direct answer() calls for the baseline")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)

    import httpx

    import ecgqa
    from ecgqa.prepared import PreparedData
    from ecgqa.serve.cli import ensure_quickstart

    if args.checkpoint is None:
        args.checkpoint, args.data = ensure_quickstart(Path("runs/quickstart"), quiet=args.quiet)
    data = PreparedData(args.data)
    split = data.split(data.splits[-1]).select_columns(["question", "ecg_id", "valid_classes"])
    rows = [split[i] for i in range(min(len(split), 64))]
    requests = [{"ecg_ids": rows[i % len(rows)]["ecg_id"], "question": rows[i % len(rows)]["question"]}
                for i in range(args.requests)]

    # Baseline: the same questions answered in-process, one at a time.
    predictor = ecgqa.load(args.checkpoint, device=args.device)
    classes = data.classes

    def direct(i: int) -> float:
        row = rows[i % len(rows)]
        ecgs = [np.asarray(data.signals[data.row_of(e)], dtype=np.float32) for e in row["ecg_id"]]
        t = time.perf_counter()
        predictor.answer(ecgs, row["question"], [classes[c] for c in row["valid_classes"]])
        return time.perf_counter() - t

    for i in range(3):
        direct(i)  # warm-up
    direct_s = [direct(i) for i in range(args.direct)]

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = Path(tempfile.mkdtemp(prefix="ecgqa-bench-")) / "server.log"
    log = log_path.open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "ecgqa", "serve", "--checkpoint", str(args.checkpoint), "--data", str(args.data),
         "--port", str(port), "--device", args.device, "-q"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise SystemExit(f"server exited ({server.returncode}); log: {log_path.read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("server did not start within 120 s")
            time.sleep(0.3)

        with httpx.Client(base_url=url, timeout=60) as warm:
            for body in requests[:4]:
                warm.post("/api/answer", json=body).raise_for_status()

        clients = [httpx.Client(base_url=url, timeout=60) for _ in range(args.concurrency)]
        errors: list[str] = []
        batch_sizes: list[int] = []

        def fire(i: int) -> float:
            t = time.perf_counter()
            try:
                r = clients[i % args.concurrency].post("/api/answer", json=requests[i])
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                else:
                    batch_sizes.append(r.json()["timing"]["batch_size"])
            except httpx.HTTPError as e:
                errors.append(repr(e))
            return time.perf_counter() - t

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            latencies = list(pool.map(fire, range(args.requests)))
        wall = time.perf_counter() - t0
        for c in clients:
            c.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()

    ms = [x * 1000 for x in latencies]
    d50 = statistics.median(direct_s) * 1000
    print(f"ecgqa serve load test: {args.requests} requests, concurrency {args.concurrency}, "
          f"checkpoint {args.checkpoint}, device {args.device}")
    print(f"  served latency   p50 {_pct(ms, 50):8.1f} ms   p95 {_pct(ms, 95):8.1f} ms   p99 {_pct(ms, 99):8.1f} ms")
    print(f"  throughput       {args.requests / wall:8.1f} req/s   (wall {wall:.2f} s)")
    print(f"  errors           {len(errors)}")
    print(f"  batch size       mean {np.mean(batch_sizes or [0]):.2f}, max {max(batch_sizes or [0])}")
    print(f"  direct answer()  p50 {d50:8.1f} ms   ({1000 / d50:.1f} answers/s one at a time)")
    print(f"  ratio served p50 / direct p50: {_pct(ms, 50) / d50:.2f}x;  "
          f"served req/s / direct answers/s: {(args.requests / wall) / (1000 / d50):.2f}x")
    for e in errors[:5]:
        print("  error:", e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
