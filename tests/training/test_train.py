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
from ecgqa.cli import main
from ecgqa.data.prepared import PreparedData
from ecgqa.training.train import TrainConfig, train


def _log(ckpt: Path) -> list[dict]:
    return [json.loads(line) for line in (ckpt / "metrics.jsonl").read_text().splitlines()]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


# ------------------------------------------------------------------------------------------ checkpoints


@pytest.mark.slow  # trains a checkpoint fixture
def test_qa_checkpoint_holds_everything_to_answer(qa_checkpoint, prepared_qa):
    config = json.loads((qa_checkpoint / "config.json").read_text())
    meta = PreparedData(prepared_qa).meta
    assert config["task"] == "qa" and config["model_name"] == "fusion-test"
    assert config["classes"] == meta["classes"] and len(config["classes"]) == 103
    assert (config["rate"], config["signal_length"]) == (meta["rate"], meta["signal_length"]) == (500, 5000)
    assert json.loads((qa_checkpoint / "prepared_meta.json").read_text()) == meta
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(str(qa_checkpoint / "tokenizer"))
    assert saved.get_vocab() == PreparedData(prepared_qa).tokenizer.get_vocab()


@pytest.mark.slow  # trains a checkpoint fixture
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
        train(TrainConfig(data=prepared_upperbound, model="fusion-small", out=tmp_path / "x", max_steps=1, quiet=True))
    # a dry run refuses it too, instead of printing a plan for data the model cannot read (probe N12)
    assert (
        main(
            [
                "train",
                "--data",
                str(prepared_upperbound),
                "--model",
                "fusion-small",
                "--out",
                str(tmp_path / "y"),
                "--recipe",
                "paper",
                "--dry-run",
                "--no-measure",
            ]
        )
        == 2
    )
    assert not (tmp_path / "y").exists()


# ------------------------------------------------------------------------------------------ predictor


@pytest.mark.slow  # trains a checkpoint fixture
def test_predictor_answers_over_valid_classes(qa_checkpoint, prepared_qa):
    data = PreparedData(prepared_qa)
    predictor = ecgqa.load(qa_checkpoint, device="cpu")
    assert predictor.task == "qa" and predictor.classes == data.classes and predictor.model_name == "fusion-test"
    assert (predictor.rate, predictor.signal_length) == (500, 5000)
    assert predictor.meta == data.meta and str(predictor.device) == "cpu"
    valid = data.split("valid")
    items = []
    for row in valid.select(range(6)):
        items.append(
            (
                [np.asarray(data.signals[r], dtype=np.float32) for r in row["ecg_rows"]],
                row["question"],
                row["valid_classes"],
            )
        )
    before = [e.copy() for ecgs, _, _ in items for e in ecgs]
    batch = predictor.answer_batch(items, batch_size=4)
    assert all(np.array_equal(a, b) for a, b in zip(before, [e for ecgs, _, _ in items for e in ecgs], strict=False))
    for (ecgs, question, vc), answer in zip(items, batch, strict=False):
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


@pytest.mark.slow  # trains a checkpoint fixture
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


@pytest.mark.slow
def test_resume_continues_where_it_stopped(prepared_upperbound, tmp_path):
    """2 epochs of 4 steps; stopping after 3 and resuming gives the uninterrupted run's steps, epochs and weights."""
    opts = {
        "epochs": 2,
        "batch_size": 128,
        "lr": 3e-3,
        "warmup": 0,
        "save_steps": 2,
        "logging_steps": 1,
        "quiet": True,
        "seed": 3,
    }

    def config(out, **kw):
        return TrainConfig(data=prepared_upperbound, model="se-wrn-test", out=out, **opts, **kw)

    full = train(config(tmp_path / "full"))
    part = tmp_path / "part"
    train(config(part), stop_after=3)
    assert not (part / "model.safetensors").exists()  # interrupted: only the resumable state
    assert (part / "checkpoints" / "checkpoint-3").is_dir()
    # a kill after step 3's checkpoint but before the next one: steps 4-5 were logged, then lost
    with (part / "metrics.jsonl").open("a") as f:
        for step in (4, 5):
            f.write(json.dumps({"step": step, "epoch": 1.0, "loss": 9.9}) + "\n")
    # ... and a kill during the save of checkpoint-4: a torn folder without trainer_state.json
    torn = part / "checkpoints" / "checkpoint-4"
    torn.mkdir()
    (torn / "config.json").write_text("{}")
    train(config(part, resume=True))

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
        train(
            TrainConfig(
                data=prepared_upperbound, model="se-wrn", out=tmp_path / "none", resume=True, max_steps=1, quiet=True
            )
        )


