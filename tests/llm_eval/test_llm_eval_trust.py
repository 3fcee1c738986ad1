"""llm-eval's trust fixes (issue 24, items 6-9, 11 and the dry run): files it did not make are never adopted,
credentials in ``--base-url`` never travel or land in files, a down endpoint or a server that cannot take the
input stops the run with one line, option values are checked and ``--timeout`` bounds the whole request.
Real ``openai`` client against a real local server (tests/fake_llm_server.py), real SQLite files."""

from __future__ import annotations

import argparse
import json
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from ecgqa.cli.common import dispatch
from llm_eval.client import (
    ChatClient,
    RejectedInputError,
    ask_all,
    parse_base_url,
    redact,
)
from llm_eval.grounding import Grounder
from llm_eval.run import evaluate
from llm_eval.store import APPLICATION_ID, Response, ResponseStore
from tests.fake_llm_server import FakeLLM, FakeServer
from tests.llm_eval.llm_eval_helpers import StandInClassifier

KEY = "sk-trust-NEVER-WRITE-ME-0123456789"
QUERY_SECRET = "qs-SECRET-4242-in-the-url"
# The harness tests' fixtures (grounding_classes, signals, train_questions) come from tests/llm_eval/conftest.py.
# A 1x1 PNG.
PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
)


@pytest.fixture
def server():
    with FakeServer(FakeLLM()) as s:
        yield s


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there: every connection is refused
    return port


def _prompts(n: int, text: str = "Is there noise?") -> dict[str, list[dict]]:
    return {f"h{i}": [{"role": "user", "content": f"{text} #{i}\n\nOptions: no; yes"}] for i in range(n)}


def _files_text(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file() and p.suffix != ".sqlite")


# ----------------------------------------------------------------------------- 6: adopt only our own files


def test_a_users_sqlite_file_given_as_store_is_refused_and_untouched(tmp_path):
    path = tmp_path / "my_lab.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE patients (id INTEGER, note TEXT)")
    db.execute("INSERT INTO patients VALUES (1, 'keep me')")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"my_lab.sqlite is an SQLite file that ecgqa llm-eval did not make.*patients"):
        ResponseStore(path)
    assert path.read_bytes() == before  # no table added, not switched to WAL (the header's bytes 18-19 say so)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_lab.sqlite"]  # no -wal / -shm beside it
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    db.close()
    other = tmp_path / "notes.txt"
    other.write_text("not a database")
    with pytest.raises(ValueError, match="not an SQLite file.*left untouched"):
        ResponseStore(other)
    assert other.read_text() == "not a database"


def test_stores_we_made_are_marked_and_adopted_also_from_before_the_marker(tmp_path):
    new = ResponseStore(tmp_path / "new.sqlite")
    new.put("m", "h", [{"role": "user", "content": "q"}], Response("yes"))
    new.close()
    db = sqlite3.connect(tmp_path / "new.sqlite")
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    db.close()
    again = ResponseStore(tmp_path / "new.sqlite")
    assert again.get("m", "h").reply == "yes"
    again.close()
    # A store written before the marker existed: exactly our responses table, no application_id.
    from llm_eval.store import SCHEMA

    old = tmp_path / "old.sqlite"
    db = sqlite3.connect(old)
    db.execute(SCHEMA)
    db.execute("INSERT INTO responses VALUES ('m', 'h', 'no', 1, 1, NULL, NULL, '[]', 0)")
    db.commit()
    db.close()
    adopted = ResponseStore(old)
    assert adopted.get("m", "h").reply == "no"
    adopted.close()


@pytest.mark.parametrize("text", ["{", '{"', '{"kind"', '{"kind": "ecgq'])
def test_a_short_json_looking_file_given_as_grounding_cache_is_kept(tmp_path, signals, grounding_classes, text):
    """A one-byte ``{`` is not a torn header of ours (it used to be deleted as one)."""
    path = tmp_path / "mine.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="not a grounding cache written by ecgqa.*left untouched"):
        Grounder(StandInClassifier(grounding_classes), signals, path, fingerprint="abc", progress=False)
    assert path.read_text() == text


