"""One-line errors for what goes wrong inside a training run's saving and resuming (issue 24).

``transformers.Trainer`` saves and restores its state with ``torch.save`` / ``torch.load``; their own errors
are cryptic for a full disk (``[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598``) and,
for a state file the safe loader refuses, suggest loading it with ``weights_only=False`` — which would run
whatever code the file holds. :func:`clear_error` turns both into one line naming the folder or file and the
fix; ``run_or_restore`` in ``ecgqa/training/trainer.py`` (``ecgqa train`` and ``ecgqa pretrain``) raises it in
place of the original.
"""

from __future__ import annotations

import os
import pickle
import traceback
from pathlib import Path

from ecgqa.files import disk_full

#: What torch's zip writer says when a write comes up short (ENOSPC, EDQUOT, EIO): it names no errno.
_TORCH_WRITE_FAILED = ("unexpected pos", "file write failed", "PytorchStreamWriter failed", "No space left")


def _torch_load_path(error: BaseException) -> Path | None:
    """The file ``torch.load`` was reading when ``error`` was raised (its ``f`` argument), if it was a path."""
    found = None
    for frame, _ in traceback.walk_tb(error.__traceback__):
        if frame.f_code.co_name == "load" and frame.f_globals.get("__name__") == "torch.serialization":
            f = frame.f_locals.get("f")
            if isinstance(f, (str, os.PathLike)):
                found = Path(f)
    return found


def clear_error(error: BaseException, out: Path, resume_from: str | None) -> Exception | None:
    """A one-line error for ``error`` raised by ``Trainer.train`` of the run in ``out``, or None to keep it."""
    if isinstance(error, pickle.UnpicklingError) and "weights_only" in str(error):
        where = _torch_load_path(error) or Path(resume_from or out)
        folder = where.parent if where.is_file() else where
        return ValueError(
            f"{where}: refused to load this saved training state: it holds Python objects other than tensors and "
            "plain numbers, which ecgqa never writes (a file from another tool or version, or altered). Delete "
            f"{folder} to resume from the checkpoint before it, or start the run afresh in a new --out"
        )
    if disk_full(error) or (isinstance(error, RuntimeError) and any(s in str(error) for s in _TORCH_WRITE_FAILED)):
        return RuntimeError(
            f"could not save the training state in {Path(out) / 'checkpoints'}: no space left on the device (or a "
            "disk quota or file size limit was reached). Free some space, then continue with the same command plus "
            "--resume "
            "(the newest complete checkpoint is kept; a half-written one is skipped)"
        )
    return None


__all__ = ["clear_error"]
