"""Running a parsed subcommand: the one place that turns our errors into one-line messages.

Used by ``ecgqa`` (``ecgqa/cli/__init__.py``) and by the stages' own entry points (``python -m mapping``,
``python -m llm_eval``), which must not import ``ecgqa.cli`` (it imports every stage).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from ecgqa.files import disk_full


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
