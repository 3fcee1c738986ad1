"""`ecgqa llm-eval` against a real LLM: llama.cpp's llama-server with SmolLM2-135M-Instruct on 127.0.0.1, through
the real `openai` client, for --input none, classifier (the paper's prompt, its default) and features.

The server and model are installed by `bash scripts/build_llama_server.sh` (see tests/real_llm_server.py); without
them these tests skip with that command in the reason. What a tiny model answers is not pinned: the tests check
that every question got a real reply, and that the report's EM and its count of replies matching no option equal
a recount written here from the transcripts and the release's own answers, and that the server's counters saw
exactly the tokens the replies report.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tests.real_llm_server as real
from tests.real_llm_server import ALIAS, INSTALL_COMMAND, LlamaServer, ServerCrashed, cpu_has_amx, installed

ALNUM = set("abcdefghijklmnopqrstuvwxyz0123456789")

# (--input, split, questions): train is single-verify (options no/yes), valid is comparison_irrelevant-query
# (six numeric features + None, two ECGs). Kept small: the whole file runs in about a minute on 2 loaded cores.
CASES = [("none", "train", 6), ("classifier", "train", 4), ("features", "train", 3)]


@pytest.fixture(scope="module")
def llama():
    found = installed()
    if isinstance(found, str):
        pytest.skip(found)
    try:
        server = LlamaServer(*found, slots=1, threads=1)
        server.start()
    except ServerCrashed as e:
        note = " (this CPU has AMX)" if cpu_has_amx() else ""
        pytest.fail(f"the installed llama-server does not start{note}: {e}\nrebuild: `{INSTALL_COMMAND} --force`")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def release(sample_paths) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for split in ("train", "valid"):
        rows = []
        for f in sorted((sample_paths.ptbxl_release / "template" / split).glob("*.json")):
            rows += json.loads(f.read_text())
        out[split] = sorted(rows, key=lambda r: r["sample_id"])
    return out


def pick(rows: list[dict], n: int) -> list[dict]:
    """n questions spread over the split, both answers of a verify question represented."""
    by_answer: dict[str, list[dict]] = {}
    for r in rows:
        by_answer.setdefault(",".join(sorted(r["answer"])), []).append(r)
    groups = sorted(by_answer.values(), key=len, reverse=True)
    if all(len(g) == 1 for g in groups):  # query answers: every set differs; spread over the split
        return rows[:: max(1, len(rows) // n)][:n]
    chosen = []
    while len(chosen) < n:
        for g in groups:
            if len(chosen) < n and g:
                chosen.append(g.pop(len(g) // 2))
    return chosen


def _scan(text: str, names: list[str]) -> list[tuple[int, int, str]]:
    """Whole-phrase occurrences, scanning left to right, the longest name winning at each position."""
    spans, i = [], 0
    names = sorted(set(names), key=len, reverse=True)
    while i < len(text):
        for name in names:
            end = i + len(name)
            if (
                text.startswith(name, i)
                and (i == 0 or text[i - 1] not in ALNUM)
                and (end == len(text) or text[end] not in ALNUM)
            ):
                spans.append((i, end, name))
                i = end
                break
        else:
            i += 1
    return spans


def recount(reply: str, options: list[str], truth: list[str], style: str) -> tuple[bool, bool]:
    """(matched any option, correct): docs/benchmark.md's reply rules, written again from their description."""
    text = reply.lower()
    classes = [o for o in options if o.lower() != "none"]
    true = {t.lower() for t in truth if t != "none"}
    if style == "paper":  # options and "none", whole phrases; "none" next to an option is a contradiction
        found = {name for _, _, name in _scan(text, [c.lower() for c in classes] + ["none"])}
        if not found or ("none" in found and len(found) > 1):
            return bool(found), False
        return True, found - {"none"} == true
    # ecgqa-v2: each option (None only where offered), longest first, a match consuming its span
    found = set()
    for opt in sorted(options, key=len, reverse=True):
        for start, end, name in _scan(text, [opt.lower()]):
            found.add(name)
            text = text[:start] + "\x00" * (end - start) + text[end:]
    if not found:
        return False, False
    return True, found - {"none"} == true


