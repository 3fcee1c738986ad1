"""The paths issue 18 made scale: the response store's group commit, parallel transcript writes."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time

import pytest

from llm_eval.client import ChatClient, ask_all
from llm_eval.prompts import prompt_hash
from llm_eval.run import write_transcripts
from llm_eval.scoring import Scored
from llm_eval.store import Response, ResponseStore, StoreFullError
from tests.fake_llm_server import FakeLLM, FakeServer


def _prompts(n: int) -> dict[str, list[dict]]:
    out = {}
    for i in range(n):
        m = [{"role": "user", "content": f"Question {i}?\n\nOptions: no; yes"}]
        out[prompt_hash(m)] = m
    return out


def _rows(path) -> dict[tuple[str, str], str]:
    """The store's rows read through a connection of our own (what a crash right now would leave)."""
    db = sqlite3.connect(path)
    try:
        return {(m, h): r for m, h, r in db.execute("SELECT model, prompt_hash, reply FROM responses")}
    finally:
        db.close()


def test_put_many_commits_all_in_one_transaction_first_write_wins(tmp_path):
    store = ResponseStore(tmp_path / "s.sqlite")
    prompts = list(_prompts(3).items())
    assert store.put("m", prompts[0][0], prompts[0][1], Response("first"))
    items = [(h, msgs, Response(f"reply {i}", 5, 1)) for i, (h, msgs) in enumerate(prompts)]
    assert store.put_many("m", items) == 2  # the first prompt was already there: not replaced
    rows = _rows(tmp_path / "s.sqlite")
    assert rows == {("m", prompts[0][0]): "first", ("m", prompts[1][0]): "reply 1", ("m", prompts[2][0]): "reply 2"}
    assert store.get("m", prompts[2][0]) == Response("reply 2", 5, 1)
    assert store.put_many("m", []) == 0
    store.close()


@pytest.mark.slow
def test_group_commit_every_reply_committed_before_it_counts_as_done(tmp_path):
    """Replies that arrive during a (slowed) commit share the next transaction; none is reported done
    before a separate connection can read it."""
    n = 24
    prompts = _prompts(n)
    store = ResponseStore(tmp_path / "s.sqlite")
    batches: list[int] = []
    real = store.put_many

    def slow_put_many(model, items):
        batches.append(len(items))
        if len(batches) == 1:
            time.sleep(0.3)  # the other replies arrive meanwhile
        return real(model, items)

    store.put_many = slow_put_many
    seen_unstored: list[str] = []
    with FakeServer(FakeLLM()) as server:
        client = ChatClient("m", store, base_url=server.url, api_key="k", concurrency=8, timeout=10)
        lock = threading.Lock()

        def on_done(o):
            with lock:
                if ("m", o.prompt_hash) not in _rows(tmp_path / "s.sqlite"):
                    seen_unstored.append(o.prompt_hash)

        out = asyncio.run(client.run(prompts, on_done))
    assert len(out) == n and all(o.ok for o in out.values())
    assert not seen_unstored
    assert sum(batches) == n and len(batches) < n and max(batches) > 1
    assert {h for _, h in _rows(tmp_path / "s.sqlite")} == set(prompts)
    store.close()


@pytest.mark.slow
def test_group_commit_failure_reaches_the_run(tmp_path):
    """A store that cannot commit (full disk) stops the run with its own error, as a single put did."""
    store = ResponseStore(tmp_path / "s.sqlite")

    def full(model, items):
        raise StoreFullError(f"{store.path}: the disk is full")

    store.put_many = full
    with FakeServer(FakeLLM()) as server:
        client = ChatClient("m", store, base_url=server.url, api_key="k", concurrency=4, timeout=10)
        with pytest.raises(StoreFullError, match="the disk is full"):
            ask_all(client, _prompts(6), progress=False)
    store.close()


def _scored(i: int) -> tuple[Scored, dict]:
    row = Scored(i, "single-verify", "scp_code", ["yes"], ["yes"], ["no", "yes"], True, "ok")
    return row, {"sample_id": i, "reply": f"yes {i}", "question": f"Question {i}?"}


def test_write_transcripts_one_file_per_question(tmp_path):
    scored = [_scored(i) for i in (3, 17, 250)]
    write_transcripts(tmp_path, scored)
    files = sorted(p.name for p in (tmp_path / "transcripts").iterdir())
    assert files == ["17.json", "250.json", "3.json"]  # no temporary file left behind
    for row, transcript in scored:
        assert json.loads((tmp_path / "transcripts" / f"{row.sample_id}.json").read_text()) == transcript


def test_write_transcripts_failure_is_raised(tmp_path):
    (tmp_path / "transcripts").mkdir()
    (tmp_path / "transcripts" / "5.json").mkdir()  # a folder where a transcript must go
    with pytest.raises(OSError):
        write_transcripts(tmp_path, [_scored(i) for i in (4, 5, 6)])


# --------------------------------------------------------------------------- the demo's start-up indexes


def _reference_index(data, store_ids: set[int]):
    """The demo's indexes computed row by row in Python (how build_service did it before issue 18)."""
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


@pytest.mark.slow
def test_demo_indexes_column_wise_equal_the_row_by_row_ones(prepared_qa):
    import numpy as np

    from ecgqa.data.prepared import PreparedData
    from ecgqa.serve.questions import QUESTION_COLUMNS, QuestionIndex, arrow_table
    from ecgqa.serve.service import ecg_question_counts, example_candidates, pick_examples, startup_indexes

    data = PreparedData(prepared_qa)
    tables = {s: arrow_table(data.split(s), (*QUESTION_COLUMNS, "answer")) for s in data.splits}
    n_rows = sum(t.num_rows for t in tables.values())
    # leave out one ECG of an early question, as if the store lacked it: its questions cannot be examples
    missing = int(tables["train"].column("ecg_id")[0].as_py()[0])
    store = np.asarray([e for e in np.asarray(data.ecg_ids).tolist() if e != missing])
    ref_index, ref_counts, ref_splits, ref_examples = _reference_index(data, set(store.tolist()))

    index = QuestionIndex.from_tables(list(data.classes), list(tables.values()))
    assert len(index.entries) < n_rows  # the sample repeats question texts: the dedup is exercised
    assert index.entries == ref_index.entries and index.template_classes == ref_index.template_classes
    assert index._exact == ref_index._exact
    assert QuestionIndex.from_prepared(data).entries == ref_index.entries
    counts, splits = ecg_question_counts(tables)
    assert counts == ref_counts and splits == ref_splits
    examples = pick_examples(
        {s: example_candidates(t, store) for s, t in tables.items()}, list(data.classes), set(store.tolist())
    )
    assert examples == ref_examples and examples
    assert all(missing not in e.ecg_ids for e in examples)
    index2, *rest = startup_indexes(data, set(store.tolist()))  # what build_service and the benchmark call
    assert index2.entries == ref_index.entries and rest == [ref_counts, ref_splits, ref_examples]
