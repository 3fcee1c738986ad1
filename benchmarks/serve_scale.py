"""The demo at full size: ``ecgqa serve`` start-up, memory and per-endpoint latency vs the bundled sample.

    python benchmarks/serve_scale.py --data FULL_PREPARED_QA [--baseline-data SMALL_PREPARED_QA]
                                     [--checkpoint CKPT] [--requests 60] [--concurrency 4] [--seconds 30]

For each prepared directory (the baseline first: the bundled sample, prepared on the fly unless
``--baseline-data``), the server is started as a subprocess on a free 127.0.0.1 port and this process
(a second one) measures:

- start-up: seconds from launch until ``/healthz`` answers, and the server's peak RSS meanwhile
  (polled every 50 ms), then its RSS when ready and after the load;
- the server's RSS split into anonymous memory and mapped files (the Arrow tables and the signal
  store are memory-mapped: their pages are page cache, given back under memory pressure);
- per endpoint, ``--requests`` requests at ``--concurrency`` (bounded by ``--seconds`` per endpoint):
  p50 / p99 ms and non-2xx count. ECG ids are drawn across the whole store; ``answer (similar)`` sends
  an example question reworded, so it is matched by TF-IDF against every distinct question of the data.

The model is a QA checkpoint trained for two steps on the baseline data (``fusion-test`` unless
``--model``), so the figures show what grows with the *data*; ``--checkpoint`` serves a real one.
The ratio column is full / baseline, measured in the same run. Last, the start-up indexes (question
index, ECG counts, examples) of the full directory are built both the way ``build_service`` did
before issue 18 (every question row a Python dict; kept here as the baseline) and the way it does
now (Arrow/numpy), each in a fresh process. Every phase is bounded in time;
each server is stopped by its own PID.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}"


def make_checkpoint(data: Path, model: str, out: Path) -> Path:
    from ecgqa.training.train import TrainConfig, train

    return train(
        TrainConfig(
            data=data,
            model=model,
            out=out,
            max_steps=2,
            batch_size=4,
            eval_split=None,
            warmup=0,
            logging_steps=1,
            quiet=True,
        )
    )


class Server:
    """``ecgqa serve`` in a subprocess; start-up time and peak RSS measured while it loads."""

    def __init__(self, checkpoint: Path, data: Path, timeout: float = 600):
        import httpx
        import psutil

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkdtemp(prefix="ecgqa-serve-scale-")) / "server.log"
        t0 = time.perf_counter()
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ecgqa",
                    "serve",
                    "--checkpoint",
                    str(checkpoint),
                    "--data",
                    str(data),
                    "--port",
                    str(self.port),
                    "--device",
                    "cpu",
                    "-q",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
            )
        self.ps = psutil.Process(self.proc.pid)
        self.peak = 0
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            self.peak = max(self.peak, self.ps.memory_info().rss)
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - t0 > timeout:
                self.stop()
                raise SystemExit(f"server did not start within {timeout} s")
            time.sleep(0.05)
        self.startup = time.perf_counter() - t0
        self.ready_rss = self.ps.memory_info().rss
        self.ready_split = self.rss_split()

    def rss_split(self) -> dict[str, int]:
        """RssAnon / RssFile of the server, in bytes."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            return {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in f if ln.startswith(("RssAnon", "RssFile"))}

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def endpoint_calls(client, n_ecgs: int, examples: list[dict], rng: random.Random) -> dict:
    """endpoint name → a function(i) making one request (ECG ids drawn across the whole store)."""
    ids = [e["id"] for e in client.get("/api/ecgs", params={"limit": 500}).json()["items"]]
    page = max(1, n_ecgs // 50)
    for off in rng.sample(range(page), min(20, page)):  # ids from everywhere in the store, not just the first
        ids += [e["id"] for e in client.get("/api/ecgs", params={"offset": off * 50, "limit": 50}).json()["items"]]
    rng.shuffle(ids)
    single = [e for e in examples if len(e["ecg_ids"]) == 1]

    def answer(i: int):
        ex = examples[i % len(examples)]
        return client.post("/api/answer", json={"ecg_ids": ex["ecg_ids"], "question": ex["question"]})

    def answer_any(i: int):
        ex = single[i % len(single)]
        return client.post("/api/answer", json={"ecg_ids": [ids[i % len(ids)]], "question": ex["question"]})

    def similar(i: int):
        ex = single[i % len(single)]
        return client.post(
            "/api/answer",
            json={"ecg_ids": [ids[i % len(ids)]], "question": "please tell me: " + ex["question"].lower()},
        )

    return {
        "GET /healthz": lambda i: client.get("/healthz"),
        "GET /api/info": lambda i: client.get("/api/info"),
        "GET /api/ecgs (page)": lambda i: client.get(
            "/api/ecgs", params={"offset": rng.randrange(n_ecgs), "limit": 50}
        ),
        "GET /api/ecgs/{id}": lambda i: client.get(f"/api/ecgs/{ids[i % len(ids)]}"),
        "GET /api/ecgs/{id}/plot.png": lambda i: client.get(f"/api/ecgs/{ids[i % len(ids)]}/plot.png"),
        "GET /api/examples": lambda i: client.get("/api/examples"),
        "POST /api/answer (example)": answer,
        "POST /api/answer (any ECG)": answer_any,
        "POST /api/answer (similar)": similar,
    }


def measure(server: Server, requests: int, concurrency: int, seconds: float) -> dict:
    import httpx

    with httpx.Client(base_url=server.url, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        info = client.get("/api/info").json()
        examples = client.get("/api/examples").json()
        calls = endpoint_calls(client, info["n_ecgs"], examples, random.Random(0))
        out = {}
        for name, call in calls.items():
            lat, errors = [], 0
            deadline = time.perf_counter() + seconds

            def fire(i: int, call=call, deadline=deadline):
                if time.perf_counter() > deadline:
                    return None
                t = time.perf_counter()
                r = call(i)
                return (time.perf_counter() - t) * 1000, r.status_code

            with ThreadPoolExecutor(concurrency) as pool:
                for res in pool.map(fire, range(requests)):
                    if res is not None:
                        lat.append(res[0])
                        errors += not 200 <= res[1] < 300
            out[name] = {
                "p50": float(np.percentile(lat, 50)),
                "p99": float(np.percentile(lat, 99)),
                "n": len(lat),
                "errors": errors,
            }
    return {"info": info, "endpoints": out}


def _row_by_row(data, store_ids: set[int]) -> tuple:
    """The start-up indexes as build_service computed them before issue 18: every question row a Python dict."""
    from collections import defaultdict

    from ecgqa.serve.questions import QuestionIndex
    from ecgqa.serve.service import pick_examples

    cols = ("question", "question_type", "attribute_type", "template_id", "valid_classes", "ecg_id", "answer")
    by_split = {s: data.split(s).select_columns(list(cols)).to_dict() for s in data.splits}
    rows = [
        dict(zip(cols, v, strict=False)) for t in by_split.values() for v in zip(*(t[c] for c in cols), strict=False)
    ]
    counts: dict[int, int] = defaultdict(int)
    splits: dict[int, set[str]] = defaultdict(set)
    for split, table in by_split.items():
        for ids in table["ecg_id"]:
            for e in ids:
                counts[int(e)] += 1
                splits[int(e)].add(split)
    return (
        QuestionIndex.from_rows(list(data.classes), rows),
        dict(counts),
        {e: sorted(s) for e, s in splits.items()},
        pick_examples(by_split, list(data.classes), store_ids),
    )


def _column_wise(data, store_ids: set[int]) -> tuple:
    """The start-up indexes as build_service computes them now (Arrow/numpy): its own function."""
    from ecgqa.serve.service import startup_indexes

    return startup_indexes(data, store_ids)


def index_only(how: str, data_dir: Path) -> None:
    """One way of building the start-up indexes, alone in this process: seconds, anon and peak RSS growth."""
    import sklearn.feature_extraction.text  # noqa: F401 - imported before the clock starts, as both ways need it

    from ecgqa.data.prepared import PreparedData

    def status() -> dict[str, int]:
        with open("/proc/self/status") as f:
            return {ln.split(":")[0]: int(ln.split()[1]) // 1024 for ln in f if ln.startswith(("RssAnon", "VmHWM"))}

    data = PreparedData(data_dir)
    for s in data.splits:
        data.split(s)
    ids = set(np.asarray(data.ecg_ids).tolist())
    s0, t0 = status(), time.perf_counter()
    out = (_row_by_row if how == "row-by-row" else _column_wise)(data, ids)
    dt, s1 = time.perf_counter() - t0, status()
    print(f"{dt:.3f} {s1['RssAnon'] - s0['RssAnon']} {s1['VmHWM'] - s0['VmHWM']} {len(out[0].entries)} {len(out[3])}")


def index_ab(data_dir: Path) -> None:
    print(
        f"\n## start-up indexes of {data_dir}: row by row (before issue 18) vs column-wise (now), each in a fresh "
        "process (imports done before the clock starts)"
    )
    print(f"{'':12} {'seconds':>8} {'anon RSS +MB':>12} {'peak RSS +MB':>12} {'distinct q':>10} {'examples':>8}")
    res = {}
    for how in ("row-by-row", "column-wise"):
        out = subprocess.run(
            [sys.executable, __file__, "--index-only", how, "--data", str(data_dir)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        res[how] = [float(x) for x in out]
        print(
            f"{how:12} {res[how][0]:8.2f} {res[how][1]:12.0f} {res[how][2]:12.0f} {res[how][3]:10.0f} "
            f"{res[how][4]:8.0f}  {_load()}"
        )
    a, b = res["row-by-row"], res["column-wise"]
    print(f"ratio        {a[0] / b[0]:8.1f}x faster, peak RSS growth {a[2] / max(b[2], 1):.1f}x smaller")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index-only", choices=("row-by-row", "column-wise"), help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, required=True, help="the full-size prepared QA directory")
    ap.add_argument("--baseline-data", type=Path, help="default: the bundled sample, prepared on the fly")
    ap.add_argument("--checkpoint", type=Path, help="QA checkpoint matching both (default: trained 2 steps here)")
    ap.add_argument("--model", default="fusion-test")
    ap.add_argument("--requests", type=int, default=60, help="per endpoint")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=30.0, help="per endpoint, at most")
    args = ap.parse_args()
    if args.index_only:
        return index_only(args.index_only, args.data)

    tmp = Path(tempfile.mkdtemp(prefix="ecgqa-serve-scale-"))
    if args.baseline_data is None:
        args.baseline_data = tmp / "sample"
        subprocess.run(
            [sys.executable, "-m", "ecgqa", "prepare", "--out", str(args.baseline_data), "-q"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    if args.checkpoint is None:
        args.checkpoint = make_checkpoint(args.baseline_data, args.model, tmp / "ckpt")
    print(
        f"# ecgqa serve at full size; model {args.checkpoint}; {os.cpu_count()} cores, {_load()} "
        "(a shared machine: six other engineers' jobs run on these cores)"
    )
    results = {}
    for label, data in (("baseline", args.baseline_data), ("full", args.data)):
        server = Server(args.checkpoint, data)
        try:
            m = measure(server, args.requests, args.concurrency, args.seconds)
            m.update(
                startup=server.startup,
                peak=server.peak,
                ready=server.ready_rss,
                after=server.rss(),
                anon=server.ready_split["RssAnon"],
                file=server.ready_split["RssFile"],
            )
        finally:
            server.stop()
        results[label] = m
        print(
            f"{label}: {data}: {m['info']['n_ecgs']} ECGs; start-up {m['startup']:.1f} s; RSS peak during start-up "
            f"{m['peak'] / 2**20:.0f} MB, ready {m['ready'] / 2**20:.0f} MB, after the load "
            f"{m['after'] / 2**20:.0f} MB; {_load()}",
            flush=True,
        )
    b, f = results["baseline"], results["full"]
    print(f"\n{'':28} {'baseline':>9} {'full':>9} {'ratio':>6}")
    for k, name in (
        ("startup", "start-up s"),
        ("peak", "peak RSS MB"),
        ("ready", "ready RSS MB"),
        ("anon", "  of it anonymous MB"),
        ("file", "  of it mapped files MB"),
        ("after", "RSS after load MB"),
    ):
        scale = 1 if k == "startup" else 2**20
        print(f"{name:28} {b[k] / scale:9.1f} {f[k] / scale:9.1f} {f[k] / b[k]:6.2f}")
    print(f"\nper endpoint: {args.requests} requests (or {args.seconds:g} s) at concurrency {args.concurrency}, ms")
    print(
        f"{'endpoint':28} {'p50 base':>9} {'p99 base':>9} {'p50 full':>9} {'p99 full':>9} {'p50 ratio':>9} "
        f"{'n':>4} {'non-2xx':>7}"
    )
    for name, e in f["endpoints"].items():
        be = b["endpoints"][name]
        print(
            f"{name:28} {be['p50']:9.1f} {be['p99']:9.1f} {e['p50']:9.1f} {e['p99']:9.1f} "
            f"{e['p50'] / be['p50']:9.2f} {e['n']:>4} {e['errors'] + be['errors']:>7}"
        )
    index_ab(args.data)


if __name__ == "__main__":
    main()