# ------------------------------------------------------------------------------------------ distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_cli(prepared_qa, tmp_path):
    """`torchrun --nproc_per_node 2 -m ecgqa train ...` (gloo on CPU): trains, evaluates, writes one checkpoint."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "ecgqa",
        "train",
        "--data",
        str(prepared_qa),
        "--model",
        "fusion-small",
        "--tiny",
        "--out",
        str(out),
        "--max-steps",
        "4",
        "--batch-size",
        "8",
        "--eval-steps",
        "2",
        "--logging-steps",
        "1",
        "--workers",
        "0",
        "--lr",
        "3e-3",
        "-q",
    ]
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
    answer = predictor.answer(
        np.zeros((12, 5000), dtype=np.float32), "Does this ECG show static noise in lead I?", ["yes", "no"]
    )
    assert set(answer.scores) == {"yes", "no"}


def test_set_overrides_parse_json_values():
    from ecgqa.cli.common import parse_overrides

    assert parse_overrides(["hidden_size=64", "use_ecg=false", "dropout=0.2", "text_encoder=bert"]) == {
        "hidden_size": 64,
        "use_ecg": False,
        "dropout": 0.2,
        "text_encoder": "bert",
    }
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        parse_overrides(["hidden_size"])


# ------------------------------------------------------------------------------------------ options (fast)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--grad-accum", "0"], "--grad-accum 0: must be a positive integer"),
        (["--epochs", "0"], "--epochs 0.0: must be a positive number"),
        (["--epochs", "-1"], "--epochs -1.0: must be a positive number"),
        (["--max-steps", "0"], "--max-steps 0: must be a positive integer"),
        (["--max-steps", "-5"], "--max-steps -5: must be a positive integer"),
        (["--eval-steps", "0"], "--eval-steps 0: must be a positive integer"),
        (["--save-total-limit", "0"], "--save-total-limit 0: must be a positive integer"),
        (["--set", "hidden_size=abc"], "--set hidden_size='abc': expected an integer >= 1"),
        (["--set", "hidden_size=0"], "--set hidden_size=0: expected an integer >= 1"),
        (["--set", "num_layers=-1"], "--set num_layers=-1: expected an integer >= 1"),
        (["--set", "bogus_field=1"], "has no config field 'bogus_field'; its fields: "),
        (["--set", "rate=250"], "--set rate=250: rate comes from the prepared data"),
        (["--text-encoder", "/nonexistent/encoder"], "--text-encoder /nonexistent/encoder: cannot load it"),
        (
            ["--text-encoder", "no-such-org/no-such-encoder"],
            "--text-encoder no-such-org/no-such-encoder: cannot load it",
        ),
    ],
)
def test_bad_options_are_one_line_errors(prepared_qa, tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--data",
            str(prepared_qa),
            "--model",
            "fusion-small",
            "--tiny",
            "--out",
            str(out),
            "--max-steps",
            "1",
            "--workers",
            "0",
            "-q",
            *flags,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err, err
    assert "Traceback" not in err and not out.exists()  # nothing written


def test_out_must_be_ours(prepared_qa, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("precious")
    for out in (a_file, folder):
        rc = main(
            [
                "train",
                "--data",
                str(prepared_qa),
                "--model",
                "fusion-small",
                "--tiny",
                "--out",
                str(out),
                "--max-steps",
                "1",
                "--workers",
                "0",
                "-q",
            ]
        )
        err = capsys.readouterr().err
        assert rc == 2 and "error: --out" in err and "Traceback" not in err, err
    assert a_file.read_text() == "mine" and (folder / "chapter1.tex").read_text() == "precious"


def test_resume_skips_a_torn_checkpoint(tmp_path, capsys):
    from ecgqa.training.train import find_resume_checkpoint

    run = tmp_path / "run" / "checkpoints"
    for step, complete in ((20, True), (40, True), (60, False)):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"x")
        if complete:
            (run / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    config = TrainConfig(data=tmp_path, model="se-wrn", out=tmp_path / "run", resume=True)
    assert find_resume_checkpoint(config) == run / "checkpoint-40"
    assert "skipping" in capsys.readouterr().err and "checkpoint-60" in capsys.readouterr().err + str(
        run / "checkpoint-60"
    )
    with pytest.raises(ValueError, match="incomplete"):
        find_resume_checkpoint(TrainConfig(data=tmp_path, model="se-wrn", out=tmp_path, resume=run / "checkpoint-60"))


# ------------------------------------------------------------------------------------------ recipes (fast)


def test_tri_stage_curve_matches_the_formula():
    """fairseq's tri_stage: linear warmup from 0.01·lr, hold, exponential decay to 0.05·lr, then flat."""
    import math

    from ecgqa.training.recipes import tri_stage_factor

    total, lr = 1000, 1e-4
    w, h, d = 100, 400, 500

    def expected(step):
        if step < w:
            return 0.01 + (1 - 0.01) * step / w
        if step < w + h:
            return 1.0
        if step <= w + h + d:
            return math.exp(-(-math.log(0.05) / d) * (step - w - h))
        return 0.05

    for step in (0, 1, 50, 99, 100, 300, 499, 500, 501, 750, 999, 1000, 1200):
        assert tri_stage_factor(step, total) * lr == pytest.approx(expected(step) * lr, rel=1e-12), step
    assert tri_stage_factor(0, total) == pytest.approx(0.01)
    assert tri_stage_factor(1000, total) == pytest.approx(0.05)
    assert tri_stage_factor(750, total) == pytest.approx(0.05**0.5)  # half-way through the decay


