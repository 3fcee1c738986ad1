"""The ``ecgqa`` command's parser: every subcommand registered, and no heavy import to build it."""

from __future__ import annotations

import argparse
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


def test_every_subcommand_takes_quiet_and_verbose():
    """-q and -v are accepted by every subcommand (score and report included), short and long."""
    from ecgqa.cli import build_parser

    parser = build_parser()
    subparsers = parser._subparsers._group_actions[0].choices

    def required_argv(sub):
        argv = []
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):  # nested subcommand (export hub): its first one
                name = next(iter(action.choices))
                return argv + [name] + required_argv(action.choices[name])
            if action.required or (not action.option_strings and action.nargs not in ("?", "*")):
                value = str(next(iter(action.choices))) if action.choices else "1"
                argv += [action.option_strings[0], value] if action.option_strings else [value]
        return argv

    for name, sub in subparsers.items():
        argv = [name] + required_argv(sub)
        for flags in (["-q", "-v"], ["--quiet", "--verbose"]):
            args = parser.parse_args(argv + flags)
            assert args.quiet is True and args.verbose is True, name
        args = parser.parse_args(argv)
        assert args.quiet is False and args.verbose is False, name
