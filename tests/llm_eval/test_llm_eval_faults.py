"""LLM harness, offline: broken endpoints (200s that are no chat completion, odd content, malformed usage), full
disks and user files, against a real local server: a failed attempt or one clear error, never a bad reply stored."""

from __future__ import annotations

import json

import pytest

from llm_eval.client import ChatClient, ask_all
from llm_eval.grounding import Grounder
from llm_eval.run import evaluate
from llm_eval.store import ResponseStore
from tests.llm_eval.llm_eval_helpers import KEY, StandInClassifier, _closing, synthetic
from tests.llm_eval.paper_helpers import LEAD_OPTIONS


@pytest.mark.parametrize(
    "fault", ["html", "badjson", "empty", "nochoices", "nullcontent", "intcontent", "notext", "blank", "cutoff"]
)
@pytest.mark.slow
def test_a_broken_200_is_a_failed_attempt_retried_then_recorded_as_failed(tmp_path, server, fault):
    """L6-L8: a 200 that is no chat completion is never stored as a reply; it is retried, then failed."""
    messages = [{"role": "user", "content": "Question: ?\n\nOptions: no; yes"}]
    server.state.faults = [fault] * 3
    with _closing(ResponseStore(tmp_path / "s.sqlite")) as store:
        client = ChatClient("fake", store, base_url=server.url, api_key=KEY, max_retries=2, backoff_base=0.01)
        out = ask_all(client, {"h": messages}, progress=False)["h"]
        assert not out.ok and out.attempts == 3 and store.count() == 0
        assert server.url in out.error and "HTTP 200" in out.error
        excerpt = {
            "html": "502 Bad Gateway",
            "badjson": '"choices": [',
            "empty": "{}",
            "nochoices": '"choices": []',
            "nullcontent": '"content": null',
            "intcontent": '"content": 42',
            "notext": '"image_url"',
            "blank": '"content": " \\\\n "',
            "cutoff": '"finish_reason": "length"',
        }[fault]
        assert excerpt in out.error
        why = {
            "intcontent": "not text (int)",
            "notext": "no text part",
            "blank": "whitespace-only",
            "cutoff": "cut at max tokens before any text",
        }.get(fault, "")
        assert why in out.error and (fault != "cutoff" or "--max-completion-tokens" in out.error)
    assert server.state.stats()["received"] == 3
    # the next run asks again (nothing bad was stored) and gets the answer
    server.state.faults = [fault]
    with _closing(ResponseStore(tmp_path / "s.sqlite")) as store:
        client = ChatClient("fake", store, base_url=server.url, api_key=KEY, max_retries=2, backoff_base=0.01)
        out = ask_all(client, {"h": messages}, progress=False)["h"]
        assert out.ok and out.attempts == 2 and store.get("fake", "h").reply in ("no", "yes")


def test_broken_200s_in_a_run_are_failed_not_scored_and_resent(
    tmp_path, server, signals, grounding_classes, train_questions
):
    qs = train_questions[:6]
    server.state.faults = ["empty", "nullcontent"] * 20
    g = Grounder(StandInClassifier(grounding_classes), signals, progress=False)
    kwargs = {
        "base_url": server.url,
        "api_key": KEY,
        "concurrency": 1,
        "max_retries": 1,
        "backoff_base": 0.01,
        "progress": False,
    }
    report = evaluate(qs, g, "fake", tmp_path / "out", **kwargs)
    assert report["n_failed"] == len(qs) and report["n"] == 0 and report["n_no_match"] == 0
    server.state.faults = []
    report = evaluate(qs, g, "fake", tmp_path / "out", **kwargs)
    assert report["n_failed"] == 0 and report["n"] == len(qs)


def _clean_then_faulted(tmp_path, server, signals, grounding_classes, qs, fault: str, concurrency: int):
    """Evaluate ``qs`` against the clean server, then with ``server.state.<fault>`` on: (clean report, faulted
    report, [(faulted transcript, clean transcript) for each faulted transcript, in file-name order])."""
    g = Grounder(StandInClassifier(grounding_classes), signals, progress=False)
    kwargs = {"base_url": server.url, "api_key": KEY, "concurrency": concurrency, "max_retries": 0, "progress": False}
    clean = evaluate(qs, g, "fake", tmp_path / "clean", **kwargs)
    assert hasattr(server.state, fault)
    setattr(server.state, fault, True)
    faulted = evaluate(qs, g, "fake", tmp_path / "faulted", **kwargs)
    pairs = [
        (json.loads(p.read_text()), json.loads((tmp_path / "clean" / "transcripts" / p.name).read_text()))
        for p in sorted((tmp_path / "faulted" / "transcripts").glob("*.json"))
    ]
    return clean, faulted, pairs


def test_content_as_a_list_of_text_parts_is_parsed_and_scored(
    tmp_path, server, signals, grounding_classes, train_questions
):
    """N1: ``content: [{"type": "text", "text": ...}, ...]`` is read as its text parts joined, scored as usual."""
    qs = train_questions[:6]
    clean, parts, pairs = _clean_then_faulted(tmp_path, server, signals, grounding_classes, qs, "list_content", 1)
    assert parts["n_failed"] == 0 and parts["n"] == len(qs)
    for key in ("em", "n_no_match", "per_question_type", "usage"):
        assert parts[key] == clean[key]
    for t, c in pairs:
        assert isinstance(t["reply"], str) and t["reply"] == c["reply"] and t["parsed"] == c["parsed"]


