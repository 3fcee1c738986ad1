"""``train`` / ``pretrain --out``: a folder is a run only by this tool's marker, one run at a time holds it, and
``--resume`` continues only what matches (issue 24, items 1-5: each repro of the issue, run for real)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from ecgqa.cli import main
from ecgqa.data.prepare import prepare
from ecgqa.training.trainer import LOCK_FILE, RunLock


def _train(data: Path, out: Path, *extra: str, model: str = "fusion-small") -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--model",
        model,
        "--tiny",
        "--out",
        str(out),
        "--eval-split",
        "none",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--threads",
        "1",
        "-q",
        *extra,
    ]


def test_a_users_folder_with_checkpoints_is_not_a_run(prepared_qa, tmp_path, capsys):
    """Repro 1: `mkdir -p my/checkpoints my/tokenizer; echo x > my/checkpoints/epoch-10.ckpt; echo '{}' >
    my/config.json; ecgqa train ... --out my` deleted those files; a symlink to such a folder too."""
    mine = tmp_path / "my"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "tokenizer").mkdir()
    (mine / "checkpoints" / "epoch-10.ckpt").write_text("x")
    (mine / "config.json").write_text("{}")
    (tmp_path / "link").symlink_to(mine)
    forged = tmp_path / "forged"  # a marker file of another tool (no format of ours) proves nothing either
    (forged / "checkpoints").mkdir(parents=True)
    (forged / "train_run.json").write_text('{"model": "x"}')
    (forged / "train_options.json").write_text("{}")
    for out in (mine, tmp_path / "link", forged):
        assert main(_train(prepared_qa, out, "--max-steps", "1")) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out {out} ") and "Traceback" not in err, err
        pretrain = ["pretrain", "--data", str(prepared_qa), "--model", "w2v-cmsc-rlm-test", "--out", str(out)]
        assert main([*pretrain, "--max-steps", "1", "-q"]) == 2
        assert capsys.readouterr().err.startswith(f"error: --out {out} ")
    assert (mine / "checkpoints" / "epoch-10.ckpt").read_text() == "x" and (mine / "config.json").read_text() == "{}"
    assert (mine / "tokenizer").is_dir() and (forged / "train_options.json").is_file()


@pytest.fixture(scope="module")
def prepared_qa_100(tmp_path_factory, mapped_sample) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "qa-100"
    prepare(mapped_sample, out, variant="template", task="qa", rate=100, progress=False)
    return out


@pytest.mark.slow  # two tiny runs of 4 updates
def test_resume_checks_first_and_a_finished_run_is_not_trained_again(prepared_qa, prepared_qa_100, tmp_path, capsys):
    """Repro 2: a 500 Hz run resumed with --data at 100 Hz trained on; repro 5: the failed resume had already
    trimmed metrics.jsonl; repro 3: --resume of a finished run trained past --max-steps."""
    run = tmp_path / "run"
    assert main(_train(prepared_qa, run, "--max-steps", "4", "--logging-steps", "1")) == 0
    capsys.readouterr()
    final = load_file(run / "model.safetensors")
    # a kill after checkpoint-4 was saved could leave later lines; they must survive a refused resume
    log = run / "metrics.jsonl"
    with log.open("a") as f:
        f.write(json.dumps({"step": 5, "loss": 9.9}) + "\n")
    before = log.read_bytes()

    assert main(_train(prepared_qa_100, run, "--max-steps", "4", "--resume")) == 2
    err = capsys.readouterr().err
    assert "holds 100 Hz x 1000 samples" in err and "trained on 500 Hz x 5000 samples" in err, err
    assert log.read_bytes() == before, "a refused --resume changed metrics.jsonl"
    other = tmp_path / "other"  # --resume PATH of a checkpoint of the 100 Hz data: refused the same way
    assert main(_train(prepared_qa_100, other, "--max-steps", "2", "--save-total-limit", "1")) == 0
    assert main(_train(prepared_qa, run, "--max-steps", "4", "--resume", str(other / "checkpoints/checkpoint-2"))) == 2
    assert "100 Hz" in capsys.readouterr().err and log.read_bytes() == before

    # repro 4's other half: a lock left by a dead process is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / LOCK_FILE).write_text(f"{dead.stdout.strip()} somehost\n")
    assert main(_train(prepared_qa, run, "--max-steps", "4", "--resume")) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-4"]  # no update past 4
    options = json.loads((run / "train_options.json").read_text())
    assert options["global_step"] == 4
    assert max(json.loads(line)["step"] for line in log.read_text().splitlines()) == 4  # trimmed once resumed
    again = load_file(run / "model.safetensors")
    assert again.keys() == final.keys() and all((again[k] == final[k]).all() for k in final)
    assert not (run / LOCK_FILE).exists()


def test_a_second_run_on_one_folder_is_refused_naming_the_first(prepared_qa, tmp_path, capsys):
    """Repro 4: two runs on one folder logged every line twice; the second is refused with the first's pid.
    (flock locks belong to an open file, so a lock held here conflicts with the run's own open as another
    process's would.)"""
    out = tmp_path / "run"
    with RunLock(out):
        assert main(_train(prepared_qa, out, "--max-steps", "1")) == 2
        err = capsys.readouterr().err
        assert f"is in use by another run (pid {os.getpid()} on " in err, err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written beside the lock
    assert not out.exists()  # the lock created the folder and removed it: nothing left behind
