"""Load and slow-client test of `ecgqa serve` from a second process, with the server's memory and threads.

    python benchmarks/serve.py                                   # quickstart model, bundled sample
    python benchmarks/serve.py --checkpoint CKPT --data PREPARED --requests 400 --concurrency 32 --rounds 3 --mixed
    python benchmarks/serve.py --checkpoint CKPT --data PREPARED --requests 0 --slow 30 --big-header 20000

Starts the server as a subprocess on a free localhost port (so its RSS and thread count can be read
with psutil), optionally measures a direct in-process ``ecgqa.load(CKPT).answer(...)`` baseline first
(``--direct N``; before the load, so the two do not compete for cores), then:

- ``--rounds`` rounds of ``--requests`` POST /api/answer at ``--concurrency`` (``--mixed``: a quarter
  plot PNGs of distinct ECGs and a quarter .npy uploads), printing p50/p95/p99, req/s, non-2xx
  count, and the server's RSS and threads after each round (RELIABILITY-PROBE S16, S17);
- ``--slow N``: N idle connections, N connections trickling a header line per second and N slow
  bodies (4.5 MB of a declared 5 MB), held for ``--slow-seconds``; prints how many the server
  closed, its RSS at the peak, and /healthz latency meanwhile (S15);
- ``--big-header LINES``: one WFDB upload whose header has that many signal lines; prints the
  status and the server's time to answer (S14).

Requests are built from the server's own /api/examples, so any version of the server can be measured.
Every phase is bounded in time; the server is stopped by its own PID at the end.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
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
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _usage(proc) -> str:
    mem = proc.memory_info().rss / 2**20
    return f"RSS {mem:7.0f} MB  threads {proc.num_threads():3d}  open fds {proc.num_fds():4d}"


def _start(args: argparse.Namespace, port: int) -> tuple[subprocess.Popen, Path]:
    import httpx

    log_path = Path(tempfile.mkdtemp(prefix="ecgqa-bench-")) / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ecgqa",
                "serve",
                "--checkpoint",
                str(args.checkpoint),
                "--data",
                str(args.data),
                "--port",
                str(port),
                "--device",
                args.device,
                "-q",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
    deadline = time.monotonic() + 300
    while True:
        if server.poll() is not None:
            raise SystemExit(f"server exited ({server.returncode}); log: {log_path.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server, log_path
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.terminate()
            raise SystemExit("server did not start within 300 s")
        time.sleep(0.3)


def _direct_baseline(args: argparse.Namespace, examples: list[dict]) -> float:
    """Median seconds of one in-process ``Predictor.answer`` on the same questions."""
    import ecgqa
    from ecgqa.data.prepared import PreparedData

    data = PreparedData(args.data)
    predictor = ecgqa.load(args.checkpoint, device=args.device)

    def one(i: int) -> float:
        ex = examples[i % len(examples)]
        ecgs = [np.asarray(data.signals[data.row_of(e)], dtype=np.float32) for e in ex["ecg_ids"]]
        t = time.perf_counter()
        predictor.answer(ecgs, ex["question"])
        return time.perf_counter() - t

    for i in range(3):
        one(i)
    return float(np.median([one(i) for i in range(args.direct)]))


def _load_round(
    url: str, args: argparse.Namespace, examples: list[dict], ids: list[int], upload: bytes
) -> tuple[list[float], list[str], float]:
    import httpx

    clients = [httpx.Client(base_url=url, timeout=120) for _ in range(args.concurrency)]
    errors: list[str] = []

    def fire(i: int) -> float:
        c = clients[i % args.concurrency]
        kind = i % 4 if args.mixed else 0
        t = time.perf_counter()
        try:
            if kind == 1:
                r = c.get(f"/api/ecgs/{ids[i % len(ids)]}/plot.png")
            elif kind == 2:
                r = c.post(
                    "/api/answer/upload",
                    files={"files": ("ecg.npy", upload)},
                    data={"question": examples[i % len(examples)]["question"], "rate": "500"},
                )
            else:
                ex = examples[i % len(examples)]
                r = c.post("/api/answer", json={"ecg_ids": ex["ecg_ids"], "question": ex["question"]})
            if r.status_code != 200 and not (kind == 2 and r.status_code == 422):  # comparison questions need 2
                errors.append(f"{r.status_code}: {r.text[:160]}")
        except httpx.HTTPError as e:
            errors.append(repr(e))
        return time.perf_counter() - t

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        latencies = list(pool.map(fire, range(args.requests)))
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    return [x * 1000 for x in latencies], errors, wall


def _slow_clients(port: int, n: int, seconds: float, proc) -> None:
    import httpx

    def connect() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(0.05)
        return s

    idle = [connect() for _ in range(n)]
    trickle = [connect() for _ in range(n)]
    for s in trickle:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    bodies = [connect() for _ in range(n)]
    chunk = b" " * (512 * 1024)
    for s in bodies:
        s.sendall(
            b"POST /api/answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5242000\r\n\r\n"
        )
        for _ in range(9):  # 4.5 MB of the declared 5 MB
            try:
                s.sendall(chunk)
            except OSError:
                break

    answers: dict[str, int] = {}

    def is_open(s: socket.socket) -> bool:
        """Still waiting on the client: no response and not closed (a 408/503 answer counts as ended)."""
        try:
            data = s.recv(4096)
        except TimeoutError:
            return True
        except OSError:
            return False
        status = data[9:12].decode("latin-1") if data.startswith(b"HTTP/1.1 ") else "closed"
        answers[status] = answers.get(status, 0) + 1
        return False

    peak, health = 0.0, []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        for s in trickle:
            try:
                s.sendall(f"X-Slow: {time.monotonic():.0f}\r\n".encode())
            except OSError:
                pass
        peak = max(peak, proc.memory_info().rss / 2**20)
        t = time.perf_counter()
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
            health.append((time.perf_counter() - t) * 1000)
        except httpx.HTTPError:
            health.append(float("inf"))
        time.sleep(1.0)
    still = {
        name: sum(is_open(s) for s in group)
        for name, group in (("idle", idle), ("trickling headers", trickle), ("slow bodies", bodies))
    }
    for s in idle + trickle + bodies:
        s.close()
    print(f"  slow clients     {n} idle, {n} trickling headers, {n} slow bodies (4.5 of 5 MB), held {seconds:g} s")
    for name, count in still.items():
        print(f"    still open after {seconds:g} s: {name:18s} {count}/{n}")
    print(f"    how they ended: {dict(sorted(answers.items()))} (status of the server's reply, or closed)")
    print(f"    server RSS peak {peak:.0f} MB; /healthz p50 {_pct(health, 50):.0f} ms, max {max(health):.0f} ms")
    time.sleep(1.0)
    print(f"    after closing:  {_usage(proc)}")


def _big_header(url: str, lines: int) -> None:
    import httpx

    head = [f"r {lines} 500 5000"] + [f"r.dat 16 1000/mV 16 0 0 0 0 X{i}" for i in range(lines)]
    header = ("\n".join(head) + "\n").encode()
    t = time.perf_counter()
    r = httpx.post(
        f"{url}/api/answer/upload",
        timeout=600,
        data={"question": "Any noise?"},
        files=[("files", ("r.hea", header)), ("files", ("r.dat", b"\0" * 120_000))],
    )
    print(
        f"  big header       {lines} signal lines ({len(header) / 1024:.0f} kB): {r.status_code} in "
        f"{(time.perf_counter() - t) * 1000:.0f} ms: {r.json().get('detail', '')[:90]}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="QA checkpoint (default: the quickstart model)")
    ap.add_argument("--data", type=Path, default=None, help="prepared QA dir (default: the quickstart data)")
    ap.add_argument("--requests", type=int, default=200, help="requests per round (0: no load rounds)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--mixed", action="store_true", help="a quarter plots and a quarter uploads")
    ap.add_argument("--direct", type=int, default=30, help="direct answer() calls for the baseline (0: none)")
    ap.add_argument("--slow", type=int, default=0, help="slow clients of each kind (0: none)")
    ap.add_argument("--slow-seconds", type=float, default=40.0)
    ap.add_argument("--big-header", type=int, default=0, help="signal lines in one uploaded header (0: none)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)

    import httpx
    import psutil

    if args.checkpoint is None:
        from ecgqa.quickstart import ensure_demo

        demo = ensure_demo(Path("runs/quickstart"), quiet=args.quiet)
        args.checkpoint, args.data = demo.checkpoint, demo.data
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server, log_path = _start(args, port)
    print(f"server log: {log_path}")
    proc = psutil.Process(server.pid)
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            examples = [e for e in c.get("/api/examples").json() if len(e["ecg_ids"]) == 1] or c.get(
                "/api/examples"
            ).json()
            ids = [e["id"] for e in c.get("/api/ecgs", params={"limit": 500}).json()["items"]]
            for ex in examples[:4]:
                c.post("/api/answer", json={"ecg_ids": ex["ecg_ids"], "question": ex["question"]}).raise_for_status()
        buf = io.BytesIO()
        np.save(buf, (np.random.default_rng(0).standard_normal((12, 5000)) * 0.1).astype(np.float32))
        upload = buf.getvalue()
        print(f"ecgqa serve benchmark: checkpoint {args.checkpoint}, device {args.device}, server pid {server.pid}")
        print(f"  after start      {_usage(proc)}")
        if args.direct:
            d50 = _direct_baseline(args, examples) * 1000
            print(f"  direct answer()  p50 {d50:8.1f} ms   ({1000 / d50:.1f} answers/s one at a time)")
        for r in range(args.rounds if args.requests else 0):
            ms, errors, wall = _load_round(url, args, examples, ids, upload)
            kind = "mixed (1/2 answers, 1/4 plots, 1/4 uploads)" if args.mixed else "answers"
            print(
                f"  round {r + 1}: {args.requests} {kind} at concurrency {args.concurrency}: "
                f"p50 {_pct(ms, 50):.0f} ms  p95 {_pct(ms, 95):.0f} ms  p99 {_pct(ms, 99):.0f} ms  "
                f"{args.requests / wall:.1f} req/s  errors {len(errors)}"
            )
            print(f"           {_usage(proc)}")
            for e in errors[:3]:
                print("    error:", e)
        if args.slow:
            _slow_clients(port, args.slow, args.slow_seconds, proc)
        if args.big_header:
            _big_header(url, args.big_header)
            print(f"    then           {_usage(proc)}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