# ----------------------------------------------------------------------------- 7: credentials in --base-url


def test_credentials_in_the_base_url_are_refused_without_echoing_them(tmp_path, server):
    url = server.url.replace("http://", "http://alice:PW-s3cret-99@")
    with pytest.raises(ValueError, match="user name or password") as err:
        parse_base_url(url)
    assert "PW-s3cret-99" not in str(err.value) and "alice" not in str(err.value)
    store = ResponseStore(tmp_path / "s.sqlite")
    with pytest.raises(ValueError, match="user name or password"):
        ChatClient("fake", store, base_url=url, api_key=KEY)
    store.close()
    assert server.state.stats()["received"] == 0


def test_a_query_string_in_the_base_url_is_sent_as_a_query_and_never_written(
    tmp_path, server, signals, grounding_classes, train_questions, capsys
):
    url = f"{server.url}?api-key={QUERY_SECRET}"
    server.state.faults = ["echo"] * 3  # a proxy echoing the request line and its Authorization header
    g = Grounder(StandInClassifier(grounding_classes), signals, progress=False)
    out = tmp_path / "run"
    evaluate(train_questions[:4], g, "fake", out, base_url=url, api_key=KEY, max_retries=0, progress=True)
    seen = server.state.seen
    # The path is /v1/chat/completions (it answered), and the query arrived as a query on every request.
    assert seen and all(s["query"] == f"api-key={QUERY_SECRET}" for s in seen)
    assert server.state.stats()["answered"] == len(seen) - 3
    written = _files_text(out) + capsys.readouterr().err
    assert "cannot serve POST" in written  # the echoed errors are in the transcripts...
    assert QUERY_SECRET not in written and KEY not in written  # ...without the secrets
    db = sqlite3.connect(out / "responses.sqlite")
    assert QUERY_SECRET not in json.dumps(db.execute("SELECT * FROM responses").fetchall())
    db.close()


def test_openai_base_url_from_the_environment_is_checked_and_recorded(
    tmp_path, server, signals, grounding_classes, train_questions, monkeypatch
):
    """The openai client reads OPENAI_BASE_URL by itself: the same refusal applies, and the report names it."""
    g = Grounder(StandInClassifier(grounding_classes), signals, progress=False)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url.replace("http://", "http://bob:PW-env-77@"))
    with pytest.raises(ValueError, match="user name or password"):
        evaluate(train_questions[:2], g, "fake", tmp_path / "a", api_key=KEY, progress=False)
    assert not (tmp_path / "a").exists() and server.state.stats()["received"] == 0
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    report = evaluate(train_questions[:2], g, "fake", tmp_path / "b", api_key=KEY, progress=False)
    assert report["base_url"] == server.url and server.state.stats()["answered"] >= 1


def test_redact_masks_userinfo_basic_and_bearer_tokens_and_query_values():
    text = (
        "GET http://bob:hunter2@h/v1?api-key=abc123&x=1 Authorization: Basic Ym9iOmh1bnRlcjI= "
        "Bearer tok-998877 key sk-abcdefghijkl"
    )
    out = redact(text)
    for secret in ("hunter2", "bob:", "abc123", "Ym9iOmh1bnRlcjI", "tok-998877", "abcdefghijkl"):
        assert secret not in out, (secret, out)
    assert "http://***@h/v1?api-key=***&x=***" in out and "Basic ***" in out


# ----------------------------------------------------------------------------- 8: a down endpoint