def test_paper_recipe_numbers():
    from ecgqa.training.recipes import PAPER, grad_accum_for

    assert {
        m: PAPER[m].effective_batch
        for m in ("fusion-base", "blind", "deaf", "m3ae-base", "fusion-small", "se-wrn", "resnet-attn")
    } == {
        "fusion-base": 256,
        "blind": 256,
        "deaf": 256,
        "m3ae-base": 256,
        "fusion-small": 64,
        "se-wrn": 128,
        "resnet-attn": 128,
    }
    assert PAPER["m3ae-base"].lr == 5e-5 and PAPER["fusion-base"].lr == 1e-4
    assert PAPER["se-wrn"].weight_decay == 5e-4 and PAPER["resnet-attn"].weight_decay == 1e-4
    assert PAPER["fusion-base"].weight_decay == 0 and PAPER["fusion-base"].betas == (0.9, 0.98)
    assert PAPER["fusion-base"].max_steps == 50_000 and PAPER["se-wrn"].max_steps == 100_000
    assert grad_accum_for(256, 8, 4) == 8 and grad_accum_for(256, 32, 1) == 8
    with pytest.raises(ValueError, match="cannot be made of --batch-size 48"):
        grad_accum_for(256, 48, 1)


def test_dry_run_prints_batch_steps_epochs_and_schedule(prepared_qa, prepared_upperbound, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (
        main(
            [
                "train",
                "--data",
                str(prepared_qa),
                "--model",
                "fusion-base",
                "--out",
                "unused",
                "--recipe",
                "paper",
                "--dry-run",
                "--no-measure",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert "effective batch: 256 = batch 8 x grad-accum 32 x 1 device(s)" in lines
    assert "updates: 50000" in lines
    # 413 train samples on the bundled sample: 50000 x 256 samples = 30992.25 epochs
    assert f"samples seen: {50000 * 256} = {50000 * 256 / 413:.2f} epochs of 413 train samples" in lines
    assert (
        "lr schedule: tri-stage: warmup 5000 updates 1e-06 -> 0.0001, hold 20000, exponential decay 25000 to 5e-06"
    ) in lines
    assert any(line.startswith("optimizer: AdamW over all parameters") and "weight decay 0" in line for line in lines)
    assert "gradient clipping: none (max_grad_norm 0, as upstream's clip_norm 0.0)" in lines
    assert any(
        line.startswith("text embeddings: random init; upstream started from bert-base-uncased's")
        and "--bert-embeddings DIR" in line
        for line in lines
    )
    assert not Path("unused").exists()
    assert (
        main(
            [
                "train",
                "--data",
                str(prepared_upperbound),
                "--model",
                "se-wrn",
                "--out",
                "unused",
                "--recipe",
                "paper",
                "--dry-run",
                "--no-measure",
                "--batch-size",
                "32",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert "effective batch: 128 = batch 32 x grad-accum 4 x 1 device(s)" in lines and "updates: 100000" in lines
    assert any("weight decay 0.0005" in line for line in lines)
    # epochs instead of updates: counted as the Trainer counts (ceil(ceil(413 / 16) / 4) = 7 updates per epoch)
    assert (
        main(
            [
                "train",
                "--data",
                str(prepared_qa),
                "--model",
                "fusion-small",
                "--out",
                "unused",
                "--recipe",
                "paper",
                "--epochs",
                "2",
                "--dry-run",
                "--no-measure",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    monkeypatch.setenv("WORLD_SIZE", "4")  # the reference batch of 128 per device is shared by four devices
    assert (
        main(
            [
                "train",
                "--data",
                str(prepared_upperbound),
                "--model",
                "se-wrn",
                "--out",
                "unused",
                "--recipe",
                "paper",
                "--dry-run",
                "--no-measure",
            ]
        )
        == 0
    )
    assert "effective batch: 128 = batch 32 x grad-accum 1 x 4 device(s)" in capsys.readouterr().out.splitlines()
    monkeypatch.delenv("WORLD_SIZE")
    assert (
        "updates: 14 (2 epochs)" in lines
        and f"samples seen: {14 * 64} = {14 * 64 / 413:.2f} epochs of 413 train samples" in lines
    )


def test_paper_recipe_does_not_clip_gradients(tmp_path):
    """Upstream clip_norm 0.0: the paper recipe's TrainingArguments have max_grad_norm 0 (no clipping);
    quick keeps the transformers default 1.0; --max-grad-norm overrides either."""
    from ecgqa.training.recipes import PAPER, QUICK
    from ecgqa.training.train import check_config
    from ecgqa.training.trainer import training_arguments

    assert all(r.max_grad_norm == 0 for r in PAPER.values()) and QUICK.max_grad_norm == 1.0
    for recipe, extra, want in (("paper", {}, 0.0), ("quick", {}, 1.0), ("paper", {"max_grad_norm": 2.5}, 2.5)):
        config = check_config(
            TrainConfig(data=tmp_path, model="fusion-test", out=tmp_path / "o", recipe=recipe, **extra)
        )
        assert config.max_grad_norm == want
        assert training_arguments(config, False, ["labels"]).max_grad_norm == want
    with pytest.raises(ValueError, match="--max-grad-norm -1"):
        check_config(TrainConfig(data=tmp_path, model="fusion-test", out=tmp_path / "o", max_grad_norm=-1))


def _tiny_bert(path: Path, hidden: int = 32) -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(3)
    bert = BertModel(
        BertConfig(
            vocab_size=30522,
            hidden_size=hidden,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=2 * hidden,
            max_position_embeddings=512,
        )
    )
    bert.save_pretrained(path)
    return bert


@pytest.mark.slow
def test_bert_embeddings_initialise_the_reference_tables(prepared_qa, tmp_path, capsys):
    """--bert-embeddings DIR copies BERT's word/position/type tables (upstream load_bert_embedding) into the
    reference model through train's own build_model; no BERT encoder is attached."""
    from ecgqa.training.train import build_model, check_config, load_datasets

    bert = _tiny_bert(tmp_path / "bert")
    emb = bert.embeddings

    def build(model: str, **extra):
        config = check_config(
            TrainConfig(
                data=prepared_qa, model=model, out=tmp_path / "o", bert_embeddings=str(tmp_path / "bert"), **extra
            )
        )
        return build_model(config, load_datasets(config))

    for name in ("fusion-test", "blind-test", "medvill-test"):
        model = build(name)
        assert torch.equal(model.word_emb.weight, emb.word_embeddings.weight), name
        assert torch.equal(model.pos_emb.weight, emb.position_embeddings.weight), name
        assert torch.equal(model.type_emb.weight, emb.token_type_embeddings.weight), name
        assert model.text_encoder is None and not any("bert" in n for n, _ in model.named_parameters())
    lstm = build("resnet-lstm-test", overrides={"lstm_input_dim": 32})
    assert torch.equal(lstm.word_emb.weight, emb.word_embeddings.weight)
    # wrong shapes, no tables, no folder: one clear error each
    with pytest.raises(
        ValueError,
        match=r"embeddings.word_embeddings is \(30522, 32\) but resnet-lstm-test's "
        r"table is \(30522, 16\)",
    ):
        build("resnet-lstm-test")
    _tiny_bert(tmp_path / "bert", hidden=24)
    with pytest.raises(ValueError, match=r"is \(30522, 24\) but fusion-test's table is \(30522, 32\)"):
        build("fusion-test")
    with pytest.raises(ValueError, match="deaf-test has no text embedding tables"):
        build("deaf-test")
    with pytest.raises(ValueError, match="--bert-embeddings .*missing: not a folder"):
        check_config(
            TrainConfig(
                data=prepared_qa, model="fusion-test", out=tmp_path / "o", bert_embeddings=str(tmp_path / "missing")
            )
        )
    assert (
        main(
            [
                "train",
                "--data",
                str(prepared_qa),
                "--model",
                "fusion-base",
                "--out",
                "unused",
                "--recipe",
                "paper",
                "--dry-run",
                "--no-measure",
                "--bert-embeddings",
                str(tmp_path / "bert"),
            ]
        )
        == 0
    )
    assert f"text embeddings: word/position/type tables from {tmp_path / 'bert'}" in capsys.readouterr().out


@pytest.mark.slow
def test_qa_resume_reuses_the_runs_tokenizer(prepared_qa, tmp_path):
    """A rebuild of the prepared data between kill and resume must not change token ids under the run (P14)."""
    import shutil

    from ecgqa.models import variant_for_tests

    data = tmp_path / "prepared"
    shutil.copytree(prepared_qa, data)
    original = PreparedData(data).tokenizer.get_vocab()

    def config(**kw):
        return TrainConfig(
            data=data,
            model=variant_for_tests("fusion-small"),
            out=tmp_path / "run",
            max_steps=4,
            batch_size=8,
            save_steps=2,
            eval_split=None,
            lr=1e-3,
            warmup=0,
            quiet=True,
            **kw,
        )

    train(config(), stop_after=2)
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-2" / "tokenizer.json").is_file()
    (tok_file,) = [p for p in data.rglob("tokenizer.json")]
    tok = json.loads(tok_file.read_text())
    vocab = tok["model"]["vocab"]
    a, b = [w for w in vocab if w.isalpha()][:2]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # the rebuilt vocabulary gives two words each other's ids
    tok_file.write_text(json.dumps(tok))
    assert PreparedData(data).tokenizer.get_vocab() != original
    train(config(resume=True))
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(tmp_path / "run" / "tokenizer")).get_vocab() == original


@pytest.mark.slow
def test_paper_recipe_trains_on_the_tri_stage_curve(prepared_qa, tmp_path):
    """The Trainer really follows the recipe: update k (1-based, as logged) ran at lr · tri_stage_factor(k - 1, total),
    so the first update uses 0.01 · lr, as fairseq's tri_stage does."""
    from ecgqa.models import variant_for_tests
    from ecgqa.training.recipes import tri_stage_factor

    out = tmp_path / "paper"
    train(
        TrainConfig(
            data=prepared_qa,
            model=variant_for_tests("fusion-small"),
            out=out,
            recipe="paper",
            max_steps=20,
            batch_size=4,
            grad_accum=1,
            eval_split=None,
            logging_steps=1,
            quiet=True,
        )
    )
    lrs = {r["step"]: r["learning_rate"] for r in _log(out) if "learning_rate" in r}
    assert sorted(lrs) == list(range(1, 21))
    for step, lr in lrs.items():
        assert lr == pytest.approx(1e-4 * tri_stage_factor(step - 1, 20), rel=1e-6), step
    assert lrs[1] == pytest.approx(1e-6) and lrs[3] == pytest.approx(1e-4) and lrs[20] < 1e-4
    options = json.loads((out / "train_options.json").read_text())
    assert options["args"]["weight_decay"] == 0.0 and options["recipe"] == "paper"


@pytest.mark.slow
def test_dry_run_updates_equal_the_trainers(prepared_qa, tmp_path, capsys):
    from ecgqa.models import variant_for_tests

    model = variant_for_tests("fusion-small")
    common = [
        "train",
        "--data",
        str(prepared_qa),
        "--model",
        model,
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--grad-accum",
        "3",
        "--eval-split",
        "none",
        "--workers",
        "0",
        "-q",
    ]
    assert main([*common, "--dry-run"]) == 0
    (updates,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("updates: ")]
    assert updates == "updates: 5 (1 epochs)"  # ceil(ceil(413 / 32) / 3)
    assert main(common) == 0
    assert json.loads((tmp_path / "run" / "train_options.json").read_text())["global_step"] == 5


def test_metrics_log_trimmed_to_the_resumed_step(tmp_path):
    """T3: lines of steps after the resumed checkpoint (and a line torn by the kill) are dropped."""
    from ecgqa.training.trainer import trim_log

    log = tmp_path / "metrics.jsonl"
    lines = [{"step": s, "loss": 1.0 / s} for s in (2, 4, 6, 8)] + [{"step": 6, "eval_em": 0.5}]
    log.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 9, "lo')
    trim_log(log, 6)
    assert [json.loads(x) for x in log.read_text().splitlines()] == [x for x in lines if x["step"] <= 6]


@pytest.mark.slow
@pytest.mark.parametrize("mask", [0o002, 0o022])
def test_checkpoint_files_follow_the_umask(prepared_upperbound, tmp_path, mask):
    """safetensors writes its weights 0600; every checkpoint file must read like the rest of our outputs."""
    old = os.umask(mask)
    try:
        out = train(
            TrainConfig(
                data=prepared_upperbound,
                model="se-wrn-test",
                out=tmp_path / "run",
                max_steps=2,
                batch_size=32,
                save_steps=1,
                warmup=0,
                quiet=True,
            )
        )
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert out / "model.safetensors" in files and out / "checkpoints" / "checkpoint-2" / "model.safetensors" in files
    wrong = {
        str(p.relative_to(out)): oct(p.stat().st_mode & 0o777)
        for p in files
        if p.stat().st_mode & 0o777 != 0o666 & ~mask
    }
    assert not wrong, f"files not {oct(0o666 & ~mask)}: {wrong}"
    dirs = [p for p in out.rglob("*") if p.is_dir()]
    assert all(p.stat().st_mode & 0o777 == 0o777 & ~mask for p in dirs)
