"""LLM harness benchmark: request concurrency and grounding reuse, measured in one run.

1. N prompts against the local fake OpenAI-compatible server (tests/fake_llm_server.py) with a fixed
   per-request latency L, through the real ``openai`` client: wall time at each concurrency vs the
   ideal bound N·L/concurrency, and the speed-up over concurrency 1.
2. Grounding: classifier rows (forward passes of one (ECG, lead subset)) for the bundled sample's
   questions with the per-(ECG, subset) cache, vs one per (question, lead block) without caching.
3. Inputs (``--input``): for the first ``--questions`` questions of the bundled sample, per input kind,
   images rendered per second and ECGs measured per second (cold caches), bytes of the request as
   sent and estimated prompt tokens per prompt (text / 4 + OpenAI's image tile rule), and a warm
   re-run over the same caches, which must render and measure nothing.

4. ``--real``: ``ecgqa llm-eval`` (the CLI, in a subprocess) against a real llama.cpp ``llama-server`` with
   SmolLM2-135M-Instruct (install: ``bash scripts/build_llama_server.sh``) on the bundled sample, for
   ``--input none``, ``classifier`` (the paper's prompt) and ``features``: EM, replies matching no option,
   questions/s next to the server's own prompt and generation tokens/s (its /metrics), then what
   ``--concurrency`` 1/4/8 does against a 1-slot server and a 2-slot one. Only this part runs with ``--real``.

    python benchmarks/llm_eval.py [-n 200] [--latency 0.05] [--concurrency 1 8 32] [--grounding CKPT]
                                  [--questions 60] [--dpi 100] [--detail auto] [--skip-requests]
    python benchmarks/llm_eval.py --real [--data PREPARED_QA --grounding CKPT] [--real-concurrency 1 4 8]
                                  [--slots 1 2] [--max-tokens 48] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecgqa import sample
from llm_eval.client import ChatClient, ask_all
from llm_eval.grounding import Grounder, plan_readings
from llm_eval.sampling import questions_from_release
from llm_eval.store import ResponseStore


class ServerProcess:
    """The fake server in its own process, so it does not share the client's interpreter (GIL)."""

    def __init__(self, latency: float):
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "fake_llm_server.py"), "--latency", str(latency)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError("the fake LLM server did not start")

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def bench_concurrency(n: int, latency: float, levels: list[int]) -> None:
    prompts = {f"h{i}": [{"role": "user", "content": f"Question {i}?\n\nOptions: no; yes"}] for i in range(n)}
    print(f"## requests: N={n} prompts, latency L={latency * 1000:.0f} ms per request (local fake server)")
    print(
        f"{'concurrency':>11} {'wall s':>8} {'bound N*L/c':>12} {'wall/bound':>11} {'speed-up vs c=1':>16}"
        f" {'overhead ms/req':>16}"
    )
    base = None
    with ServerProcess(latency) as server, tempfile.TemporaryDirectory() as tmp:
        for c in levels:
            store = ResponseStore(Path(tmp) / f"c{c}.sqlite")
            client = ChatClient("bench", store, base_url=server.url, api_key="bench", concurrency=c, timeout=30)
            t0 = time.perf_counter()
            out = ask_all(client, prompts, progress=False)
            wall = time.perf_counter() - t0
            store.close()
            assert all(o.ok for o in out.values()) and len(out) == n
            base = wall if c == 1 or base is None else base
            bound = n * latency / c
            overhead = (wall - bound) / n * c * 1000  # per request, beyond L, as seen by one worker
            print(f"{c:>11} {wall:>8.2f} {bound:>12.2f} {wall / bound:>11.2f} {base / wall:>16.2f} {overhead:>16.1f}")


class Counting:
    """Counts classifier rows; a stand-in unless a real upperbound checkpoint is given."""

    def __init__(self, classes: list[str], predictor=None):
        self.classes = classes
        self.predictor = predictor
        self.rows = 0

    def classify(self, ecgs, lead_masks=None, batch_size=64):
        self.rows += len(ecgs)
        if self.predictor is not None:
            return self.predictor.classify(ecgs, lead_masks, batch_size=batch_size)
        return np.full((len(ecgs), len(self.classes)), 0.25, np.float32)