def test_an_unreachable_endpoint_stops_after_a_run_of_failures_with_one_line(
    tmp_path, signals, grounding_classes, train_questions, capsys, monkeypatch
):
    monkeypatch.setattr(ChatClient, "DOWN_AFTER_S", 0.5)
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    g = Grounder(StandInClassifier(grounding_classes), signals, progress=False)
    out = tmp_path / "run"
    questions = train_questions[:30]

    def run(_):
        return evaluate(
            questions, g, "fake", out, base_url=url, api_key=KEY, concurrency=2, backoff_base=0.05, progress=False
        )

    t0 = time.monotonic()
    assert dispatch(argparse.Namespace(func=run)) == 2  # under -q (progress=False) too
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: the endpoint {url} is down") and "re-run" in err[0]
    log = json.loads((out / "run_log.json").read_text())
    # 30 prompts x 7 attempts = 210 requests before; now the run stops after about DOWN_AFTER_FAILURES.
    assert log["requests_sent"] < 30, log
    assert elapsed < 20
    report = json.loads((out / "report.json").read_text())
    assert report["n_failed"] == len(questions) and report["n"] == 0


# ----------------------------------------------------------------------------- 9: options and the deadline


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--max-retries", "-1", "below 0"),
        ("--timeout", "0", "above 0"),
        ("--timeout", "-5", "above 0"),
        ("--timeout", "nan", "above 0"),
        ("--max-tokens", "0", "cap replies at nothing"),
        ("--max-tokens", "-3", "cap replies at nothing"),
        ("--max-completion-tokens", "0", "below 1"),
        ("--price-in", "nan", "finite price"),
        ("--price-out", "-1", "finite price"),
        ("--concurrency", "0", "below 1"),
    ],
)
def test_bad_llm_eval_options_are_refused_before_anything_runs(tmp_path, capsys, option, value, message):
    from ecgqa.cli import main

    out = tmp_path / "out"
    argv = ["llm-eval", "--data", str(tmp_path / "none"), "--model", "m", "--out", str(out), option, value]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert option in err and message in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_retries": -1}, "--max-retries"),
        ({"timeout": 0.0}, "--timeout"),
        ({"timeout": float("inf")}, "--timeout"),
        ({"max_tokens": 0}, "--max-tokens"),
        ({"price_in": float("nan")}, "--price-in"),
    ],
)
def test_bad_options_are_refused_by_the_library_too(
    tmp_path, server, signals, grounding_classes, train_questions, kwargs, message
):
    g = Grounder(StandInClassifier(grounding_classes), signals, progress=False)
    with pytest.raises(ValueError, match=message):
        evaluate(train_questions[:2], g, "fake", tmp_path / "out", base_url=server.url, api_key=KEY, **kwargs)
    assert not (tmp_path / "out").exists() and server.state.stats()["received"] == 0


def test_timeout_bounds_the_whole_request_against_a_trickling_server(tmp_path, server):
    """The server sends a byte every 0.2 s for 8 s: each read is quick, the request is not."""
    server.state.faults = ["trickle"]
    store = ResponseStore(tmp_path / "s.sqlite")
    client = ChatClient("fake", store, base_url=server.url, api_key=KEY, timeout=1.0, max_retries=0)
    t0 = time.monotonic()
    outcomes = ask_all(client, _prompts(1), progress=False)
    elapsed = time.monotonic() - t0
    store.close()
    assert elapsed < 4, f"--timeout 1 let a trickling request run {elapsed:.1f} s"
    (o,) = outcomes.values()
    assert not o.ok and "within --timeout 1 s" in o.error


# ----------------------------------------------------------------------------- 11: a capability refusal


