"""LLM evaluation at the paper's scale: the 8,154 published-sample questions through the whole harness.

Runs ``llm_eval.run.evaluate`` (prompts → the real ``openai`` client → the durable response store →
scores → transcripts → report) against the local fake OpenAI-compatible server
(``tests/fake_llm_server.py``, its own process on 127.0.0.1) that sleeps ``L`` seconds per request,
once per concurrency ``c``. For each run it prints the wall time of the request phase against the
ideal ``N·L/c``, the client's CPU seconds per request in that phase (``resource.getrusage`` of this
process: the server is another process, its CPU is read with psutil), the server's CPU, the time of
everything around the requests (prompts, scoring, transcripts), and the machine load.

    python benchmarks/llm_scale.py                                      # questions from the bundled sample
    python benchmarks/llm_scale.py --data PREPARED_PTBXL_QA --split test  # the published 8,154 ids when present
    python benchmarks/llm_scale.py -n 2000 --latency 0.5 --concurrency 32 128 --latency-for 8=0.1

At the top concurrency the run is also made as llm-eval ran before issue 18 (one store commit per
reply, transcripts written one by one; ``--no-before`` skips it), right before the current code:
the ratio of the two is the effect of the fixes, measured in the same run.

Questions: with ``--data`` holding every published-sample id (``ecgqa.evaluation.paper_sample``), exactly those;
else the first ``-n`` questions of the split; when the data has fewer than ``-n`` (the bundled sample
has 451), its questions are repeated with ``[copy k]`` appended to the text so that every prompt is
distinct (the server sees ``-n`` different prompts, as it would in a real run). The input is ``none``
(question and options only): the classifier/image/feature inputs change what is *built* before the
requests, not how requests are sent.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAPER_N = 8154


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f} / {five:.2f} (1/5 min) on {os.cpu_count()} cores"


class ServerProcess:
    """The fake server in its own process (its CPU is not the client's), stopped by its own PID."""

    def __init__(self, latency: float):
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "fake_llm_server.py"), "--latency", str(latency)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1"):
            self.proc.terminate()
            raise RuntimeError("the fake LLM server did not start")

    def cpu(self) -> float:
        import psutil

        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def __enter__(self) -> ServerProcess:  # noqa: PYI034 - a final class
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def pick_questions(data: Path | None, split: str, n: int) -> tuple[list, str]:
    """The questions to ask and a line saying where they came from."""
    from ecgqa.data.prepared import PreparedData
    from ecgqa.evaluation.paper_sample import paper_sample_ids
    from llm_eval.sampling import questions_from_prepared

    if data is None:
        data = Path(tempfile.mkdtemp(prefix="ecgqa-llm-scale-")) / "prepared"
        _prepare_sample(data)
    prepared = PreparedData(data)
    splits = [split] if split in prepared.splits else prepared.splits
    questions = [q for s in splits for q in questions_from_prepared(prepared, s)]
    wanted = paper_sample_ids()  # ships with ecgqa (a corrupt copy raises PaperSampleError)
    by_id = {q.sample_id: q for q in questions}
    if wanted and n == PAPER_N and all(i in by_id for i in wanted):
        chosen, where = [by_id[i] for i in wanted], f"the {len(wanted)} published-sample ids of {data} ({split})"
    elif len(questions) >= n:
        chosen, where = questions[:n], f"the first {n} questions of {data} ({'+'.join(splits)})"
    else:
        chosen = [
            dataclasses.replace(q, sample_id=k * 10**7 + q.sample_id)
            for k in range(n // len(questions) + 1)
            for q in questions
        ][:n]
        where = f"the {len(questions)} questions of {data} ({'+'.join(splits)}) repeated to {n}"
    # A blind prompt is the question and its options only, so questions of one template share a prompt; with
    # the paper's classifier input each one carries its ECG's findings and is distinct. Tag each question with
    # its sample id so that the server sees as many distinct prompts as a classifier-input run sends.
    chosen = [dataclasses.replace(q, question=f"{q.question} [sample {q.sample_id}]") for q in chosen]
    return chosen, where + "; every question tagged with its sample id (distinct prompts)"


def _prepare_sample(out: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "ecgqa", "prepare", "--out", str(out), "-q"], check=True, stdout=subprocess.DEVNULL
    )