def test_malformed_usage_counts_as_unknown_and_never_stops_the_run(
    tmp_path, server, signals, grounding_classes, train_questions, capsys
):
    """N4: usage with a negative or non-numeric count: tokens unknown (0), noted, every reply kept and scored."""
    qs = train_questions[:6]
    server.state.bad_usage = True
    g = Grounder(StandInClassifier(grounding_classes), signals, progress=False)
    report = evaluate(
        qs, g, "fake", tmp_path / "out", base_url=server.url, api_key=KEY, concurrency=1, max_retries=0, progress=False
    )
    assert report["n_failed"] == 0 and report["n"] == len(qs)
    assert report["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    run_log = json.loads((tmp_path / "out" / "run_log.json").read_text())
    assert run_log["replies_without_usable_usage"] == run_log["requests_sent"] > 0
    assert "malformed usage" in capsys.readouterr().err


def test_a_reply_with_a_lone_surrogate_is_stored_and_scored(
    tmp_path, server, signals, grounding_classes, train_questions
):
    """A reply ending in a lone surrogate escape (valid JSON, no UTF-8 form) is kept with U+FFFD in its place:
    the response store commits it and the run scores it like the clean reply, instead of failing the group commit."""
    qs = train_questions[:4]
    clean, cut, pairs = _clean_then_faulted(tmp_path, server, signals, grounding_classes, qs, "lone_surrogate", 2)
    assert cut["n_failed"] == 0 and cut["n"] == len(qs) and cut["em"] == clean["em"]
    for t, c in pairs:
        assert t["reply"] == c["reply"] + " \ufffd" and t["parsed"] == c["parsed"]


def test_a_full_disk_when_opening_the_store_says_so(tmp_path, monkeypatch):
    """L11: SQLITE_FULL while opening the store is a full disk, not a broken store to move aside."""
    import sqlite3

    from llm_eval.store import StoreFullError

    real_connect = sqlite3.connect

    def full(*args, **kwargs):
        db = real_connect(*args, **kwargs)
        db.execute("PRAGMA max_page_count = 1")  # creating the table now fails with a real SQLITE_FULL
        return db

    class Full:
        connect = staticmethod(full)

        def __getattr__(self, name):
            return getattr(sqlite3, name)

    monkeypatch.setattr("llm_eval.store.sqlite3", Full())
    with pytest.raises(StoreFullError, match="disk is full") as err:
        ResponseStore(tmp_path / "s.sqlite")
    assert "move it aside" not in str(err.value)


def test_a_full_disk_ends_with_one_clear_message(tmp_path, server):
    """L11: sqlite's "database or disk is full" (a real SQLITE_FULL, via max_page_count) is one message."""
    from llm_eval.store import StoreFullError

    with _closing(ResponseStore(tmp_path / "s.sqlite")) as store:
        store._db.execute(f"PRAGMA max_page_count = {store._db.execute('PRAGMA page_count').fetchone()[0]}")
        client = ChatClient("fake", store, base_url=server.url, api_key=KEY, max_retries=0)
        prompts = {f"h{i}": [{"role": "user", "content": "x" * 3000 + f"{i}\n\nOptions: no; yes"}] for i in range(5)}
        with pytest.raises(StoreFullError, match="disk is full.*re-run the same command"):
            ask_all(client, prompts, progress=False)


def test_a_user_file_given_as_grounding_cache_is_refused_and_kept(tmp_path, signals, grounding_classes):
    """L13: a file that is not our cache is never deleted or appended to, with or without a newline."""
    for text in ("my notes, no newline", "line one\nline two\n", '{"fingerprint": "x"}\n'):
        path = tmp_path / "notes.txt"
        path.write_text(text)
        with pytest.raises(ValueError, match="not a grounding cache written by ecgqa.*left untouched"):
            Grounder(StandInClassifier(grounding_classes), signals, path, fingerprint="abc", progress=False)
        assert path.read_text() == text
    with pytest.raises(ValueError, match="is a folder"):
        Grounder(StandInClassifier(grounding_classes), signals, tmp_path, fingerprint="abc", progress=False)


def test_out_holding_someone_elses_files_is_refused(tmp_path, server, signals, grounding_classes, train_questions):
    out = tmp_path / "results"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    g = Grounder(StandInClassifier(grounding_classes), signals, progress=False)
    with pytest.raises(ValueError, match="thesis.tex"):
        evaluate(train_questions[:2], g, "fake", out, base_url=server.url, api_key=KEY, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"] and server.state.stats()["received"] == 0
    # our own folder is reused (that is how a run resumes)
    ours = tmp_path / "ours"
    for _ in range(2):
        evaluate(train_questions[:2], g, "fake", ours, base_url=server.url, api_key=KEY, progress=False)
    assert server.state.stats()["received"] == 2


def test_a_reply_matching_no_option_is_wrong_even_when_the_truth_is_none(tmp_path, server, signals, grounding_classes):
    """L1: the paper scores an unparseable reply against {"none"}: wrong, never a free point."""
    q = synthetic("single-query", "Which leads does this ECG show baseline drift in?", LEAD_OPTIONS, [])
    server.state.faults = ["nomatch"]
    g = Grounder(StandInClassifier(grounding_classes), signals, progress=False)
    report = evaluate([q], g, "fake", tmp_path / "out", base_url=server.url, api_key=KEY, progress=False)
    assert report["n"] == 1 and report["n_no_match"] == 1 and report["em"] == 0.0
    t = json.loads((tmp_path / "out" / "transcripts" / f"{q.sample_id}.json").read_text())
    assert t["status"] == "no-match" and t["correct"] is False and t["parsed"] == [] and t["true"] == []