@pytest.mark.slow
@pytest.mark.parametrize("inputs,split,n", CASES, ids=[f"{i}-{s}" for i, s, _ in CASES])
def test_llm_eval_against_a_real_llama_server(
    inputs, split, n, llama, release, prepared_qa, request, tmp_path, monkeypatch
):
    from ecgqa.cli import main

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a local endpoint needs no key
    chosen = pick(release[split], n)
    truth = {r["sample_id"]: r["answer"] for r in release[split]}
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"{r['sample_id']}\n" for r in chosen))
    out = tmp_path / "out"
    args = [
        "llm-eval",
        "--data",
        str(prepared_qa),
        "--input",
        inputs,
        "--model",
        ALIAS,
        "--base-url",
        llama.url,
        "--split",
        split,
        "--ids-file",
        str(ids),
        "--out",
        str(out),
        "--concurrency",
        "1",
        "--max-tokens",
        "32",
        "--timeout",
        "120",
        "-q",
    ]
    if inputs == "classifier":
        args += ["--grounding", str(request.getfixturevalue("upperbound_checkpoint"))]
    before = llama.metrics()
    assert main(args) == 0
    after = llama.metrics()

    report = json.loads((out / "report.json").read_text())
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    transcripts = {int(p.stem): json.loads(p.read_text()) for p in (out / "transcripts").glob("*.json")}
    assert report["input"] == inputs and report["llm"] == ALIAS
    assert report["prompt_style"] == ("paper" if inputs == "classifier" else "ecgqa-v2")

    # every question got a real reply
    assert sorted(transcripts) == sorted(r["sample_id"] for r in chosen) == sorted(p["sample_id"] for p in preds)
    assert report["n"] == report["n_questions"] == n and report["n_failed"] == 0
    for t in transcripts.values():
        assert isinstance(t["reply"], str) and t["reply"].strip() and t["error"] is None, t
        assert t["usage"]["completion_tokens"] > 0 and t["usage"]["prompt_tokens"] > 0

    # EM and unmatched replies: recounted from the replies and the release's answers
    recounted = {
        sid: recount(t["reply"], t["options"], truth[sid], report["prompt_style"]) for sid, t in transcripts.items()
    }
    assert report["n_no_match"] == sum(not matched for matched, _ in recounted.values())
    assert report["em"] == pytest.approx(sum(ok for _, ok in recounted.values()) / n)
    assert {p["sample_id"]: p["correct"] for p in preds} == {sid: ok for sid, (_, ok) in recounted.items()}

    # the server really answered: its own counters saw exactly the tokens the replies report (questions with the
    # same prompt, e.g. one question text over several ECGs with --input none, share one request)
    distinct = {t["prompt_hash"]: t["usage"] for t in transcripts.values()}
    run_log = json.loads((out / "run_log.json").read_text())
    assert run_log["requests_sent"] == len(distinct) == report["n_distinct_prompts"]
    generated = sum(u["completion_tokens"] for u in distinct.values())
    assert after["tokens_predicted_total"] - before["tokens_predicted_total"] == generated > 0
    seen = (
        after["prompt_tokens_total"]
        + after["prompt_tokens_cached_total"]
        - before["prompt_tokens_total"]
        - before["prompt_tokens_cached_total"]
    )
    assert seen == sum(u["prompt_tokens"] for u in distinct.values())
    assert report["usage"]["prompt_tokens"] == sum(t["usage"]["prompt_tokens"] for t in transcripts.values())
    if inputs == "classifier":  # the paper's prompt reached the model
        assert all(
            t["messages"][0]["content"].startswith("These are the interpretations of each ECG")
            for t in transcripts.values()
        )
    if inputs == "features":
        assert all("Measurements of the " in t["messages"][0]["content"] for t in transcripts.values())


