"""Bad input to ``ecgqa convert-fairseq``, ``ecgqa train --init-from`` and ``ecgqa pretrain`` as users hit it:
one ``error:`` line naming the file at fault, exit status 2, and nothing of the user's touched.

The fairseq checkpoints are written with tests/training/test_w2v_cmsc.py's helpers (fairseq-signals' key layout).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ecgqa.cli import main
from tests.training.test_w2v_cmsc import CFG, fairseq_state, save_fairseq


@pytest.fixture(scope="module")
def pretraining_pt(tmp_path_factory) -> Path:
    return save_fairseq(tmp_path_factory.mktemp("fairseq") / "pre.pt", fairseq_state(CFG), CFG)


def _one_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.mark.parametrize("kind", ["text", "truncated"])
def test_a_file_that_is_no_torch_checkpoint_is_one_error(pretraining_pt, tmp_path, capsys, kind):
    bad = tmp_path / "model.pt"
    if kind == "text":  # torch's unpickler fails with a KeyError on a text file
        bad.write_text("hello\n")
    else:
        data = pretraining_pt.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    assert main(["convert-fairseq", str(bad), "--out", str(tmp_path / "out")]) == 2
    _one_error(capsys, str(bad), "not a readable torch checkpoint", "truncated, corrupt")
    assert not (tmp_path / "out").exists()


def test_a_folder_given_as_the_fairseq_file_is_named_a_folder(tmp_path, capsys):
    (tmp_path / "ckpts").mkdir()
    assert main(["convert-fairseq", str(tmp_path / "ckpts"), "--out", str(tmp_path / "out")]) == 2
    _one_error(capsys, f"{tmp_path / 'ckpts'} is a folder; give the fairseq checkpoint file inside it")


def test_convert_never_writes_into_a_users_folder(pretraining_pt, tmp_path, capsys):
    user = tmp_path / "thesis"
    user.mkdir()
    (user / "chapter1.tex").write_text("precious")
    assert main(["convert-fairseq", str(pretraining_pt), "--out", str(user)]) == 2
    _one_error(capsys, f"--out {user} already holds", "chapter1.tex")
    assert [p.name for p in user.iterdir()] == ["chapter1.tex"]
    assert (user / "chapter1.tex").read_text() == "precious"
    # its own output folder may be written again
    out = tmp_path / "converted"
    assert main(["convert-fairseq", str(pretraining_pt), "--out", str(out)]) == 0
    assert main(["convert-fairseq", str(pretraining_pt), "--out", str(out)]) == 0
    assert json.loads((out / "train_options.json").read_text())["converted_from"] == str(pretraining_pt)


def test_classes_for_a_checkpoint_without_a_head_is_an_error(pretraining_pt, tmp_path, capsys):
    assert main(["convert-fairseq", str(pretraining_pt), "--out", str(tmp_path / "o"), "--classes", "ptbxl"]) == 2
    _one_error(capsys, str(pretraining_pt), "no head", "leave --classes out")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("damage", ["weights", "config"])
def test_a_damaged_init_folder_is_one_error_naming_the_file(pretraining_pt, tmp_path, damage):
    from ecgqa.training.fairseq_import import FairseqCheckpointError, convert, read_pretrained

    folder, _ = convert(pretraining_pt, tmp_path / "w2v")
    target = folder / ("model.safetensors" if damage == "weights" else "config.json")
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(FairseqCheckpointError, match=rf"^{target}: (unreadable weights|not valid JSON)"):
        read_pretrained(folder)


@pytest.mark.parametrize(
    "what, message",
    [
        ("missing", "not found; give a prepared directory"),
        ("file", "is a file; give a prepared directory"),
        ("empty", "neither a complete prepared directory (no meta.json) nor a folder of WFDB records"),
        ("junk", "neither a complete prepared directory (no meta.json) nor a folder of WFDB records"),
    ],
)
def test_pretrain_data_that_holds_no_ecgs_is_named(tmp_path, capsys, what, message):
    data = tmp_path / "data"
    if what == "file":
        data.write_text("x")
    elif what in ("empty", "junk"):
        data.mkdir()
        if what == "junk":
            (data / "notes.txt").write_text("x")
            (data / "table.csv").write_text("a,b\n")
    out = tmp_path / "out"
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(data),
                "--out",
                str(out),
                "--model",
                "w2v-cmsc-rlm-test",
                "--max-steps",
                "1",
                "-q",
            ]
        )
        == 2
    )
    _one_error(capsys, f"--data {data}: {message}")
    assert not out.exists()


def test_ctrl_c_in_pretrain_points_at_resume_not_at_a_fresh_run(tmp_path, capsys, monkeypatch):
    """dispatch's generic "re-run the same command" would start afresh and delete OUT/checkpoints."""
    import ecgqa.training.pretrain

    out = tmp_path / "out"

    def interrupted_run(config, **_):
        for step in (900, 1000):  # numeric, not lexical, order
            (out / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(ecgqa.training.pretrain, "pretrain", interrupted_run)
    assert main(["pretrain", "--data", str(tmp_path), "--out", str(out), "-q"]) == 130
    err = capsys.readouterr().err
    assert "plus --resume" in err and str(out / "checkpoints" / "checkpoint-1000") in err, err
    assert "re-run the same command to continue" not in err


def test_init_from_a_checkpoint_of_another_lead_count_is_refused_before_the_run(tmp_path):
    from ecgqa.training.fairseq_import import FairseqCheckpointError, read_pretrained

    cfg = dict(CFG, in_d=6)
    pt = save_fairseq(tmp_path / "six.pt", fairseq_state(cfg), cfg)
    with pytest.raises(FairseqCheckpointError, match=rf"^{pt}: its encoder reads 6 lead\(s\) \(in_d\), but ECG-QA"):
        read_pretrained(pt)


def test_resume_with_another_model_is_one_error_naming_both(tmp_path):
    """Without the check, the state dict of the -test run fails to load into -quick in a many-line error."""
    from types import SimpleNamespace

    from ecgqa.training.trainer import resume_state

    out = tmp_path / "run"
    state = out / "checkpoints" / "checkpoint-20"
    state.mkdir(parents=True)
    (state / "trainer_state.json").write_text(json.dumps({"global_step": 20}))
    signal = {"rate": 500, "signal_length": 5000}
    (state / "config.json").write_text(json.dumps({"model_name": "w2v-cmsc-rlm-test", "task": "pretrain", **signal}))
    data = SimpleNamespace(meta=signal, path=tmp_path / "data")
    (out / "train_run.json").write_text(json.dumps({"format": "ecgqa-train-run", "model": "w2v-cmsc-rlm-test"}))
    config = SimpleNamespace(out=out, resume=True, model="w2v-cmsc-rlm-quick", quiet=True)
    with pytest.raises(
        ValueError,
        match=rf"^--resume: {out} is a run of --model w2v-cmsc-rlm-test, not "
        "w2v-cmsc-rlm-quick; resume it with --model w2v-cmsc-rlm-test",
    ):
        resume_state(config, data, signal_only=True)
    config.model = "w2v-cmsc-rlm-test"
    assert resume_state(config, data, signal_only=True).path == state


def test_classes_neither_a_file_nor_a_bundled_list_is_named(tmp_path, capsys):
    """It used to report a path inside the package (.../grounding/nosuch/grounding_class.csv not found)."""
    ft = save_fairseq(tmp_path / "ft.pt", fairseq_state(CFG, finetuned=5), CFG)
    assert main(["convert-fairseq", str(ft), "--out", str(tmp_path / "o"), "--classes", "nosuch"]) == 2
    _one_error(capsys, "--classes nosuch: no such file, nor a bundled class list (mimic-iv-ecg, ptbxl)")
    assert main(["convert-fairseq", str(ft), "--out", str(tmp_path / "o"), "--classes", "ptbxl"]) == 2
    _one_error(capsys, f"{ft}: its head predicts 5 labels but 83 class names were given")
    assert not (tmp_path / "o").exists()


def test_set_in_d_is_refused_the_data_has_12_leads():
    """--set in_d=6 used to build a 6-lead encoder that failed in the first batch (a bare conv shape error)."""
    from ecgqa.training.pretrain import check_overrides as check_pretrain
    from ecgqa.training.train import check_overrides as check_train

    with pytest.raises(ValueError, match=r"^--set in_d=6: in_d comes from the data"):
        check_pretrain({"in_d": 6})
    with pytest.raises(ValueError, match=r"^--set in_d=6: in_d comes from the prepared data"):
        check_train("w2v-cmsc-rlm-test", {"in_d": 6})
    check_pretrain({"mask_prob": 0.5})
    check_train("w2v-cmsc-rlm-test", {"dropout": 0.2})


def test_set_dropout_out_of_range_says_the_range():
    """--set dropout=2 was refused as "expected a number >= 0", which 2 is."""
    from ecgqa.training.train import check_overrides

    with pytest.raises(ValueError, match=r"^--set dropout=2: expected a probability in \[0, 1\)"):
        check_overrides("w2v-cmsc-rlm-test", {"dropout": 2})
    with pytest.raises(ValueError, match=r"^--set feature_grad_mult=-1: expected a number >= 0"):
        check_overrides("w2v-cmsc-rlm-test", {"feature_grad_mult": -1})


def test_convert_does_not_replace_a_trained_checkpoint(pretraining_pt, tmp_path, capsys):
    """A train/pretrain output also ends in train_options.json; converting over it would lose the trained model."""
    trained = tmp_path / "finetuned"
    trained.mkdir()
    (trained / "train_options.json").write_text(json.dumps({"model": "w2v-cmsc-rlm-test", "max_steps": 100}))
    (trained / "model.safetensors").write_bytes(b"weights")
    assert main(["convert-fairseq", str(pretraining_pt), "--out", str(trained)]) == 2
    _one_error(capsys, f"--out {trained} already holds", "not written by this tool")
    assert (trained / "model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in trained.iterdir()) == ["model.safetensors", "train_options.json"]


@pytest.mark.slow  # a real pretraining process, interrupted and resumed (~20 s on the loaded 2-core machine)
def test_sigint_mid_pretrain_then_resume_loses_nothing(tmp_path, sample_paths):
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    records = tmp_path / "records"
    records.mkdir()
    for header in sorted((sample_paths.ptbxl_records / "records500").rglob("*.hea"))[:6]:
        for suffix in (".hea", ".dat"):
            shutil.copy(header.with_suffix(suffix), records / header.with_suffix(suffix).name)
    out = tmp_path / "out"
    argv = [
        "pretrain",
        "--data",
        str(records),
        "--out",
        str(out),
        "--model",
        "w2v-cmsc-rlm-test",
        "--batch-size",
        "2",
        "--save-steps",
        "5",
        "--logging-steps",
        "5",
        "--max-steps",
        "100000",
        "-q",
    ]
    code = "import sys; from ecgqa.cli import main; sys.exit(main(sys.argv[1:]))"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(  # SIGINT as at a terminal, even when the suite runs as a background job (SIG_IGN)
        [sys.executable, "-c", code, *argv],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not list((out / "checkpoints").glob("checkpoint-*/trainer_state.json")):
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint saved"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "plus --resume" in err and "Traceback" not in err, err
    done = max(int(p.parent.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*/trainer_state.json"))
    # resume to a near stop (the schedule is the run's; --max-steps only bounds this test)
    argv[argv.index("100000")] = str(done + 5)
    subprocess.run([sys.executable, "-c", code, *argv, "--resume"], check=True, env=env, timeout=120)
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == list(range(5, done + 6, 5))  # every logged step once: nothing lost, nothing repeated
    assert (out / "train_options.json").is_file()