def test_a_server_that_cannot_take_images_stops_after_the_first_refusal(tmp_path, server):
    """llama-server without --mmproj answers HTTP 500 "image input is not supported ... mmproj"."""
    server.state.images_unsupported_500 = True
    image = PNG
    prompts = {
        f"h{i}": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image}},
                    {"type": "text", "text": f"Q{i}\n\nOptions: no; yes"},
                ],
            }
        ]
        for i in range(20)
    }
    store = ResponseStore(tmp_path / "s.sqlite")
    client = ChatClient(
        "smol", store, base_url=server.url, api_key=KEY, concurrency=1, backoff_base=0.01, input_name="image"
    )
    with pytest.raises(RejectedInputError, match=r"cannot take the input 'image' for model 'smol'.*mmproj") as err:
        ask_all(client, prompts, progress=False)
    store.close()
    assert "\n" not in str(err.value)
    assert server.state.stats()["received"] == 1  # 20 prompts x 7 attempts before


def test_no_em_is_printed_over_zero_questions(tmp_path, server, signals, grounding_classes, train_questions, capsys):
    server.state.fail_substring = "Question"  # every request fails (500) and stays failed
    g = Grounder(StandInClassifier(grounding_classes), signals, progress=False)
    report = evaluate(train_questions[:3], g, "fake", tmp_path / "run", base_url=server.url, api_key=KEY, max_retries=0)
    err = capsys.readouterr().err
    assert report["n"] == 0 and report["n_failed"] == 3
    assert "EM " not in err and "no question was answered: 3 of 3 failed" in err


# ----------------------------------------------------------------------------- the dry run prints its estimate


def test_dry_run_prints_its_token_and_cost_estimate(
    tmp_path, server, signals, grounding_classes, train_questions, capsys
):
    g = Grounder(StandInClassifier(grounding_classes), signals, progress=False)
    summary = evaluate(train_questions[:5], g, "fake", tmp_path / "dry", dry_run=True, price_in=2.5, progress=False)
    out = capsys.readouterr().out
    assert f"{summary['n_prompts']} prompts" in out
    assert f"~{summary['estimated_prompt_tokens']} prompt tokens" in out
    assert f"input cost ~{summary['estimated_input_cost']:.4f} at 2.5 per 1M tokens" in out
    assert server.state.stats()["received"] == 0


# ----------------------------------------------------------------------------- 12: one chart writer, whole titles


def test_llm_eval_writes_the_charts_score_writes_with_titles_never_cut_off(
    tmp_path, server, signals, grounding_classes, train_questions, valid_questions, monkeypatch
):
    """llm-eval calls the chart writer of `ecgqa evaluate` / `ecgqa score`; with a long model name every chart's
    title stays inside the figure (each figure is checked, as drawn, just before it is saved)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    checked = []
    save = Figure.savefig

    def checking_savefig(fig, *args, **kwargs):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        box = fig.bbox
        for ax in fig.axes:
            title = ax.title.get_window_extent(renderer)
            assert ax.title.get_text()
            assert box.x0 - 0.5 <= title.x0 and title.x1 <= box.x1 + 0.5, (ax.title.get_text(), title, box)
            assert title.y1 <= box.y1 + 0.5
        checked.append(fig)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", checking_savefig)
    model = "meta-llama/Llama-3.1-70B-Instruct-Turbo"  # 39 characters, plus " (classifier) on ..."
    g = Grounder(StandInClassifier(grounding_classes), signals, progress=False)
    questions = train_questions[:6] + valid_questions[:4]
    out = tmp_path / "run"
    report = evaluate(
        questions, g, model, out, base_url=server.url, api_key=KEY, progress=False, report_meta={"split": "train"}
    )
    qtypes = sorted({q.question_type for q in questions})
    assert len(qtypes) >= 2
    expected = {"charts/question_types.png", *(f"charts/{qt}.png" for qt in qtypes)}
    assert set(report["charts"]) == expected and len(checked) == len(expected)
    for chart in report["charts"]:
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text())["charts"] == report["charts"]
    assert all(f"]({c})" in (out / "report.md").read_text() for c in report["charts"])
    per_qt = report["per_question_attribute_type"]
    assert sorted(per_qt) == qtypes
    assert sum(b["n"] for blocks in per_qt.values() for b in blocks.values()) == report["n"]
