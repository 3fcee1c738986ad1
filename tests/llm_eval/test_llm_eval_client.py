"""LLM harness, offline: the real `openai` client against a real local server (retries, Retry-After, the key
only from the environment), the response store, a whole run with failures and resume, and the dry run."""

from __future__ import annotations

import email.utils
import json
import math
import re
from datetime import datetime, timedelta, timezone

import pytest

from llm_eval import sampling
from llm_eval.client import ChatClient, FatalEndpointError, _retry_after, api_key_from_env, ask_all
from llm_eval.grounding import Grounder
from llm_eval.prompts import options_for, prompt_hash
from llm_eval.run import evaluate
from llm_eval.store import Response, ResponseStore
from tests.llm_eval.llm_eval_helpers import KEY, StandInClassifier, _closing


@pytest.mark.slow
def test_retry_after_is_honoured_and_backoff_grows(tmp_path):
    class Resp:
        def __init__(self, headers):
            self.headers = headers

    class Err(Exception):
        def __init__(self, headers):
            self.response = Resp(headers)

    assert _retry_after(Err({"retry-after": "7"})) == 7.0
    assert _retry_after(Err({"retry-after-ms": "250"})) == 0.25
    assert _retry_after(Err({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0  # an HTTP date, long past
    soon = email.utils.format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 < _retry_after(Err({"retry-after": soon})) <= 30  # an HTTP date is honoured too
    assert _retry_after(Err({"retry-after": "soon"})) is None
    with _closing(ResponseStore(tmp_path / "s.sqlite")) as store:
        client = ChatClient(
            "m", store, base_url="http://127.0.0.1:9/v1", api_key="x", backoff_base=0.5, backoff_max=100, seed=0
        )
        assert all(client._delay(a, Err({"retry-after": "30"})) >= 30 for a in range(4))
        delays = [max(client._delay(a, Err({})) for _ in range(50)) for a in range(5)]
        assert all(0.5 * 2**a * 0.8 < d <= 0.5 * 2**a for a, d in enumerate(delays))  # jittered, doubling caps


def test_api_key_only_from_the_environment(monkeypatch):
    monkeypatch.setenv("MY_GATEWAY_KEY", KEY)
    assert api_key_from_env("MY_GATEWAY_KEY") == KEY
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        api_key_from_env("OPENAI_API_KEY")
    with pytest.raises(ValueError, match="NAME"):
        api_key_from_env(KEY)  # someone passed the key itself
    assert api_key_from_env("OPENAI_API_KEY", base_url="http://localhost:8000/v1") == "not-needed"


@pytest.mark.slow
def test_retries_on_429_500_and_timeouts_then_succeeds(tmp_path, server):
    server.state.faults = ["429", "500", "hang"]
    server.state.retry_after = 0.05
    with _closing(ResponseStore(tmp_path / "s.sqlite")) as store:
        client = ChatClient(
            "fake", store, base_url=server.url, api_key=KEY, timeout=1.0, max_retries=5, backoff_base=0.01
        )
        messages = [{"role": "user", "content": "Question: ?\n\nOptions: no; yes"}]
        out = ask_all(client, {"h1": messages}, progress=False)
        assert out["h1"].ok and out["h1"].attempts == 4
        assert store.get("fake", "h1").reply in ("no", "yes") and store.count() == 1
    st = server.state.stats()
    assert st["received"] == 4 and st["answered"] == 1
    assert st["faulted"] == {"429": 1, "500": 1, "hang": 1}
    assert server.state.tokens_seen == {KEY}


def test_request_and_lock_timeouts_are_retried(tmp_path, server):
    server.state.faults = ["408", "409"]
    with _closing(ResponseStore(tmp_path / "s.sqlite")) as store:
        client = ChatClient("fake", store, base_url=server.url, api_key=KEY, max_retries=3, backoff_base=0.01)
        out = ask_all(client, {"h": [{"role": "user", "content": "Options: no; yes"}]}, progress=False)
        assert out["h"].ok and out["h"].attempts == 3 and store.count() == 1
    assert server.state.stats()["faulted"] == {"408": 1, "409": 1}


def test_rejected_key_stops_the_run_without_showing_the_key(tmp_path, server):
    server.state.faults = ["401"]
    with _closing(ResponseStore(tmp_path / "s.sqlite")) as store:
        client = ChatClient("fake", store, base_url=server.url, api_key=KEY, max_retries=3, backoff_base=0.01)
        with pytest.raises(FatalEndpointError) as err:
            ask_all(client, {"h": [{"role": "user", "content": "Options: no; yes"}]}, progress=False)
        assert "401" in str(err.value) and KEY not in str(err.value) and KEY[:12] not in str(err.value)
        assert store.count() == 0
    assert server.state.stats()["received"] == 1  # not retried


def test_store_is_keyed_by_model_and_prompt_hash(tmp_path):
    with _closing(ResponseStore(tmp_path / "s.sqlite")) as store:
        m = [{"role": "user", "content": "x"}]
        assert store.put("a", prompt_hash(m), m, Response("yes", 3, 1))
        assert not store.put("a", prompt_hash(m), m, Response("no", 3, 1))  # first write wins, no duplicate
        assert store.put("b", prompt_hash(m), m, Response("no", 3, 1))
        assert store.count() == 2 and store.get("a", prompt_hash(m)).reply == "yes"
    with _closing(ResponseStore(tmp_path / "s.sqlite")) as again:
        assert again.count("a") == 1 and again.get("b", prompt_hash(m)).completion_tokens == 1


def _recompute(transcripts: list[dict], truth: dict[int, tuple[list[str], list[str]]]) -> dict:
    """Independent EM from transcripts (own parser) and the release's answers."""
    per: dict[str, list[bool]] = {}
    for t in transcripts:
        if t["status"] == "failed":
            continue
        opts = t["options"]
        text = t["reply"].lower()
        hits = []
        for o in sorted(opts, key=len, reverse=True):
            m = re.search(r"(?<![a-z0-9])" + re.escape(o.lower()) + r"(?![a-z0-9])", text)
            if m:
                hits.append(o)
                text = text[: m.start()] + "#" * len(o) + text[m.end() :]
        predicted = {h for h in hits if h != "None"}
        answer, valid = truth[t["sample_id"]]
        true = {a for a in answer if a != "none"} & set(valid)
        per.setdefault(t["question_type"], []).append(bool(hits) and predicted == true)  # no match = wrong
    flat = [c for v in per.values() for c in v]
    return {
        "n": len(flat),
        "em": sum(flat) / len(flat),
        "macro": sum(sum(v) / len(v) for v in per.values()) / len(per),
        "per_qt": {k: (len(v), sum(v) / len(v)) for k, v in per.items()},
    }


@pytest.mark.slow
def test_evaluate_end_to_end_resume_and_failures(
    tmp_path, server, signals, grounding_classes, sample_paths, train_questions, valid_questions, capsys
):
    raw = {}
    for split in ("train", "valid"):
        for f in (sample_paths.ptbxl_release / "template" / split).glob("*.json"):
            raw.update({s["sample_id"]: s for s in json.loads(f.read_text())})
    chosen = sampling.stratified_sample(train_questions + valid_questions)
    fail_q, nomatch_q = chosen[3], chosen[7]
    server.state.fail_substring = f"Question: {fail_q.question}\n"
    server.state.nomatch_substring = f"Question: {nomatch_q.question}\n"
    same_fail = [q for q in chosen if q.question == fail_q.question]
    same_nomatch = [q for q in chosen if q.question == nomatch_q.question]
    grounder = Grounder(StandInClassifier(grounding_classes), signals, tmp_path / "g.jsonl", progress=False)
    kwargs = {
        "base_url": server.url,
        "api_key": KEY,
        "concurrency": 4,
        "timeout": 5,
        "max_retries": 1,
        "backoff_base": 0.01,
        "price_in": 2.5,
        "price_out": 10.0,
        "report_meta": {"data": "sample", "split": "train+valid"},
        "progress": True,
    }
    report = evaluate(chosen, grounder, "fake-model", tmp_path / "out", **kwargs)

    out = tmp_path / "out"
    transcripts = [json.loads(p.read_text()) for p in sorted((out / "transcripts").glob("*.json"))]
    assert len(transcripts) == len(chosen) == report["n_questions"]
    # failed requests are recorded as failed, never scored
    assert report["n_failed"] == len(same_fail) and report["failed_sample_ids"] == sorted(
        q.sample_id for q in same_fail
    )
    assert {t["sample_id"] for t in transcripts if t["status"] == "failed"} == {q.sample_id for q in same_fail}
    assert report["n_no_match"] == len(same_nomatch)
    assert all(t["parsed"] == [] for t in transcripts if t["status"] == "no-match")
    # report figures = independent recomputation from transcripts and the release answers
    truth = {q.sample_id: (raw[q.sample_id]["answer"], list(q.options)) for q in chosen}
    ind = _recompute(transcripts, truth)
    assert report["n"] == ind["n"] == len(chosen) - len(same_fail)
    assert math.isclose(report["em"], ind["em"]) and math.isclose(report["em_macro_question_type"], ind["macro"])
    assert report["per_question_type"].keys() == ind["per_qt"].keys()
    for qt, (n, em) in ind["per_qt"].items():
        assert report["per_question_type"][qt]["n"] == n and math.isclose(report["per_question_type"][qt]["em"], em)
    assert 0 < report["em"] < 1
    ok = [t for t in transcripts if t["status"] != "failed"]
    p_tok = sum(len(t["messages"][0]["content"].split()) for t in ok)
    c_tok = sum(len(t["reply"].split()) for t in ok)
    assert report["usage"] == {"prompt_tokens": p_tok, "completion_tokens": c_tok, "total_tokens": p_tok + c_tok}
    assert report["cost"]["total"] == pytest.approx(p_tok * 2.5e-6 + c_tok * 10e-6, abs=1e-6)
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["sample_id"] for p in preds] == [q.sample_id for q in chosen]
    assert (out / "report.md").read_text().count("fake-model") >= 1
    first_answered = server.state.stats()["answered"]
    assert first_answered == len({t["prompt_hash"] for t in ok})

    # re-run with the failure fixed: only the failed prompts are requested, nothing twice
    server.state.fail_substring = None
    before = server.state.stats()["received"]
    report2 = evaluate(chosen, grounder, "fake-model", out, **kwargs)
    failed_prompts = {t["prompt_hash"] for t in transcripts if t["status"] == "failed"}
    assert server.state.stats()["received"] - before == len(failed_prompts)
    assert report2["n_failed"] == 0 and report2["n"] == len(chosen)
    assert server.state.stats()["max_answers_per_prompt"] == 1
    # and once more: zero requests, identical report
    before = server.state.stats()["received"]
    report3 = evaluate(chosen, grounder, "fake-model", out, **kwargs)
    assert server.state.stats()["received"] == before
    assert report3 == report2
    assert json.loads((out / "run_log.json").read_text())["requests_sent"] == 0

    # the key never shows up in anything written or printed
    captured = capsys.readouterr()
    assert KEY not in captured.out + captured.err
    for p in out.rglob("*"):
        if p.is_file():
            assert KEY.encode() not in p.read_bytes(), p
    assert server.state.tokens_seen == {KEY}


def test_dry_run_writes_prompts_and_calls_nothing(
    tmp_path, server, signals, grounding_classes, train_questions, monkeypatch
):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    qs = train_questions[:12]
    g = Grounder(StandInClassifier(grounding_classes), signals, progress=False)
    summary = evaluate(qs, g, "fake-model", tmp_path / "dry", dry_run=True, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "dry" / "prompts.jsonl").read_text().splitlines()]
    assert [x["sample_id"] for x in lines] == [q.sample_id for q in qs]
    assert all(x["prompt_hash"] == prompt_hash(x["messages"]) for x in lines)
    assert summary["chars"] == sum(len(x["messages"][0]["content"]) for x in lines)
    assert server.state.stats()["received"] == 0
    assert not (tmp_path / "dry" / "report.json").exists()
    assert all(options_for(q) == ["no", "yes"] for q in qs)


def test_report_url_drops_credentials_and_query_keeps_ipv6():
    from llm_eval.client import safe_url as _safe_url

    assert _safe_url("https://user:secret@gw.example.com:8443/v1?api-key=abc") == "https://gw.example.com:8443/v1"
    assert _safe_url("http://u:p@[::1]:8000/v1?k=1") == "http://[::1]:8000/v1"
    assert _safe_url(None) is None
