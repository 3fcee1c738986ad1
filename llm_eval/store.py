"""The durable response store: every reply is committed here before it is scored.

SQLite in WAL mode with ``synchronous=FULL``: a committed row survives a crash or a SIGKILL, a torn
transaction is rolled back on the next open, and the primary key (model, prompt hash) makes a
response impossible to record twice. A re-run looks every prompt up first, so answered prompts cost
no request at all; only failed or missing ones are sent again. The store is marked as ours
(``PRAGMA application_id``, :data:`APPLICATION_ID`); ``--store`` naming any other file (a user's own
SQLite database, anything else) is refused before anything touches it (:func:`check_ours`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecgqa.files import disk_full

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    model TEXT NOT NULL,
    prompt_hash TEXT NOT NULL,
    reply TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    response_model TEXT,
    finish_reason TEXT,
    messages TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (model, prompt_hash)
)
"""


#: ``PRAGMA application_id`` of every store this tool creates (the bytes "EQLR"): proof the file is ours.
APPLICATION_ID = 0x45514C52
#: The columns of ``responses``: a store made before the marker existed is recognised by exactly this table.
COLUMNS = (
    "model",
    "prompt_hash",
    "reply",
    "prompt_tokens",
    "completion_tokens",
    "response_model",
    "finish_reason",
    "messages",
    "created",
)


def check_ours(path: Path) -> None:
    """Refuse a file this tool did not make, before anything writes to it (a connection in WAL mode, a table).

    Ours: missing, empty, marked with :data:`APPLICATION_ID`, or an unmarked SQLite file holding exactly
    the ``responses`` table of :data:`COLUMNS` (a store from before the marker). Read-only checks only.
    """
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        return
    if not path.is_file():
        raise ValueError(f"--store {path} is a folder; it must name a file (e.g. {path}/responses.sqlite)")
    with path.open("rb") as f:
        head = f.read(16)
    if head != b"SQLite format 3\x00":
        raise ValueError(
            f"--store {path} is not a response store written by ecgqa llm-eval (not an SQLite file); it was left "
            "untouched. Point --store at a new file name"
        )
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
            columns = tuple(r[1] for r in db.execute("PRAGMA table_info(responses)"))
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise ValueError(f"--store {path}: not a usable response store ({e}); it was left untouched") from None
    if app_id == APPLICATION_ID or (app_id == 0 and tables == ["responses"] and columns == COLUMNS):
        return
    raise ValueError(
        f"--store {path} is an SQLite file that ecgqa llm-eval did not make (tables: {', '.join(tables) or 'none'}"
        f"{f'; application_id {app_id:#x}' if app_id else ''}); it was left untouched. Point --store at a new file "
        "name or at a store an earlier llm-eval run wrote"
    )


class StoreFullError(RuntimeError):
    """The disk (or quota) under the response store is full: the run stops with one clear message."""


def _is_full(e: sqlite3.Error) -> bool:
    return isinstance(e, sqlite3.OperationalError) and ("full" in str(e) or "disk I/O" in str(e))


def _is_disk_full(e: BaseException) -> bool:
    """SQLITE_FULL, "database or disk is full" or ENOSPC: the disk is full, not the store broken."""
    if isinstance(e, OSError):
        return disk_full(e)
    return getattr(e, "sqlite_errorcode", None) == getattr(
        sqlite3, "SQLITE_FULL", 13
    ) or "database or disk is full" in str(e)


def _full_disk_error(path: Path, e: BaseException) -> StoreFullError:
    return StoreFullError(
        f"{path}: the disk is full ({e}); every reply committed so far is kept. Free some "
        "space (or point --store at another disk) and re-run the same command to continue"
    )


@dataclass(frozen=True)
class Response:
    reply: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    response_model: str | None = None
    finish_reason: str | None = None
    # False when the endpoint's usage was missing or malformed (the counts above are then 0); not stored.
    usage_known: bool = field(default=True, compare=False)


class ResponseStore:
    """(model, prompt hash) → response, on disk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if _is_disk_full(e):
                raise _full_disk_error(self.path, e) from None
            raise
        check_ours(self.path)
        try:
            # One connection, shared with the client's writer thread under a lock (puts run off the event loop).
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(SCHEMA)
            self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")  # the marker: this file is ours
        except sqlite3.DatabaseError as e:
            if _is_disk_full(e):  # a nearly full disk, not a broken file: say so (as put() does)
                raise _full_disk_error(self.path, e) from None
            raise RuntimeError(f"{self.path}: not a usable response store ({e}); move it aside or pick --store") from e
        self._lock = threading.Lock()

    def get(self, model: str, prompt_hash: str) -> Response | None:
        with self._lock:
            row = self._db.execute(
                "SELECT reply, prompt_tokens, completion_tokens, response_model, finish_reason FROM responses "
                "WHERE model = ? AND prompt_hash = ?",
                (model, prompt_hash),
            ).fetchone()
        return Response(*row) if row else None

    def has(self, model: str, prompt_hash: str) -> bool:
        return self.get(model, prompt_hash) is not None

    def put(self, model: str, prompt_hash: str, messages: list[dict[str, Any]], response: Response) -> bool:
        """Commit one response (durably); False when it was already there (first write wins).

        The messages are kept with images replaced by their PNG's hash (``prompts.compact_messages``).
        """
        return self.put_many(model, [(prompt_hash, messages, response)]) == 1

    def put_many(self, model: str, items: list[tuple[str, list[dict[str, Any]], Response]]) -> int:
        """Commit several responses in ONE transaction (one fsync); returns how many were new.

        The client's writer hands over every reply that arrived while the previous commit was on disk
        (group commit): one fsync per reply capped a run at ~1/fsync requests per second.
        """
        from llm_eval.prompts import compact_messages

        now = time.time()
        rows = [
            (
                model,
                h,
                r.reply,
                int(r.prompt_tokens),
                int(r.completion_tokens),
                r.response_model,
                r.finish_reason,
                json.dumps(compact_messages(m), ensure_ascii=False),
                now,
            )
            for h, m, r in items
        ]
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    before = self._db.total_changes
                    self._db.executemany("INSERT OR IGNORE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as e:
                if _is_full(e):
                    raise _full_disk_error(self.path, e) from None
                raise
            return self._db.total_changes - before

    def count(self, model: str | None = None) -> int:
        with self._lock:
            if model is None:
                return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM responses WHERE model = ?", (model,)).fetchone()[0]

    def close(self) -> None:
        self._db.close()
