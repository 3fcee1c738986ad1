"""ecgqa.files: atomic writes with the umask's mode, output-folder claims, one-rename swaps."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from ecgqa import files
from ecgqa.files import (
    AtomicLines,
    OutputDirError,
    atomic_write,
    atomic_write_json,
    claim_output_dir,
    clean_stale,
    sha256_file,
    staging_dir,
    swap_dir,
)


@pytest.fixture
def umask():
    """Set a umask for one test and restore the previous one."""
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    atomic_write(tmp_path / "a.txt", "x")
    atomic_write_json(tmp_path / "b.json", {"k": 1})
    with AtomicLines(tmp_path / "c.jsonl") as write:
        write({"k": 1})
    open(tmp_path / "plain", "w").close()  # what open() gives under this umask: the reference
    assert _mode(tmp_path / "plain") == expected
    for name in ("a.txt", "b.json", "c.jsonl"):
        assert _mode(tmp_path / name) == expected, name
    assert staging_dir(tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~mask


def test_atomic_write_content_and_no_leftovers(tmp_path):
    p = atomic_write(tmp_path / "sub" / "f.bin", b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    atomic_write_json(tmp_path / "j.json", {"b": [1, 2], "a": None})
    assert json.loads((tmp_path / "j.json").read_text()) == {"b": [1, 2], "a": None}
    with AtomicLines(tmp_path / "l.jsonl") as write:
        write({"i": 1})
        write.write_line("raw")
    assert (tmp_path / "l.jsonl").read_text() == '{"i": 1}\nraw\n'
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["f.bin", "j.json", "l.jsonl", "sub"]


def test_failed_writes_keep_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "keep.txt"
    target.write_text("old")

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OSError) as err:
        atomic_write(target, "new")
    assert files.disk_full(err.value)
    with pytest.raises(RuntimeError), AtomicLines(target) as write:
        write({"x": 1})
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_sha256_file(tmp_path):
    data = os.urandom(3 << 20)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_claim_output_dir(tmp_path, monkeypatch):
    assert claim_output_dir(tmp_path / "new", marker="meta.json", what="prepared directory") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    claim_output_dir(tmp_path / "empty", marker="meta.json", what="prepared directory")
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "meta.json").write_text("{}")
    (ours / "signals.npy").write_text("")
    claim_output_dir(ours, marker="meta.json", what="prepared directory")
    with pytest.raises(OutputDirError, match="its meta.json was not written by this tool"):
        claim_output_dir(ours, marker="meta.json", what="x", is_ours=lambda p: "not ours" == p.read_text())

    mine = tmp_path / "important"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.txt").write_text("my thesis")
    with pytest.raises(OutputDirError) as err:
        claim_output_dir(mine, marker="meta.json", what="prepared directory")
    msg = str(err.value)
    assert "2 entries (sub/, thesis.txt)" in msg and "no meta.json" in msg and "new folder" in msg
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError, match="is a file"):
        claim_output_dir(tmp_path / "file", marker="meta.json", what="prepared directory")
    monkeypatch.chdir(ours)
    with pytest.raises(OutputDirError, match="current folder"):
        claim_output_dir(Path("."), marker="meta.json", what="prepared directory")
    assert (mine / "thesis.txt").read_text() == "my thesis"


@pytest.mark.parametrize("exchange", [True, False])
def test_swap_dir_replaces_the_whole_folder(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.json").write_text("old")
    build = staging_dir(out)
    (build / "new.json").write_text("new")
    swap_dir(build, out)
    assert [p.name for p in out.iterdir()] == ["new.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    fresh = staging_dir(tmp_path / "fresh")
    (fresh / "a").write_text("a")
    swap_dir(fresh, tmp_path / "fresh")
    assert (tmp_path / "fresh" / "a").read_text() == "a"


def test_clean_stale_removes_only_dead_runs(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_pid = int(dead.stdout)
    (tmp_path / f".out.build-{dead_pid}").mkdir()
    (tmp_path / f".out.build-{os.getppid()}").mkdir()  # a live process: left alone
    (tmp_path / ".out.build-notapid").mkdir()
    removed = clean_stale(tmp_path, ".out.build-")
    assert [p.name for p in removed] == [f".out.build-{dead_pid}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".out.build-{os.getppid()}", ".out.build-notapid"])


def test_recover_output_puts_back_an_output_a_killed_swap_moved_aside(tmp_path):
    import subprocess
    import sys

    from ecgqa.files import recover_output

    dead = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
        ).stdout
    )
    aside = tmp_path / f".out.old-{dead}"
    aside.mkdir()
    (aside / "meta.json").write_text("previous")
    (tmp_path / f".out.build-{dead}").mkdir()
    removed = recover_output(tmp_path / "out")
    assert (tmp_path / "out" / "meta.json").read_text() == "previous"
    assert [p.name for p in removed] == [f".out.build-{dead}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # with the output in place, a dead run's aside copy is just a leftover
    aside.mkdir()
    recover_output(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_staging_refuses_a_mount_point_before_any_work():
    """An output folder is built beside ``--out`` and renamed onto it; a mount point (a Docker volume, a
    mounted disk) cannot take that rename (EBUSY), so it is refused up front with a subfolder to use."""
    from ecgqa.files import OutputDirError, staging_dir

    assert os.path.ismount("/proc")
    with pytest.raises(OutputDirError, match=r"--out /proc is a mount point.*/proc/run"):
        staging_dir("/proc")
