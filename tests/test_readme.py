"""The README and the docs pages stay true: every `ecgqa ...` command they show parses with the real parser,
the README's workflow is one running example (each input is an earlier command's output), and every
relative link (file and #anchor) resolves."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from ecgqa.cli import SUBCOMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

# Pages and files that other branches of this round add (the lead merges them): a link to one of these may
# point nowhere until then. Every other relative link must resolve.
PENDING_FILES = {"docs/generate.md", "docs/distribution.md", "docs/get-data.md", "docs/scoring-pitfalls.md",
                 "docs/cite.md", "CITATION.cff"}  # fmt: skip
# Subcommands those branches add: the README names them in a commented-out row of its command table.
PENDING_COMMANDS = {"generate", "export", "records-needed"}

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def shell_blocks(page: Path) -> list[str]:
    return [body for lang, body in FENCE.findall(page.read_text(encoding="utf-8")) if lang in ("bash", "sh", "")]


def ecgqa_commands(block: str) -> list[list[str]]:
    """The argument lists after `ecgqa` (or `python -m ecgqa`, `torchrun ... -m ecgqa`) in a shell block."""
    text = re.sub(r"\\\n", " ", block)  # continuation lines
    commands = []
    for line in text.splitlines():
        if line.lstrip().startswith(("python - <<", "import ", "from ", "with ", "for ", "f.write")):
            continue
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # a heredoc body or prose: not a command line
            continue
        # split on shell operators that shlex leaves as words
        current: list[str] = []
        pieces = []
        for tok in tokens:
            if tok in ("&&", "||", "|", ";", "&"):
                pieces.append(current)
                current = []
            else:
                current.append(tok.rstrip("&;") if tok.endswith(("&", ";")) and len(tok) > 1 else tok)
        pieces.append(current)
        for piece in pieces:
            for i, tok in enumerate(piece):
                if tok == "ecgqa" and (i == 0 or piece[i - 1] == "-m"):
                    commands.append(piece[i + 1 :])
                    break
    return commands


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse with the real parser, without running; an argparse error becomes an assertion with its message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return build_parser().parse_args(argv)
    except SystemExit as e:
        raise AssertionError(f"`ecgqa {shlex.join(argv)}` does not parse: {err.getvalue().strip()}") from e


ALL_COMMANDS = [(page.relative_to(ROOT).as_posix(), argv) for page in PAGES for b in shell_blocks(page)
                for argv in ecgqa_commands(b)]  # fmt: skip


def test_the_pages_show_commands():
    """The extraction finds the commands (a broken extractor would make the next test pass vacuously)."""
    readme = [argv for page, argv in ALL_COMMANDS if page == "README.md"]
    assert len(readme) >= 12
    named = {argv[0] for _, argv in ALL_COMMANDS if argv and not argv[0].startswith("-")}
    assert named >= set(SUBCOMMANDS), f"no page shows {sorted(set(SUBCOMMANDS) - named)}"


@pytest.mark.parametrize("page,argv", ALL_COMMANDS, ids=[f"{p}:{' '.join(a[:3])}" for p, a in ALL_COMMANDS])
def test_every_shown_command_parses(page, argv):
    assert argv, f"{page}: a bare `ecgqa` with no subcommand"
    if argv[0] in ("--version", "--help", "-h"):
        return
    assert argv[0] in SUBCOMMANDS, f"{page}: `ecgqa {argv[0]}` is no subcommand (known: {sorted(SUBCOMMANDS)})"
    args = parse(argv)
    assert args.command == argv[0] and callable(args.func)


def test_help_of_every_named_subcommand():
    """`ecgqa SUB --help` prints a usage line for every subcommand the README names, pending ones aside."""
    text = README.read_text(encoding="utf-8")
    named = set(re.findall(r"`ecgqa ([a-z][a-z-]*)", text)) | {argv[0] for p, argv in ALL_COMMANDS if argv}
    named -= PENDING_COMMANDS | {"--version"}
    unknown = named - set(SUBCOMMANDS)
    assert not unknown, f"the README names commands that do not exist: {sorted(unknown)}"
    for sub in sorted(named):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
            build_parser().parse_args([sub, "--help"])
        assert e.value.code == 0 and out.getvalue().startswith(f"usage: ecgqa {sub} ")


# Arguments that name something a command reads (the rest are options or outputs).
INPUTS = ("data", "checkpoint", "grounding", "attributes", "answers", "mapped_dir", "reports", "init_from", "record")


def test_readme_workflow_is_one_running_example():
    """The first block of "The workflow in a dozen commands": every folder or file a command reads was written by
    an earlier command of the block (its --out, or a file inside it), and there is one prepared folder name."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## The workflow in a dozen commands", 1)[1]
    block = FENCE.search(section).group(2)
    commands = ecgqa_commands(block)
    assert 10 <= len(commands) <= 14, f"the workflow shows {len(commands)} commands"
    written: list[str] = []
    for argv in commands:
        args = parse(argv)
        for name in INPUTS:
            value = getattr(args, name, None)
            for path in value if isinstance(value, list) else [value]:
                if not isinstance(path, (str, Path)):
                    continue
                path = str(path)
                assert any(path == w or path.startswith(w + "/") for w in written), (
                    f"`ecgqa {shlex.join(argv)}` reads {path}, which no earlier command of the workflow wrote "
                    f"(written so far: {written})"
                )
        if getattr(args, "out", None):
            written.append(str(args.out))
    data = {str(parse(argv).data) for argv in commands if getattr(parse(argv), "data", None)}
    assert data == {"runs/prepared", "runs/prepared-upperbound"}, data


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces → hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(m) for m in re.findall(r"^#{1,6}\s+(.*?)\s*#*$", text, re.M)}


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    return [a or b for a, b in LINK.findall(text)]


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_relative_links_resolve(page):
    if page == README:
        assert len(links(page)) > 20, "the README's links were not found: the extractor is broken"
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, …
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
        if not dest.exists():
            if rel not in PENDING_FILES:
                broken.append(f"{target} (no {rel})")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {rel})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= 350, f"README.md has {n} lines; details belong in docs/ pages"
