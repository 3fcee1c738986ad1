"""Small file-system primitives every stage uses to write its outputs safely (one place for each).

- ``atomic_write`` / ``atomic_write_json`` / ``AtomicLines``: a whole file appears at once or not at
  all (temporary sibling, fsync, ``os.replace``), with the mode a plain ``open()`` would give
  (``0o666 & ~umask``), never the 0600 of ``tempfile.mkstemp``: a shared data folder stays readable.
- ``claim_output_dir``: a command only replaces an output folder it can prove it wrote (it holds the
  command's marker file) or an empty one; anything else is refused with a message saying what is there.
- ``staging_dir`` + ``swap_dir``: build a whole output folder beside its final place and swap it in
  with one rename, so readers see the old folder or the new one, never a mix.
- ``clean_stale`` / ``recover_output``: remove staging folders of runs that died (and put back an output
  a killed fallback swap had moved aside).
- ``sha256_file``: the one file hash.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO


class OutputDirError(ValueError):
    """``--out`` points at something this command did not write; the message says what and how to proceed."""


# --------------------------------------------------------------------------------------- file modes


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # fallback: set and restore (not thread-safe, hence only a fallback)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """What ``open(path, "w")`` would create: 0o666 minus the umask (0644 under umask 022)."""
    return 0o666 & ~current_umask()


def apply_umask(folder: str | Path) -> None:
    """Give every file and folder under ``folder`` the mode ``open``/``mkdir`` would (umask honoured).

    For outputs written by libraries that pick their own mode (safetensors writes 0600): without this a
    second user of a shared run folder could not read its checkpoints.
    """
    mask = current_umask()
    root = Path(folder)
    os.chmod(root, 0o777 & ~mask)
    for path in root.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


# ------------------------------------------------------------------------------------ atomic writes


def _temp_sibling(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, default_file_mode())
    return fd, tmp


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write a whole file through a temporary sibling and a rename: a crash never leaves half of it,
    and a failed write (e.g. a full disk) leaves the previous file untouched."""
    path = Path(path)
    fd, tmp = _temp_sibling(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 1) -> Path:
    """``atomic_write`` of ``json.dumps(obj)``: same object (same key order) → same bytes."""
    return atomic_write(path, json.dumps(obj, indent=indent) + ("\n" if indent is not None else ""))


