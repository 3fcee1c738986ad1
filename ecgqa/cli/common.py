"""Running a parsed subcommand: the one place that turns our errors into one-line messages.

Used by ``ecgqa`` (``ecgqa/cli/__init__.py``) and by the stages' own entry points (``python -m mapping``,
``python -m llm_eval``), which must not import ``ecgqa.cli`` (it imports every stage).
"""

from __future__ import annotations

import argparse
import sys

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
        raise
    except (ValueError, RuntimeError) as e:
        # Our errors name the file / record / sample at fault; a traceback adds nothing for users.
        print(f"error: {e}", file=sys.stderr)
        return 2
