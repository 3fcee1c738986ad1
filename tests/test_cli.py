"""The ``ecgqa`` command's parser: every subcommand registered, and no heavy import to build it."""

from __future__ import annotations

import subprocess
import sys

from ecgqa.cli import SUBCOMMANDS


def test_building_the_parser_imports_no_torch():
    """Each stage keeps torch inside the function it runs, so `ecgqa --help` and every command's argument errors
    answer at once (torch costs seconds to import, more on a loaded machine)."""
    code = (
        "import sys; from ecgqa.cli import build_parser; p = build_parser(); "
        "print(sorted(p._subparsers._group_actions[0].choices)); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == str(sorted(SUBCOMMANDS))
    assert out[1] == "False", "a subcommand module imports torch at the top"