def run_one(questions: list, c: int, latency: float, tmp: Path, before: bool = False) -> dict:
    """One full ``evaluate`` at concurrency ``c``; the request phase is timed by wrapping ``ask_all``.

    ``before``: as llm-eval ran before issue 18 — one commit (one fsync) per reply on the writer thread,
    and the transcripts written one after the other — the baseline of the two fixes, in the same run.
    """
    import asyncio

    import llm_eval.client as client_mod
    import llm_eval.run as run_mod
    from llm_eval.run import Sources, evaluate

    phase: dict = {}
    real_ask_all = client_mod.ask_all

    def timed_ask_all(client, prompts, progress=True):
        if before:

            async def one_commit_per_reply(h, messages, response):
                await asyncio.get_running_loop().run_in_executor(
                    client._writer, client.store.put, client.model, h, messages, response
                )

            client._commit = one_commit_per_reply
        cpu0, t0 = _cpu_self(), time.perf_counter()
        srv0 = server.cpu()
        try:
            return real_ask_all(client, prompts, progress)
        finally:
            phase.update(
                wall=time.perf_counter() - t0, cpu=_cpu_self() - cpu0, server_cpu=server.cpu() - srv0, n=len(prompts)
            )

    threads = run_mod.TRANSCRIPT_THREADS
    with ServerProcess(latency) as server:
        client_mod.ask_all = timed_ask_all
        run_mod.TRANSCRIPT_THREADS = 1 if before else threads
        try:
            cpu0, t0 = _cpu_self(), time.perf_counter()
            report = evaluate(
                questions,
                Sources(("none",)),
                "bench",
                tmp / f"c{c}",
                base_url=server.url,
                api_key="bench",
                concurrency=c,
                timeout=60,
                progress=False,
            )
            total, total_cpu = time.perf_counter() - t0, _cpu_self() - cpu0
        finally:
            client_mod.ask_all = real_ask_all
            run_mod.TRANSCRIPT_THREADS = threads
    assert report["n"] == len(questions) and not report["n_failed"], report
    return {**phase, "total": total, "total_cpu": total_cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="prepared QA directory (default: the bundled sample, prepared)")
    ap.add_argument("--split", default="test")
    ap.add_argument("-n", type=int, default=PAPER_N, help=f"questions (default {PAPER_N}, the published sample)")
    ap.add_argument("--latency", type=float, default=0.5, help="seconds the server waits per request")
    ap.add_argument(
        "--latency-for",
        nargs="*",
        default=["8=0.1"],
        metavar="C=L",
        help="another latency at a concurrency, to bound the run time (default 8=0.1)",
    )
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument(
        "--baseline",
        type=int,
        default=300,
        help="prompts of the baseline run (c=1, L=0): the client's CPU per request alone",
    )
    ap.add_argument(
        "--no-before",
        action="store_true",
        help="skip the before-issue-18 run (one commit per reply, transcripts one by one) at the top c",
    )
    args = ap.parse_args()
    latency_for = {int(k): float(v) for k, v in (s.split("=") for s in args.latency_for)}

    questions, where = pick_questions(args.data, args.split, args.n)
    print(
        f"# LLM evaluation at scale: {len(questions)} questions ({where}); input none; "
        f"{_load()} — a shared machine: six other engineers' jobs run on these cores"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="ecgqa-llm-scale-") as tmp:
        base = run_one(questions[: args.baseline], 1, 0.0, Path(tmp) / "base")
        base_ms = 1000 * base["cpu"] / base["n"]
        print(
            f"baseline (same run): {base['n']} prompts at c=1, L=0: {base['n'] / base['wall']:.0f} req/s, "
            f"client CPU {base_ms:.2f} ms/request, server CPU {1000 * base['server_cpu'] / base['n']:.2f} ms/request"
        )
        print(
            f"\n{'c':>4} {'L s':>5} {'N':>6} {'ask wall s':>10} {'N·L/c s':>8} {'wall/bound':>10} {'req/s':>7} "
            f"{'client CPU ms/req':>17} {'vs baseline':>11} {'server CPU ms/req':>17} {'rest of run s':>13}  load"
        )
        runs = [(c, False) for c in args.concurrency]
        if not args.no_before:  # the baseline of the fixes, interleaved: before, after, at the top concurrency
            runs.insert(len(runs) - 1, (args.concurrency[-1], True))
        for c, before in runs:
            lat = latency_for.get(c, args.latency)
            r = run_one(questions, c, lat, Path(tmp) / f"L{lat}{'-before' if before else ''}", before)
            bound = r["n"] * lat / c
            ms = 1000 * r["cpu"] / r["n"]
            rows.append((c, lat, before, r))
            print(
                f"{c:>4}{'*' if before else ' '}{lat:>5.2f} {r['n']:>6} {r['wall']:>10.1f} {bound:>8.1f} "
                f"{r['wall'] / bound:>10.2f} {r['n'] / r['wall']:>7.1f} {ms:>17.2f} {ms / base_ms:>11.2f} "
                f"{1000 * r['server_cpu'] / r['n']:>17.2f} {r['total'] - r['wall']:>13.1f}  {_load()}",
                flush=True,
            )
        if not args.no_before:
            (_, _, _, b), (_, _, _, a) = rows[-2], rows[-1]
            print(
                f"\nafter / before issue 18 at c={args.concurrency[-1]}: request phase {b['wall'] / a['wall']:.2f}x "
                f"faster, rest of run {(b['total'] - b['wall']) / (a['total'] - a['wall']):.1f}x faster, whole run "
                f"{b['total'] / a['total']:.2f}x faster"
            )
    print(
        "\n*: before issue 18 (one store commit per reply, transcripts written one by one); the other rows run "
        "the current code. ask wall: the request phase (ask_all); rest of run: prompts, scoring, transcripts "
        "and report around it. "
        "client CPU: user+sys of this process during the request phase / requests. wall/bound near 1 = the "
        "server's latency is the limit; well above 1 with client CPU·req/s near the cores = the client is."
    )


if __name__ == "__main__":
    main()