def test_the_server_runs_without_a_prompt_cache(tmp_path):
    """llama-server's prompt cache (on by default) made identical temperature-0 runs differ; the test server and
    the command the build script suggests turn it off (docs/benchmark.md, "Local servers")."""
    cmd = LlamaServer(tmp_path / "llama-server", tmp_path / "m.gguf", log_dir=tmp_path).command()
    assert "--no-cache-prompt" in cmd and cmd[cmd.index("--cache-ram") + 1] == "0"
    script = (Path(__file__).resolve().parents[2] / INSTALL_COMMAND.split()[1]).read_text()
    suggested = next(line for line in script.splitlines() if "start it with:" in line)
    assert "--no-cache-prompt --cache-ram 0" in suggested


def test_identical_runs_give_identical_replies(llama, tmp_path):
    """Temperature 0 with the prompt cache off: the same prompts, asked twice (sharing prefixes, in a different
    order the second time), get byte-identical replies."""
    from llm_eval.client import ChatClient, ask_all
    from llm_eval.store import ResponseStore

    preface = "These are the interpretations of each ECG along with their scores.\n\nInterpretation of the ECG:\n"
    prompts = {
        f"h{i}": [
            {
                "role": "user",
                "content": f"{preface}sinus rhythm: 0.9{i}\n\nQuestion: Does this ECG show sinus rhythm (case {i})?"
                "\nOptions: no, yes\n\nOnly answer based on the given Options without any explanation.",
            }
        ]
        for i in range(6)
    }
    replies = []
    for run, order in enumerate((list(prompts), list(reversed(prompts)))):
        store = ResponseStore(tmp_path / f"run{run}.sqlite")
        client = ChatClient(ALIAS, store, base_url=llama.url, concurrency=1, max_tokens=16, timeout=120)
        outcomes = ask_all(client, {h: prompts[h] for h in order}, progress=False)
        replies.append({h: o.response.reply for h, o in outcomes.items()})
        store.close()
    assert replies[0] == replies[1]


def test_skip_reason_names_the_install_command(monkeypatch, tmp_path):
    """Without an install the real-LLM tests skip, and the reason is the exact command that installs it."""
    monkeypatch.setenv("ECGQA_LLM_HOME", str(tmp_path / "empty"))
    reason = installed()
    assert isinstance(reason, str) and f"`{INSTALL_COMMAND}`" in reason
    assert str(tmp_path / "empty" / "bin" / "llama-server") in reason
    (tmp_path / "empty" / "bin").mkdir(parents=True)
    (tmp_path / "empty" / "bin" / "llama-server.broken").write_text("")
    assert "failed its smoke start" in installed()
    assert Path(INSTALL_COMMAND.split()[1]).name == "build_llama_server.sh"
    assert (Path(__file__).resolve().parents[2] / INSTALL_COMMAND.split()[1]).is_file()


def test_a_segfault_at_start_up_on_an_amx_cpu_is_named(monkeypatch, tmp_path):
    """The known llama.cpp trap: a build with AMX crashes at warm-up on AMX CPUs; the failure must say so."""
    flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    assert cpu_has_amx() == any(f.startswith("amx_") for f in flags.split(":")[-1].split())
    server = LlamaServer(tmp_path / "llama-server", tmp_path / "m.gguf", log_dir=tmp_path)
    server.log_path.write_text("load_model: ...\nggml_backend_amx_mul_mat\n")
    monkeypatch.setattr(real, "cpu_has_amx", lambda: True)
    reason = server.crash_reason(-11)
    assert "AMX" in reason and f"`{INSTALL_COMMAND} --force`" in reason and str(server.log_path) in reason
    assert "AMX" not in server.crash_reason(1).split("\n")[0]  # another exit is not blamed on AMX
    monkeypatch.setattr(real, "cpu_has_amx", lambda: False)
    assert "AMX" not in server.crash_reason(-11).split("\n")[0]