def bench_grounding(grounding: Path | None) -> None:
    from ecgqa.data.records import read_record
    from ecgqa.data.upperbound_labels import bundled_grounding_classes, read_grounding_classes

    paths = sample.paths()
    qs = questions_from_release(paths.ptbxl_release, "train") + questions_from_release(paths.ptbxl_release, "valid")
    predictor = None
    if grounding is not None:
        import ecgqa

        predictor = ecgqa.load(grounding)
    classes = predictor.classes if predictor else read_grounding_classes(bundled_grounding_classes("ptbxl"))
    signals: dict[int, np.ndarray] = {}

    def signal_of(reading):
        if reading.ecg_id not in signals:
            rel = f"records500/{reading.ecg_id // 1000 * 1000:05d}/{reading.ecg_id:05d}_hr"
            signals[reading.ecg_id] = read_record(paths.ptbxl_records / rel).signal
        return signals[reading.ecg_id]

    uncached = sum(len(plan_readings(q)) for q in qs)
    clf = Counting(classes, predictor)
    g = Grounder(clf, signal_of, progress=False)
    t0 = time.perf_counter()
    g.ground(qs)
    cached_s = time.perf_counter() - t0
    print(
        f"\n## grounding: {len(qs)} questions of the bundled sample ({'real checkpoint' if predictor else 'stand-in'})"
    )
    print(f"classifier rows with the (ECG, subset) cache: {clf.rows}")
    print(f"one per (question, lead block), no cache:     {uncached}")
    print(f"ratio uncached / cached: {uncached / clf.rows:.2f}  (grounding wall {cached_s:.2f} s)")
    again = Grounder(clf, signal_of, progress=False)
    again.cache = g.cache
    before = clf.rows
    again.ground(qs)
    print(f"a second pass over the same questions (cache warm): {clf.rows - before} rows")