class AtomicLines:
    """A JSONL file written line by line into a temporary sibling, renamed into place on success.

    ``with AtomicLines(path) as write: write({"a": 1})`` — calling the object writes one JSON line;
    ``.write_line(text)`` writes a raw line. On an exception the temporary file is removed and the
    previous file at ``path`` (if any) is left as it was.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._tmp: str | None = None
        self._file: TextIO | None = None

    def __enter__(self) -> AtomicLines:  # noqa: PYI034 - a final class
        fd, self._tmp = _temp_sibling(self.path)
        self._file = os.fdopen(fd, "w")
        return self

    def __call__(self, record: Any) -> None:
        self.write_line(json.dumps(record))

    def write_line(self, line: str) -> None:
        assert self._file is not None, "AtomicLines is used as a context manager"
        self._file.write(line + "\n")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._file is not None and self._tmp is not None
        try:
            if exc_type is None:
                self._file.flush()
                os.fsync(self._file.fileno())
            self._file.close()
            if exc_type is None:
                os.replace(self._tmp, self.path)
        finally:
            Path(self._tmp).unlink(missing_ok=True)  # no-op after a successful replace


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (bounded memory)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------ output folders


def _describe(out: Path, limit: int = 5) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    shown = ", ".join(names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{len(names)} entries ({shown}{more})"


def marker_kind(*kinds: str) -> Callable[[Path], bool]:
    """An ``is_ours`` for :func:`claim_output_dir`: the marker file is a JSON object whose ``"kind"`` is one
    of ``kinds`` (an unreadable or foreign marker is not ours)."""

    def is_ours(marker: Path) -> bool:
        try:
            return json.loads(marker.read_text()).get("kind") in kinds
        except (OSError, ValueError, AttributeError):
            return False

    return is_ours


def claim_output_dir(out: str | Path, *, marker: str, what: str, is_ours: Callable[[Path], bool] | None = None) -> Path:
    """Check that ``out`` may be replaced by this command's output, else raise ``OutputDirError``.

    Allowed: ``out`` is absent, an empty folder, or a folder holding ``marker`` (the file this command
    writes last, proving it made the folder; ``is_ours(marker_path)`` may check its content too).
    Refused: a file, a folder with anything else in it, and the current folder or one of its parents
    (it cannot be swapped away under the shell). Nothing is modified here.
    """
    out = Path(out)
    hint = f"choose a new folder for the {what} (e.g. a subfolder), or move the existing one away"
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        kind = "a symbolic link" if out.is_symlink() else "a file"
        raise OutputDirError(f"--out {out} is {kind}, not a {what} folder; {hint}")
    if not out.exists():
        return out
    resolved, cwd = out.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise OutputDirError(
            f"--out {out} is the current folder (or one of its parents), which cannot be replaced; "
            f"give the name of a new folder for the {what} instead"
        )
    if not any(out.iterdir()):
        return out
    mark = out / marker
    if mark.is_file() and (is_ours is None or is_ours(mark)):
        return out
    why = f"its {marker} was not written by this tool" if mark.is_file() else f"no {marker}"
    raise OutputDirError(
        f"--out {out} already holds {_describe(out)} but {why}, so it is not a {what} this tool "
        f"wrote and will not be replaced; {hint}"
    )


def staging_dir(out: str | Path, tag: str = "build") -> Path:
    """A fresh, empty sibling ``.NAME.<tag>-PID`` of ``out`` to build the whole output in.

    Created with ``mkdir`` (mode from the umask, unlike ``tempfile.mkdtemp``'s 0700), on the same
    file system as ``out`` so ``swap_dir`` is one rename.
    """
    out = Path(out)
    if out.is_dir() and os.path.ismount(out):  # checked before the work, not at the final rename (EBUSY)
        raise OutputDirError(
            f"--out {out} is a mount point: the output is built beside it and renamed into place, which a "
            f"mount point cannot take; give a new folder inside it instead (e.g. {out / 'run'})"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    build = out.parent / f".{out.name}.{tag}-{os.getpid()}"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    return build


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_dir(build: str | Path, out: str | Path) -> None:
    """Put the finished folder ``build`` at ``out`` in one rename; the previous ``out`` is deleted after.

    Call only after ``claim_output_dir(out)`` accepted ``out``. Where the kernel supports it the two
    folders are exchanged atomically (readers see old or new, never neither); elsewhere the old folder
    is renamed aside to ``.NAME.old-PID`` first (which ``clean_stale`` removes if we die in between).
    """
    build, out = Path(build), Path(out)
    if not out.exists():
        os.replace(build, out)
        return
    if _exchange(build, out):
        shutil.rmtree(build, ignore_errors=True)  # build now holds the previous output
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    os.replace(build, out)
    shutil.rmtree(old, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(parent: str | Path, prefix: str) -> list[Path]:
    """Remove ``parent/<prefix>…-PID`` leftovers of runs whose process is gone (or is us); returns them.

    A folder of a run still in progress (live pid) is left alone.
    """
    parent = Path(parent)
    removed = []
    if not parent.is_dir():
        return removed
    for stale in parent.glob(f"{prefix}*"):
        try:
            pid = int(stale.name.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or not _pid_alive(pid):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


def recover_output(out: str | Path) -> list[Path]:
    """Before building ``out``: undo a swap cut short, then remove leftovers of dead runs.

    If a run died between the two renames of ``swap_dir``'s fallback, ``out`` is absent and the
    previous output waits at ``.NAME.old-PID``: it is renamed back. Then the dead runs'
    ``.NAME.build-PID`` / ``.NAME.old-PID`` folders are removed (``clean_stale``); returns those.
    """
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        for old in sorted(out.parent.glob(f".{out.name}.old-*")):
            try:
                pid = int(old.name.rsplit("-", 1)[1])
            except (IndexError, ValueError):
                continue
            if pid != os.getpid() and not _pid_alive(pid) and old.is_dir():
                os.replace(old, out)
                break
    return clean_stale(out.parent, f".{out.name}.build-") + clean_stale(out.parent, f".{out.name}.old-")


def disk_full(error: BaseException) -> bool:
    """Whether an exception is "no space left" (ENOSPC) or "quota exceeded" (EDQUOT)."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


__all__ = [
    "AtomicLines",
    "OutputDirError",
    "apply_umask",
    "atomic_write",
    "atomic_write_json",
    "claim_output_dir",
    "clean_stale",
    "current_umask",
    "default_file_mode",
    "disk_full",
    "recover_output",
    "sha256_file",
    "staging_dir",
    "swap_dir",
]
