"""``ecgqa train``'s own failures while saving and resuming are one line naming the folder or file and the fix
(issue 24): a full disk (torch says ``unexpected pos 704 vs 598``), a saved state the safe loader refuses
(torch suggests ``weights_only=False``, which would run the file's code)."""

from __future__ import annotations

import argparse
import errno
import io
import resource
import signal

import pytest
import torch

from ecgqa.cli import main


def _train(prepared, out, *extra) -> int:
    return main(
        ["train", "--data", str(prepared), "--model", "se-wrn-test", "--out", str(out), "--max-steps", "2"]
        + ["--workers", "0", "-q", *extra]
    )


class _FullDisk(io.RawIOBase):
    """A file on a full disk: every write fails with ENOSPC."""

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def _short_writes(real_save):
    """torch.save to a path whose writes come up short (the OS's file-size limit, RLIMIT_FSIZE, set for the call):
    torch's C++ writer then fails as on a full disk, with "unexpected pos 704 vs 598"."""

    def save(obj, f, *args, **kwargs):
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256, hard))
        try:
            return real_save(obj, f, *args, **kwargs)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, previous)

    return save


@pytest.mark.parametrize("failure", [pytest.param("short-write", marks=pytest.mark.slow), "enospc"])
def test_a_full_disk_while_saving_is_one_line_naming_the_folder(
    failure, prepared_upperbound, tmp_path, monkeypatch, capsys
):
    real_save = torch.save
    if failure == "short-write":
        monkeypatch.setattr(torch, "save", _short_writes(real_save))
    else:
        monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: real_save(obj, _FullDisk(), *a, **k))
    out = tmp_path / "run"
    assert _train(prepared_upperbound, out) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]  # earlier lines are notes (the empty valid split)
    assert last.startswith(f"error: could not save the training state in {out / 'checkpoints'}: no space left"), err
    assert "--resume" in last and "unexpected pos" not in err


def test_a_refused_state_file_names_it_and_never_suggests_unsafe_loading(prepared_upperbound, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(prepared_upperbound, out) == 0
    capsys.readouterr()
    saved = sorted((out / "checkpoints").glob("checkpoint-*"))
    assert saved, list(out.iterdir())
    forged = sorted(saved[-1].glob("rng_state*.pth"))[0]
    torch.save({"python": argparse.Namespace(cmd="echo owned")}, forged)  # a class the safe loader refuses
    assert _train(prepared_upperbound, out, "--resume", "--max-steps", "4") == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    assert err.splitlines()[-1].startswith(f"error: {forged}: refused to load")
    assert "weights_only" not in err and "new --out" in err


@pytest.mark.slow  # two pretraining runs
def test_pretrain_names_a_refused_state_file_too(prepared_qa, tmp_path, capsys):
    out = tmp_path / "pre"

    def pretrain(*extra) -> int:
        return main(
            ["pretrain", "--data", str(prepared_qa), "--model", "w2v-cmsc-rlm-test", "--batch-size", "4"]
            + ["--out", str(out), "-q", *extra]
        )

    assert pretrain("--max-steps", "2") == 0
    forged = sorted((out / "checkpoints").glob("checkpoint-*/rng_state*.pth"))[-1]
    torch.save({"python": argparse.Namespace(cmd="echo owned")}, forged)
    capsys.readouterr()
    assert pretrain("--max-steps", "4", "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "weights_only" not in err, err
    assert err.splitlines()[-1].startswith(f"error: {forged}: refused to load")
