"""What ``ecgqa train`` shows a person: one progress bar, evaluations as a table, an estimate of the run's time
and memory, no raw log dicts, no library chatter unless ``-v`` (issue 23; issue 24's estimate)."""

from __future__ import annotations

import re

import pytest

from ecgqa.cli import main


@pytest.mark.slow  # two tiny runs of 6 updates
def test_a_tiny_run_prints_a_table_not_raw_dicts(prepared_qa, tmp_path, capsys):
    argv = ["train", "--data", str(prepared_qa), "--model", "fusion-small", "--tiny", "--batch-size", "8"]
    argv += ["--max-steps", "6", "--eval-steps", "3", "--logging-steps", "1", "--workers", "0", "--threads", "1"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    out, err = capsys.readouterr()
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["step", "epoch", "eval", "loss", "EM"]
    assert [r[0] for r in rows[1:3]] == ["3", "6"] and all(re.fullmatch(r"\d+\.\d%", r[3]) for r in rows[1:3])
    assert re.search(r"^trained 6 steps in \d+ s, mean train loss \d\.\d+$", out, re.M)
    for raw in ("{'", "eval_loss", "train_runtime", "Writing model shards", "Warning"):
        assert raw not in out + err, raw
    assert re.search(r"fusion-test: 100%\|.*6/6 .*loss=\d\.\d+, EM=\d+\.\d%\]", err)  # the bar's postfix
    (estimate,) = [line for line in err.splitlines() if line.startswith("estimate: ")]
    assert re.fullmatch(
        r"estimate: 6 steps x [\d.e+-]+ s/step \(measured over 3 steps\) = \d+ s; peak memory [\d.]+ GiB .*", estimate
    )
    assert main([*argv, "--out", str(tmp_path / "quiet"), "-q"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"checkpoint: {tmp_path / 'quiet'} (load it with ecgqa.load({str(tmp_path / 'quiet')!r}))"
    ]
    assert err == ""


@pytest.mark.slow  # times three tiny updates
def test_dry_run_measures_time_per_update_and_warns_about_a_long_run(prepared_qa, tmp_path, capsys):
    argv = ["train", "--data", str(prepared_qa), "--model", "fusion-small", "--tiny", "--batch-size", "8"]
    argv += ["--grad-accum", "2", "--max-steps", "10000000", "--out", str(tmp_path / "run"), "--dry-run"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    estimate = next(line for line in lines if line.startswith("estimate: "))
    found = re.fullmatch(
        r"estimate: 10000000 steps x ([\d.e+-]+) s/step \(measured over 2 batches of 8, x grad-accum 2\) = "
        r"([\d.]+) h; peak memory [\d.]+ GiB .*",
        estimate,
    )
    assert found and float(found[2]) == pytest.approx(1e7 * float(found[1]) / 3600, rel=0.01), estimate
    assert lines[-1].startswith(f"warning: this run will take about {found[2]} h on this device")
    assert not (tmp_path / "run").exists()  # nothing kept


@pytest.mark.slow  # trains the qa_checkpoint fixture
def test_evaluate_defaults_to_the_split_there_is_and_takes_threads(qa_checkpoint, prepared_qa, tmp_path, capsys):
    """The bundled sample has no test split: evaluate used to fail on its default --split test."""
    import torch

    before = torch.get_num_threads()
    argv = ["evaluate", "--checkpoint", str(qa_checkpoint), "--data", str(prepared_qa), "--limit", "4"]
    assert main([*argv, "--out", str(tmp_path / "r"), "--threads", "1"]) == 0
    out, err = capsys.readouterr()
    assert "has no 'test' split (it holds train, valid): using 'valid'" in err
    assert " on valid (4 samples): EM " in out
    torch.set_num_threads(before)
    for command in (argv, ["train", "--data", str(prepared_qa), "--model", "blind"]):
        assert main([*command, "--out", str(tmp_path / "x"), "--threads", "0"]) == 2
        assert "error: --threads 0: must be a positive integer" in capsys.readouterr().err


def test_default_splits_follow_the_data(tmp_path, capsys):
    """--train-split / --eval-split defaults against the splits a prepared folder has (said on stderr)."""
    from types import SimpleNamespace

    from ecgqa.training.train import resolve_splits
    from ecgqa.training.trainer import TrainConfig

    def resolved(splits, **kw):
        config = TrainConfig(data=tmp_path, model="se-wrn", out=tmp_path / "o", **kw)
        resolve_splits(config, SimpleNamespace(splits=splits))
        return config.train_split, config.eval_split, capsys.readouterr().err

    assert resolved(["train", "valid", "test"])[:2] == ("train", "valid")
    train, valid, err = resolved(["train", "test"])
    assert (train, valid) == ("train", None) and "no 'valid' split; training without periodic evaluation" in err
    train, valid, err = resolved(["valid"])
    assert (train, valid) == ("valid", None) and "has one split, 'valid': training on it" in err
    with pytest.raises(ValueError, match=r"has no split 'dev'; it holds \['train', 'valid'\]"):
        resolved(["train", "valid"], eval_split="dev")
