"""The package's layout: its rooms, the front door's shape, and the old import paths that keep working."""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

import ecgqa
import llm_eval
import mapping
from ecgqa.cli import SUBCOMMANDS, build_parser

# The installed packages, not the checkout: scripts/check_wheel.sh runs these tests against the wheel.
PACKAGE = Path(ecgqa.__file__).resolve().parent
ROOT = PACKAGE.parent
ROOMS = {"cli", "data", "models", "training", "evaluation", "serve"}


def test_ls_ecgqa_shows_the_rooms():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert ROOMS <= folders, f"missing rooms: {sorted(ROOMS - folders)}"
    # no module is left at an old flat path (it would shadow the MOVED alias and split the code in two)
    for old in ecgqa.MOVED:
        rel = Path(*old.split(".")[1:])
        assert not (PACKAGE / rel.with_suffix(".py")).exists() and not (PACKAGE / rel).is_dir(), f"{old} still exists"


# The paths users imported before the rooms, with the module or attribute they must still reach.
OLD_PATHS = sorted(ecgqa.MOVED.items())


@pytest.mark.parametrize("old,new", OLD_PATHS, ids=[old for old, _ in OLD_PATHS])
def test_old_import_path_warns_and_reaches_the_new_module(old, new):
    saved = sys.modules.pop(old, None)
    try:
        with pytest.warns(DeprecationWarning, match=rf"{old} moved to {new}\b"):
            module = importlib.import_module(old)
        assert module is importlib.import_module(new)
    finally:
        if saved is not None:
            sys.modules[old] = saved


def test_old_names_users_imported_still_work():
    """The forms a user's script had: `from ecgqa.prepared import PreparedData`, `from ecgqa.data import
    ECGQADataset` (ecgqa.data was a module), `ecgqa.checkpoint` (unchanged)."""
    from ecgqa.data.prepared import PreparedData
    from ecgqa.data.torch_datasets import ECGQADataset, make_loader

    for name in ("ecgqa.prepared", "ecgqa.records", "ecgqa.train"):
        sys.modules.pop(name, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from ecgqa.prepared import PreparedData as OldPreparedData
        from ecgqa.records import read_record
        from ecgqa.train import train
    assert OldPreparedData is PreparedData
    assert read_record is importlib.import_module("ecgqa.data.records").read_record
    assert train is importlib.import_module("ecgqa.training.train").train
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert any("ecgqa.data.prepared" in m for m in messages), messages

    for name, obj in (("ECGQADataset", ECGQADataset), ("make_loader", make_loader)):
        with pytest.warns(DeprecationWarning, match=rf"ecgqa\.data\.torch_datasets\.{name}"):
            assert getattr(importlib.import_module("ecgqa.data"), name) is obj
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = importlib.import_module("ecgqa.data").nothing

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checkpoint contract never moved: no warning
        from ecgqa.checkpoint import check_compatible, load_checkpoint  # noqa: F401


def _top_level(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


CLI_MODULES = sorted(p for p in (PACKAGE / "cli").glob("*.py") if p.name not in ("__init__.py", "common.py"))


def test_every_cli_module_is_a_subcommand():
    registered = {module for module, _ in SUBCOMMANDS.values()}
    present = {f"ecgqa.cli.{p.stem}" for p in CLI_MODULES}
    assert present == registered, f"not in SUBCOMMANDS: {present - registered}; no file: {registered - present}"


@pytest.mark.parametrize("path", CLI_MODULES, ids=[p.stem for p in CLI_MODULES])
def test_cli_module_is_configure_and_run(path):
    """A command module parses and hands over: configure(parser) sets func=run, run(args) calls the stage. Small
    argument helpers may sit beside them; classes and long functions are library logic and belong in a room."""
    tree = _top_level(path)
    functions = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert {"configure", "run"} <= set(functions), f"{path.name} lacks configure or run"
    assert not [n.name for n in tree.body if isinstance(n, ast.ClassDef)], f"{path.name} defines a class"
    assert "set_defaults(func=run)" in path.read_text(encoding="utf-8")
    for name, node in functions.items():
        if name not in ("configure", "run", "main"):
            length = node.end_lineno - node.lineno + 1
            assert length <= 40, f"{path.name}: {name} is {length} lines: library logic belongs in its room"


def test_no_library_module_imports_the_cli():
    """Imports run down the pipeline: only the CLI itself and the `python -m` aliases reach into ecgqa.cli."""
    offenders = []
    for path in [
        *PACKAGE.rglob("*.py"),
        *Path(mapping.__file__).parent.glob("*.py"),
        *Path(llm_eval.__file__).parent.glob("*.py"),
    ]:
        if (PACKAGE / "cli") in path.parents or path.name == "__main__.py":
            continue
        for node in ast.walk(_top_level(path)):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n == "ecgqa.cli" or n.startswith("ecgqa.cli.") for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"library modules importing the CLI: {offenders}"


def test_the_light_constants_the_cli_offers_match_the_stage():
    """`ecgqa prepare`'s parser takes its choices from ecgqa/data/constants.py (so it never imports the stage):
    they must be the stage's own tables."""
    from ecgqa.data import constants, prepare

    assert tuple(prepare.TASKS) == constants.TASK_NAMES
    assert prepare.DEFAULT_RATE == constants.DEFAULT_RATE and prepare.TOKENIZERS == constants.TOKENIZERS
    choices = {a.dest: a.choices for a in build_parser()._subparsers._group_actions[0].choices["prepare"]._actions}
    assert tuple(choices["task"]) == tuple(prepare.TASKS) and tuple(choices["tokenizer"]) == prepare.TOKENIZERS
