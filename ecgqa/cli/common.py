"""Running a parsed subcommand: the one place that turns our errors into one-line messages.

Used by ``ecgqa`` (``ecgqa/cli/__init__.py``) and by the stages' own entry points (``python -m mapping``,
``python -m llm_eval``), which must not import ``ecgqa.cli`` (it imports every stage).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ecgqa.files import disk_full


def add_threads_option(parser: argparse.ArgumentParser, default: int | None = None) -> None:
    """``--threads N``: torch's CPU threads for the command (train, pretrain, evaluate, quickstart)."""
    parser.add_argument(
        "--threads",
        type=int,
        default=default,
        help="torch CPU threads (default: "
        + ("torch's, one per core" if default is None else str(default))
        + "; on a shared CPU 1 is often faster)",
    )


def resolve_split(args: argparse.Namespace, preferred: str = "test") -> str:
    """``--split`` left out: ``preferred`` when the prepared folder ``args.data`` has it, else the held-out split
    it has (the bundled sample has no ``test``), said on stderr (``ecgqa.data.prepared.default_split``)."""
    if args.split is not None:
        return args.split
    from ecgqa.data.prepared import default_split, is_prepared

    if not is_prepared(args.data):
        return preferred  # the stage names what is wrong with --data
    split, why = default_split(args.data, preferred)
    if why and not getattr(args, "quiet", False):
        print(f"note: {why}", file=sys.stderr)
    return split


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--set FIELD=VALUE`` (train, pretrain) as a dict: a VALUE that parses as JSON is taken so, else as text."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set hidden_size=256")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """``-q/--quiet`` and ``-v/--verbose`` on every subcommand (kept where a command defines its own)."""
    have = parser._option_string_actions
    if "-q" not in have and "--quiet" not in have:
        parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes")
    if "-v" not in have and "--verbose" not in have:
        parser.add_argument(
            "-v", "--verbose", action="store_true", help="also show the libraries' logging, warnings and progress bars"
        )
    for action in parser._actions:  # nested subcommands (``ecgqa export hub``) take them too
        if isinstance(action, argparse._SubParsersAction):
            for nested in action.choices.values():
                add_output_flags(nested)


def print_report(report: dict[str, Any], out: Path) -> None:
    """The end of ``evaluate`` and ``score``: the report in the paper's table layout, the controls' verdict
    when they ran, and where the report folder was written."""
    from ecgqa.evaluation.report import paper_table

    print(paper_table([report], [report["model"]]), end="")
    if report.get("controls"):
        print(report["controls"]["verdict"]["sentence"])
    print(f"written: {out}")


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """``--threads N``: torch's CPU threads for the command (as ``ecgqa quickstart``; on a shared machine one
    thread is often fastest), restored afterwards; None leaves torch's default."""
    if threads is None:
        yield
        return
    import torch  # the command runs: its stage imports torch anyway

    before = torch.get_num_threads()
    set_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def set_threads(threads: int | None) -> None:
    """``--threads N`` for the rest of the process (see :func:`torch_threads`)."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads {threads}: must be a positive integer")
    import torch

    torch.set_num_threads(threads)


def dispatch(args: argparse.Namespace) -> int:
    """Run ``args.func(args)``; our errors become ``error: ...`` on stderr and exit status 2."""
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to continue", file=sys.stderr)
        return 130
    except OSError as e:
        if disk_full(e):
            where = f" while writing {e.filename}" if e.filename else ""
            print(
                f"error: no space left on the device{where}; nothing already complete was replaced. "
                "Free some space (or choose --out on another disk) and re-run the same command",
                file=sys.stderr,
            )
            return 2
        if isinstance(e, FileNotFoundError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and e.filename:
            print(f"error: {not_permitted(e)}", file=sys.stderr)
            return 2
        if e.errno in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.EBUSY) and e.filename:
            print(f"error: {wrong_kind(e)}", file=sys.stderr)
            return 2
        raise
    except (ValueError, RuntimeError) as e:
        # Our errors name the file / record / sample at fault; a traceback adds nothing for users.
        print(f"error: {e}", file=sys.stderr)
        return 2


def not_permitted(e: OSError) -> str:
    """One line for a refused read or write (a read-only ``--out``, a folder of another user's): the path and
    the fix. A path that does not exist yet, or exists and is readable, was being written."""
    path = Path(os.fsdecode(e.filename))
    reason = e.strerror or "permission denied"
    if e.errno == errno.EROFS or not path.exists() or os.access(path, os.R_OK):
        folder = next((p for p in (path, *path.parents) if p.exists()), path)
        return (
            f"cannot write {path} ({reason}; {folder} is not writable for this user); "
            "choose an --out folder you can write to, or make this one writable"
        )
    return f"cannot read {path} ({reason}); give this user read access to it, or pass a copy"


def wrong_kind(e: OSError) -> str:
    """One line for a path of the wrong kind: a folder where a file is written (``report --out DIR``), a file
    where a folder is needed (``--out FILE/sub``), or a mount point an output folder cannot be renamed onto."""
    path = Path(os.fsdecode(e.filename2 or e.filename))  # a rename names its target second
    if e.errno == errno.EISDIR:
        return f"cannot write {path}: it is a folder; give the name of a file (e.g. one inside that folder)"
    if e.errno == errno.EBUSY:
        return (
            f"cannot replace {path} ({e.strerror}): it is a mount point or in use; "
            f"give a new folder inside it instead (e.g. {path / 'run'})"
        )
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        return f"cannot write under {blocker}: it is a file, not a folder; choose an --out under a folder"
    return f"cannot write {path} ({e.strerror}); choose another --out"
