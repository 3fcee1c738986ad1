"""Every command's OS-level failures are one line naming the path and the fix, never a traceback (issue 24)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from ecgqa.cli import main
from ecgqa.cli.common import dispatch


@pytest.fixture(scope="module")
def unwritable(tmp_path_factory) -> Path:
    """An ``--out`` this user cannot create: under a folder without write permission (as root, which ignores
    permission bits, under /sys, where even root may not make folders)."""
    if os.geteuid() == 0:
        parent = Path("/sys/ecgqa-test-unwritable")
    else:
        parent = tmp_path_factory.mktemp("readonly")
        parent.chmod(0o500)
    try:
        (parent / "probe").mkdir(parents=True)
    except PermissionError:
        return parent / "out"
    pytest.skip(f"{parent} is writable here; no unwritable folder to test with")


def _commands(out: Path, prepared: Path, checkpoint: Path, sample, answers: Path) -> dict[str, list[str]]:
    record = sample.ptbxl_records / "records500" / "00000" / "00002_hr"
    return {
        "map": ["map", "ptbxl", "--out", str(out), "-q"],
        "render": ["render", str(record), "--out", str(out / "ecg.png")],
        "train": ["train", "--data", str(prepared), "--model", "fusion-test", "--max-steps", "1", "--out", str(out)],
        "pretrain": ["pretrain", "--data", str(prepared), "--max-steps", "1", "--out", str(out), "-q"],
        "evaluate": ["evaluate", "--checkpoint", str(checkpoint), "--data", str(prepared), "--split", "valid"]
        + ["--out", str(out)],
        "llm-eval": ["llm-eval", "--data", str(prepared), "--split", "valid", "--model", "m", "--out", str(out)]
        + ["--input", "features", "--dry-run", "-q"],
        "score": ["score", "--data", str(prepared), "--split", "valid", "--answers", str(answers), "--out", str(out)]
        + ["--missing", "skip"],
    }


@pytest.mark.parametrize("command", ["map", "render", "train", "pretrain", "evaluate", "llm-eval", "score"])
def test_an_unwritable_out_is_one_line_naming_it(
    command, unwritable, prepared_qa, qa_checkpoint, sample_paths, tmp_path, capsys
):
    from ecgqa.data.prepared import PreparedData

    answers = tmp_path / "answers.jsonl"
    first = PreparedData(prepared_qa).split("valid")[0]["sample_id"]
    answers.write_text(json.dumps({"sample_id": first, "reply": "yes"}) + "\n")
    argv = _commands(unwritable, prepared_qa, qa_checkpoint, sample_paths, answers)[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith("error: cannot write "), err  # earlier lines say which defaults were used
    assert str(unwritable.parent) in err[-1] and "--out" in err[-1]


def _raise(error: BaseException):
    def func(args):
        raise error

    return func


@pytest.mark.parametrize(
    "error, words",
    [
        (
            OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run/config.json"),
            "cannot write /mnt/ro/run/config.json",
        ),
        (PermissionError(errno.EACCES, "Permission denied", "/nonexistent/out"), "choose an --out folder"),
    ],
)
def test_refused_writes_name_the_path_and_the_fix(error, words, capsys):
    import argparse

    assert dispatch(argparse.Namespace(func=_raise(error))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err


def test_a_refused_read_says_read(tmp_path, capsys):
    import argparse

    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    secret.chmod(0o000)
    if os.access(secret, os.R_OK):  # root reads anything: the path exists, so say "read" only when unreadable
        pytest.skip("this user reads files without permission (root)")
    error = PermissionError(errno.EACCES, "Permission denied", str(secret))
    assert dispatch(argparse.Namespace(func=_raise(error))) == 2
    assert "cannot read" in capsys.readouterr().err


def test_paths_of_the_wrong_kind_are_one_line(tmp_path, prepared_qa, sample_paths, monkeypatch, capsys):
    """A folder where a file goes, a file where a folder goes, a mount point an output is renamed onto: each
    is one line naming the path, never a traceback (found by trying the commands: records-needed / report
    --out DIR, --out FILE/sub, map --out MOUNT)."""
    import argparse

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("x")
    cases = {
        ("records-needed", "ptbxl", str(sample_paths.release), "--out", "a_folder", "-q"): (
            "cannot write a_folder: it is a folder"
        ),
        ("map", "ptbxl", "--out", "a_file/mapped", "-q"): "cannot write under a_file: it is a file, not a folder",
        ("render", "--data", str(prepared_qa), "--ecg-id", "2", "--out", "a_file/x.png"): "a_file: it is a file",
    }
    for argv, words in cases.items():
        assert main(list(argv)) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert "Traceback" not in "\n".join(err) and words in err[-1], err
    assert (tmp_path / "a_file").read_text() == "x" and not any((tmp_path / "a_folder").iterdir())
    busy = OSError(errno.EBUSY, "Device or resource busy", "/mnt/volume")
    assert dispatch(argparse.Namespace(func=_raise(busy))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "/mnt/volume (Device or resource busy): it is a mount point" in err, err