def bench_inputs(n_questions: int, dpi: int, detail: str) -> None:
    import json

    from ecgqa.data.records import read_record
    from ecgqa.data.upperbound_labels import bundled_grounding_classes, read_grounding_classes
    from llm_eval.inputs import FeatureCache, ImageCache
    from llm_eval.run import Sources, build_prompts, estimate

    paths = sample.paths()
    qs = questions_from_release(paths.ptbxl_release, "train") + questions_from_release(paths.ptbxl_release, "valid")
    qs = qs[:: max(1, len(qs) // n_questions)][:n_questions]  # spread over both splits (single and comparison)
    classes = read_grounding_classes(bundled_grounding_classes("ptbxl"))
    signals: dict[int, np.ndarray] = {}

    def by_id(ecg_id: int) -> np.ndarray:
        if ecg_id not in signals:
            rel = f"records500/{ecg_id // 1000 * 1000:05d}/{ecg_id:05d}_hr"
            signals[ecg_id] = read_record(paths.ptbxl_records / rel).signal
        return signals[ecg_id]

    def reading_signal(reading):
        return by_id(reading.ecg_id)

    distinct = len({e for q in qs for e in q.ecg_ids})
    print(
        f"\n## inputs: {len(qs)} questions of the bundled sample, {distinct} distinct ECGs, images at {dpi} dpi "
        f"(3x4), detail {detail}; classifier = stand-in"
    )
    print(
        f"{'input':>28} {'cold s':>7} {'rendered':>8} {'img/s':>6} {'measured':>8} {'ecg/s':>6} "
        f"{'bytes/prompt':>12} {'~tokens/prompt':>14} {'warm s':>7} {'warm rendered+measured':>22}"
    )
    for inputs in [
        ("none",),
        ("classifier",),
        ("features",),
        ("image",),
        ("image", "classifier"),
        ("image", "features", "classifier"),
    ]:
        with tempfile.TemporaryDirectory() as tmp:

            def sources(inputs: tuple[str, ...] = inputs, tmp: str = tmp) -> Sources:
                return Sources(
                    inputs,
                    grounder=Grounder(Counting(classes), reading_signal, Path(tmp) / "g.jsonl", progress=False)
                    if "classifier" in inputs
                    else None,
                    images=ImageCache(tmp, by_id, 500, "bench", dpi=dpi) if "image" in inputs else None,
                    features=FeatureCache(tmp, by_id, 500, "bench") if "features" in inputs else None,
                    image_detail=detail,
                )

            for e in {e for q in qs for e in q.ecg_ids}:
                by_id(e)  # read the records first: the timing is of rendering / measuring only
            cold = sources()
            t0 = time.perf_counter()
            items = build_prompts(qs, cold)
            cold_s = time.perf_counter() - t0
            sent = [len(json.dumps(cold.expand(it.messages)).encode()) for it in items]
            tokens = [estimate(it, cold)["estimated_tokens"] for it in items]
            warm = sources()
            t0 = time.perf_counter()
            build_prompts(qs, warm)
            warm_s = time.perf_counter() - t0
            rendered = cold.images.n_rendered if cold.images else 0
            measured = cold.features.n_measured if cold.features else 0
            img_rate = rendered / cold.images.render_s if rendered else 0.0
            ecg_rate = measured / cold.features.measure_s if measured else 0.0
            warm_work = (warm.images.n_rendered if warm.images else 0) + (
                warm.features.n_measured if warm.features else 0
            )
            print(
                f"{'+'.join(inputs):>28} {cold_s:>7.2f} {rendered:>8} {img_rate:>6.1f} {measured:>8} {ecg_rate:>6.1f} "
                f"{np.mean(sent):>12.0f} {np.mean(tokens):>14.0f} {warm_s:>7.2f} {warm_work:>22}"
            )


def _real_fixtures(data: Path | None, grounding: Path | None, tmp: Path) -> tuple[Path, Path]:
    """A prepared QA directory and an upperbound checkpoint: the given ones, or built from the bundled sample."""
    if data is not None and grounding is not None:
        return data, grounding
    from ecgqa.data.prepare import prepare
    from ecgqa.training.train import TrainConfig, train
    from mapping.mapper import map_release

    paths = sample.paths()
    mapped = tmp / "mapped"
    map_release("ptbxl", paths.ptbxl_release, paths.ptbxl_records, mapped, progress=False)
    if data is None:
        data = tmp / "qa"
        prepare(mapped, data, variant="template", task="qa", rate=500, progress=False)
    if grounding is None:  # a tiny se-wrn, briefly trained: real scores, not a good classifier
        prepare(mapped, tmp / "ub", variant="template", task="upperbound", rate=500, progress=False)
        grounding = train(
            TrainConfig(
                data=tmp / "ub",
                model="se-wrn-test",
                out=tmp / "se-wrn",
                max_steps=8,
                batch_size=16,
                lr=3e-3,
                warmup=0,
                quiet=True,
            )
        )
    return data, grounding


def _real_run(
    server, data: Path, grounding: Path, inputs: str, split: str, out: Path, concurrency: int, max_tokens: int
) -> dict:
    """One `ecgqa llm-eval` run (subprocess, the real CLI); its report, run log and the server's counters."""
    import json
    import os
    import subprocess

    cmd = [
        sys.executable,
        "-m",
        "ecgqa",
        "llm-eval",
        "--data",
        str(data),
        "--input",
        inputs,
        "--model",
        "smollm2",
        "--base-url",
        server.url,
        "--split",
        split,
        "--out",
        str(out),
        "--concurrency",
        str(concurrency),
        "--max-tokens",
        str(max_tokens),
        "--timeout",
        "600",
        "-q",
    ]
    if inputs == "classifier":
        cmd += ["--grounding", str(grounding)]
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    before = server.metrics()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    after = server.metrics()
    delta = {k: after[k] - before.get(k, 0.0) for k in after if k.endswith("_total")}
    report = json.loads((out / "report.json").read_text())
    run_log = json.loads((out / "run_log.json").read_text())
    return {"report": report, "log": run_log, "server": delta}


def bench_real(
    data: Path | None,
    grounding: Path | None,
    levels: list[int],
    slot_counts: list[int],
    max_tokens: int,
    threads: int = 1,
) -> None:
    import os
    import platform

    from tests.real_llm_server import LlamaServer, installed

    found = installed()
    if isinstance(found, str):
        print(f"## real LLM: skipped: {found}")
        return
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        data, grounding = _real_fixtures(data, grounding, tmp)
        print(
            f"## real LLM: llama-server + SmolLM2-135M-Instruct Q4_1, {threads} thread(s); {os.cpu_count()} cores "
            f"({cpu}); load average at start {load0[0]:.1f} (a shared, loaded machine)"
        )
        print(
            f"data: {data}; grounding: {grounding}; each split's seed-42 10 % draw; replies capped at "
            f"{max_tokens} tokens; temperature 0"
        )
        print(
            f"{'input':>10} {'split':>5} {'prompt':>8} {'n':>3} {'EM %':>6} {'unmatched':>9} {'wall s':>7} "
            f"{'q/s':>5} {'requests':>8} {'prompt tok':>10} {'(cached)':>8} {'prompt tok/s':>12} {'gen tok':>7} "
            f"{'gen tok/s':>9}"
        )
        with LlamaServer(*found, slots=1, threads=threads) as server:
            for inputs in ("none", "classifier", "features"):
                for split in ("train", "valid"):
                    r = _real_run(server, data, grounding, inputs, split, tmp / f"{inputs}-{split}", 1, max_tokens)
                    rep, srv, wall = r["report"], r["server"], r["log"]["wall_s"]
                    print(
                        f"{inputs:>10} {split:>5} {rep['prompt_style']:>8} {rep['n']:>3} {100 * rep['em']:>6.1f} "
                        f"{rep['n_no_match']:>9} {wall:>7.1f} {rep['n'] / wall:>5.2f} {r['log']['requests_sent']:>8} "
                        f"{srv['prompt_tokens_total']:>10.0f} {srv['prompt_tokens_cached_total']:>8.0f} "
                        f"{srv['prompt_tokens_total'] / max(srv['prompt_seconds_total'], 1e-9):>12.1f} "
                        f"{srv['tokens_predicted_total']:>7.0f} "
                        f"{srv['tokens_predicted_total'] / max(srv['tokens_predicted_seconds_total'], 1e-9):>9.1f}"
                    )
        print(f"\n## --concurrency against a real server (--input none, train draw; {max_tokens}-token cap)")
        print(
            f"{'slots':>5} {'concurrency':>11} {'n':>3} {'wall s':>7} {'q/s':>5} {'speed-up vs c=1':>15} "
            f"{'requests':>8} {'gen tok/s per slot':>18} {'EM %':>6}"
        )
        for slots in slot_counts:
            with LlamaServer(*found, slots=slots, threads=threads) as server:
                base = None
                for c in levels:
                    r = _real_run(server, data, grounding, "none", "train", tmp / f"s{slots}-c{c}", c, max_tokens)
                    rep, srv, wall = r["report"], r["server"], r["log"]["wall_s"]
                    base = base or wall
                    gen = srv["tokens_predicted_total"] / max(srv["tokens_predicted_seconds_total"], 1e-9)
                    print(
                        f"{slots:>5} {c:>11} {rep['n']:>3} {wall:>7.1f} {rep['n'] / wall:>5.2f} {base / wall:>15.2f} "
                        f"{r['log']['requests_sent']:>8} {gen:>18.1f} {100 * rep['em']:>6.1f}"
                    )
    load1 = os.getloadavg()
    print(
        f"load average at end {load1[0]:.1f}. The server's tokens/s are its own busy-time rates (a slot's prompt "
        "and generation time), so they stay near the CPU's rate while questions/s also pays the client and queueing."
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=200)
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--grounding", type=Path, help="an upperbound checkpoint (default: a counting stand-in)")
    p.add_argument("--questions", type=int, default=60, help="questions for the --input measurements")
    p.add_argument("--dpi", type=int, default=100)
    p.add_argument("--detail", default="auto", choices=("auto", "low", "high"))
    p.add_argument("--skip-requests", action="store_true", help="only the grounding and input measurements")
    p.add_argument(
        "--real",
        action="store_true",
        help="only the real-LLM measurements (llama-server; bash scripts/build_llama_server.sh)",
    )
    p.add_argument("--data", type=Path, help="--real: a prepared QA directory (default: the bundled sample, prepared)")
    p.add_argument("--real-concurrency", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--slots", type=int, nargs="+", default=[1, 2], help="--real: server slots for the concurrency runs")
    p.add_argument("--max-tokens", type=int, default=48, help="--real: reply cap sent with each request")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="--real: llama-server threads (1: two spin-wait for each other on a loaded 2-core machine)",
    )
    args = p.parse_args()
    if args.real:
        bench_real(
            args.data, args.grounding, sorted({1, *args.real_concurrency}), args.slots, args.max_tokens, args.threads
        )
        return
    if not args.skip_requests:
        bench_concurrency(args.n, args.latency, sorted({1, *args.concurrency}))
    bench_grounding(args.grounding)
    bench_inputs(args.questions, args.dpi, args.detail)


if __name__ == "__main__":
    main()
