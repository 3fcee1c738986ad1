"""``ecgqa train`` and ``ecgqa.load``: checkpoint layout, best-by-EM selection, the predictor API,
resuming an interrupted run, and a 2-process torchrun (gloo, CPU) through the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ecgqa
from ecgqa.data import PreparedData
from ecgqa.models import tiny
from ecgqa.train import train


def _log(ckpt: Path) -> list[dict]:
    return [json.loads(line) for line in (ckpt / "metrics.jsonl").read_text().splitlines()]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


# ------------------------------------------------------------------------------------------ checkpoints


def test_qa_checkpoint_holds_everything_to_answer(qa_checkpoint, prepared_qa):
    config = json.loads((qa_checkpoint / "config.json").read_text())
    meta = json.loads((prepared_qa / "meta.json").read_text())
    assert config["task"] == "qa" and config["model_name"] == "fusion-small"
    assert config["classes"] == meta["classes"] and len(config["classes"]) == 103
    assert (config["rate"], config["signal_length"]) == (meta["rate"], meta["signal_length"]) == (500, 5000)
    assert json.loads((qa_checkpoint / "prepared_meta.json").read_text()) == meta
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(str(qa_checkpoint / "tokenizer"))
    assert saved.get_vocab() == PreparedData(prepared_qa).tokenizer.get_vocab()


def test_best_checkpoint_by_em_is_the_one_saved(qa_checkpoint):
    log = _log(qa_checkpoint)
    evals = {r["step"]: r["eval_em"] for r in log if "eval_em" in r}
    assert sorted(evals) == [4, 8]  # eval every 4 of 8 steps
    assert all(0.0 <= em <= 1.0 for em in evals.values())
    assert any("loss" in r and "eval_loss" not in r for r in log)  # training losses are logged too
    options = json.loads((qa_checkpoint / "train_options.json").read_text())
    assert options["global_step"] == 8
    assert options["best_metric"] == pytest.approx(max(evals.values()))
    best_step = int(Path(options["best_checkpoint"]).name.split("-")[1])
    assert evals[best_step] == max(evals.values())
    final, best = _weights(qa_checkpoint), _weights(Path(options["best_checkpoint"]))
    assert final.keys() == best.keys()
    assert all(torch.equal(final[k], best[k]) for k in final)


def test_task_mismatch_is_refused(prepared_upperbound, tmp_path):
    with pytest.raises(ValueError, match="prepared for task 'upperbound'.*'fusion-small' trains on 'qa'"):
        train(prepared_upperbound, "fusion-small", tmp_path / "x", max_steps=1, quiet=True)


# ------------------------------------------------------------------------------------------ predictor


def test_predictor_answers_over_valid_classes(qa_checkpoint, prepared_qa):
    data = PreparedData(prepared_qa)
    predictor = ecgqa.load(qa_checkpoint, device="cpu")
    assert predictor.task == "qa" and predictor.classes == data.classes and predictor.model_name == "fusion-small"
    assert (predictor.rate, predictor.signal_length) == (500, 5000)
    assert predictor.meta == data.meta and str(predictor.device) == "cpu"
    valid = data.split("valid")
    items = []
    for row in valid.select(range(6)):
        items.append(([np.asarray(data.signals[r], dtype=np.float32) for r in row["ecg_rows"]], row["question"],
                      row["valid_classes"]))
    before = [e.copy() for ecgs, _, _ in items for e in ecgs]
    batch = predictor.answer_batch(items, batch_size=4)
    assert all(np.array_equal(a, b) for a, b in zip(before, [e for ecgs, _, _ in items for e in ecgs]))
    for (ecgs, question, vc), answer in zip(items, batch):
        names = [data.classes[i] for i in vc]
        assert answer.valid_classes == names and list(answer.scores) == names
        assert all(0.0 <= s <= 1.0 for s in answer.scores.values())
        assert answer.answer == [n for n in names if answer.scores[n] > 0.5]
        single = predictor.answer(ecgs, question, names)  # names work as well as indices
        assert single.answer == answer.answer
        assert all(single.scores[n] == pytest.approx(answer.scores[n], abs=1e-5) for n in names)
    everything = predictor.answer(items[0][0], items[0][1])
    assert len(everything.scores) == 103
    # a comparison question's two ECGs are both read: swapping them changes the scores
    swapped = predictor.answer(items[0][0][::-1], items[0][1])
    assert len(items[0][0]) == 2 and swapped.scores != everything.scores
    with pytest.raises(ValueError, match=r"expected a \(12, 5000\) array.*resample"):
        predictor.answer(np.zeros((12, 1000)), "Does this ECG show static noise?")
    with pytest.raises(ValueError, match="unknown class 'banana'"):
        predictor.answer(np.zeros((12, 5000)), "Does this ECG show static noise?", ["banana"])
    with pytest.raises(ValueError, match="use .answer"):
        predictor.classify(np.zeros((12, 5000)))


def test_upperbound_predictor_zeroes_leads_in_a_copy(upperbound_checkpoint, prepared_upperbound):
    data = PreparedData(prepared_upperbound)
    predictor = ecgqa.load(upperbound_checkpoint)
    assert predictor.task == "upperbound" and predictor.classes == data.classes and len(predictor.classes) == 83
    ecgs = np.asarray(data.signals[:5], dtype=np.float32)
    original = ecgs.copy()
    masks = np.zeros((5, 12), dtype=bool)
    masks[:, [1, 2, 5]] = True  # inferior leads
    probs = predictor.classify(ecgs, masks, batch_size=2)
    assert np.array_equal(ecgs, original), "classify must never modify its input"
    assert probs.shape == (5, 83) and ((probs >= 0) & (probs <= 1)).all()
    zeroed = original * masks[:, :, None]
    np.testing.assert_allclose(predictor.classify(zeroed), probs, atol=1e-6)
    full = predictor.classify(original)
    assert not np.allclose(full, probs)  # the mask did something
    np.testing.assert_allclose(predictor.classify(original[3]), full[3:4], atol=1e-6)
    with pytest.raises(ValueError, match="use .classify"):
        predictor.answer(original[0], "Does this ECG show static noise?")


# ------------------------------------------------------------------------------------------ resume


def test_resume_continues_where_it_stopped(prepared_upperbound, tmp_path):
    """2 epochs of 4 steps; stopping after 3 and resuming gives the uninterrupted run's steps, epochs and weights."""
    opts = {"epochs": 2, "batch_size": 128, "lr": 3e-3, "warmup": 0, "save_steps": 2, "logging_steps": 1, "quiet": True,
                "overrides": tiny("se-wrn"), "seed": 3}
    full = train(prepared_upperbound, "se-wrn", tmp_path / "full", **opts)
    part = tmp_path / "part"
    train(prepared_upperbound, "se-wrn", part, stop_after=3, **opts)
    assert not (part / "model.safetensors").exists()  # interrupted: only the resumable state
    assert (part / "checkpoints" / "checkpoint-3").is_dir()
    train(prepared_upperbound, "se-wrn", part, resume=True, **opts)

    full_opts, part_opts = (json.loads((p / "train_options.json").read_text()) for p in (full, part))
    assert full_opts["global_step"] == part_opts["global_step"] == 8  # ceil(413 / 128) = 4 per epoch
    assert full_opts["epoch"] == part_opts["epoch"] == pytest.approx(2.0)

    def steps(log):
        return {r["step"]: (round(r["epoch"], 6), r["loss"]) for r in log if "loss" in r and "train_loss" not in r}

    full_steps, part_steps = steps(_log(full)), steps(_log(part))
    assert sorted(part_steps) == list(range(1, 9)), "every step logged once: none repeated, none lost"
    for step in range(1, 9):
        assert part_steps[step][0] == full_steps[step][0]  # same epoch position at each step
        assert part_steps[step][1] == pytest.approx(full_steps[step][1], rel=1e-4)  # same batches seen
    a, b = _weights(full), _weights(part)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_resume_without_a_checkpoint_says_so(prepared_upperbound, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(prepared_upperbound, "se-wrn", tmp_path / "none", resume=True, max_steps=1, quiet=True)


# ------------------------------------------------------------------------------------------ distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_cli(prepared_qa, tmp_path):
    """`torchrun --nproc_per_node 2 -m ecgqa train ...` (gloo on CPU): trains, evaluates, writes one checkpoint."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "ecgqa", "train", "--data", str(prepared_qa),
           "--model", "fusion-small", "--tiny", "--out", str(out), "--max-steps", "4", "--batch-size", "8",
           "--eval-steps", "2", "--logging-steps", "1", "--workers", "0", "--lr", "3e-3", "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("checkpoint: ") == 1  # only rank 0 reports
    options = json.loads((out / "train_options.json").read_text())
    assert options["world_size"] == 2 and options["global_step"] == 4
    log = _log(out)
    loss_steps = [r["step"] for r in log if "loss" in r and "train_loss" not in r and "eval_loss" not in r]
    assert loss_steps == [1, 2, 3, 4]  # rank 0 alone writes the log
    evals = [r for r in log if "eval_em" in r]
    assert [r["step"] for r in evals] == [2, 4]
    predictor = ecgqa.load(out, device="cpu")
    answer = predictor.answer(np.zeros((12, 5000), dtype=np.float32), "Does this ECG show static noise in lead I?",
                              ["yes", "no"])
    assert set(answer.scores) == {"yes", "no"}


def test_set_overrides_parse_json_values():
    from ecgqa.train import _parse_overrides

    assert _parse_overrides(["hidden_size=64", "use_ecg=false", "dropout=0.2", "text_encoder=bert"]) == {
        "hidden_size": 64, "use_ecg": False, "dropout": 0.2, "text_encoder": "bert"}
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        _parse_overrides(["hidden_size"])
