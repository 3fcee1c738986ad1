"""`ecgqa prepare` over time: re-runs, repaired records, crashes, the outputs it may replace, byte-identical
builds, a full disk and the umask."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import wfdb

from ecgqa.data.prepare import prepare
from ecgqa.data.prepared import META, SIGNALS, PreparedData
from mapping.mapper import map_release
from tests.data.prepare_helpers import (
    file_tree,
)


def test_rerun_is_a_noop_and_force_rebuilds(handmade):
    _, _, mapped, out, _ = handmade
    before = (out / SIGNALS).stat().st_mtime_ns, json.loads((out / META).read_text())
    again = prepare(mapped, out, progress=False)
    assert again.get("_noop") is True and again["content_hash"] == before[1]["content_hash"]
    assert (out / SIGNALS).stat().st_mtime_ns == before[0]
    rebuilt = prepare(mapped, out, progress=False, force=True)
    assert "_noop" not in rebuilt and rebuilt["content_hash"] == before[1]["content_hash"]
    assert (out / SIGNALS).stat().st_mtime_ns != before[0]
    other = prepare(mapped, out, progress=False, rate=100)  # different options → different hash, rebuilt
    assert other["content_hash"] != before[1]["content_hash"] and PreparedData(out).signals.shape[-1] == 1000
    prepare(mapped, out, progress=False)  # back to 500 Hz for the other tests


def test_repaired_record_is_picked_up_without_force(handmade):
    _, records, mapped, out, _ = handmade
    dat = next(records.glob("records500/*/00002_hr.dat"))
    original = dat.read_bytes()
    try:
        # lead I, first sample := 1000 ADC units = 1.0 mV (format 16, gain 1000/mV, baseline 0)
        dat.write_bytes((1000).to_bytes(2, "little", signed=True) + original[2:])
        meta = prepare(mapped, out, progress=False)
        assert "_noop" not in meta
        data = PreparedData(out)
        assert float(data.signals[data.row_of(2), 0, 0]) == 1.0
        assert prepare(mapped, out, progress=False).get("_noop") is True
    finally:
        dat.write_bytes(original)
        prepare(mapped, out, progress=False)
    data = PreparedData(out)
    expected = wfdb.rdsamp(str(dat.with_suffix("")))[0][0, 0]
    assert float(data.signals[data.row_of(2), 0, 0]) == pytest.approx(expected, abs=1e-3)


def test_interrupted_run_leaves_no_half_written_store(handmade, monkeypatch):
    import ecgqa.data.prepare as prep

    _, _, mapped, out, _ = handmade
    good = json.loads((out / META).read_text())
    calls = {"n": 0}
    real = prep._store_row

    def crash_mid_write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash while writing the signal store")
        return real(*args, **kwargs)

    monkeypatch.setattr(prep, "_store_row", crash_mid_write)
    fresh = out.parent / "fresh"
    with pytest.raises(KeyboardInterrupt):
        prepare(mapped, fresh, progress=False)
    assert not fresh.exists()
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        prepare(mapped, out, progress=False, force=True)
    # the previous complete build is untouched and no build folder is left behind
    assert json.loads((out / META).read_text()) == good
    assert PreparedData(out).signals.shape[0] == 2
    assert not list(out.parent.glob(".*build-*"))


def test_killed_run_leftover_is_never_taken_for_a_complete_build(handmade, tmp_path):
    _, _, mapped, _, _ = handmade
    out = tmp_path / "prep"
    leftover = tmp_path / ".prep.build-999999999"  # a pid that cannot be alive
    leftover.mkdir()
    np.save(leftover / SIGNALS, np.zeros((1, 12, 10), dtype=np.float16))
    with pytest.raises(ValueError, match="not a complete prepared directory"):
        PreparedData(leftover)
    prepare(mapped, out, progress=False)
    assert not leftover.exists() and PreparedData(out).meta["n_ecgs"] == 2


def test_out_holding_user_files_is_refused_and_kept(handmade, tmp_path, capsys):
    from ecgqa.cli import main
    from ecgqa.files import OutputDirError

    _, _, mapped, _, _ = handmade
    mine = tmp_path / "important"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.txt").write_text("my thesis")
    (mine / "sub" / "data.csv").write_text("precious")
    before = file_tree(mine)
    with pytest.raises(
        OutputDirError, match=r"important already holds 2 entries \(sub/, thesis.txt\) but no meta.json"
    ):
        prepare(mapped, mine, progress=False)
    assert file_tree(mine) == before and not list(tmp_path.glob(".important.*"))
    # a user's meta.json that is not ours does not count as our marker
    (mine / "meta.json").write_text('{"title": "my notes"}')
    with pytest.raises(OutputDirError, match="its meta.json was not written by this tool"):
        prepare(mapped, mine, progress=False)
    # a file at --out, through the CLI: one line, rc 2, the file intact
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert main(["prepare", str(mapped), "--out", str(target), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out ") and "is a file" in err and err.count("\n") == 1
    assert target.read_text() == "keep me" and not list(tmp_path.glob(".notes.txt.*"))


def test_out_dot_is_a_clear_error(handmade, tmp_path, monkeypatch, capsys):
    from ecgqa.cli import main

    _, _, mapped, _, _ = handmade
    work = tmp_path / "work"
    work.mkdir()
    (work / "script.py").write_text("print(1)")
    monkeypatch.chdir(work)
    assert main(["prepare", str(mapped), "--out", ".", "-q"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "current folder" in err
    assert (work / "script.py").read_text() == "print(1)"


def test_prepare_replaces_its_own_output_and_an_empty_folder(handmade, tmp_path):
    _, _, mapped, _, _ = handmade
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare(mapped, empty, progress=False)
    assert PreparedData(empty).meta["n_ecgs"] == 2
    prepare(mapped, empty, progress=False, rate=100)  # ours: rebuilt in place
    assert PreparedData(empty).rate == 100 and PreparedData(empty).signal_length == 1000


def test_stale_build_folders_are_cleaned(handmade, tmp_path):
    import subprocess
    import sys

    _, _, mapped, _, _ = handmade
    dead = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
        ).stdout
    )
    prepare(mapped, tmp_path / "prep", progress=False)
    for name in (f".prep.build-{dead}", f".prep.old-{dead}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / SIGNALS).write_bytes(b"x")
    prepare(mapped, tmp_path / "prep", progress=False, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prep"]
    # a run killed between the two renames of a fallback swap: the output waits aside and is put back
    (tmp_path / "prep").rename(tmp_path / f".prep.old-{dead}")
    assert prepare(mapped, tmp_path / "prep", progress=False).get("_noop") is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prep"]


# ------------------------------------------------------------------------- same inputs, same bytes


@pytest.mark.slow
def test_prepare_is_byte_identical_across_runs(prepared_qa, mapped_sample, tmp_path):
    """A second build of the bundled sample equals the session fixture's, file by file (tokenizer included)."""
    again = tmp_path / "again"
    prepare(mapped_sample, again, variant="template", task="qa", rate=500, progress=False)
    first, second = file_tree(prepared_qa), file_tree(again)
    assert sorted(first) == sorted(second)
    assert "tokenizer/tokenizer.json" in first and "questions/train/state.json" in first
    for name in first:
        assert first[name] == second[name], name


@pytest.mark.parametrize("task, tokenizer", [("qa", "trained"), ("upperbound", "bert")])
def test_other_builds_are_byte_identical_too(handmade, tmp_path, task, tokenizer):
    _, _, mapped, _, _ = handmade
    a, b = tmp_path / "a", tmp_path / "b"
    prepare(mapped, a, task=task, tokenizer=tokenizer, progress=False)
    prepare(mapped, b, task=task, tokenizer=tokenizer, progress=False, num_proc=2)
    assert file_tree(a) == file_tree(b)


@pytest.mark.slow  # three interpreters importing transformers (~20 s)
def test_trained_tokenizer_is_deterministic_across_processes(tmp_path):
    """Python's string hashing differs per process (PYTHONHASHSEED); the vocabulary must not."""
    import subprocess
    import sys

    code = (
        "import sys, json; from ecgqa.data.vocab import train_wordpiece; "
        "from ecgqa import sample; import glob\n"
        "qs = [s['question'] for f in sorted(glob.glob(str(sample.paths().ptbxl_release / 'template/train/*.json'))) "
        "for s in json.load(open(f))]\n"
        "tok = train_wordpiece(qs); tok.save_pretrained(sys.argv[1])"
    )
    outs = []
    for seed in ("1", "2", "3"):
        out = tmp_path / seed
        env = {**os.environ, "PYTHONHASHSEED": seed, "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=env, capture_output=True)
        outs.append(file_tree(out))
    assert outs[0] == outs[1] == outs[2] and "tokenizer.json" in outs[0]


def test_disk_full_is_one_line_and_keeps_the_old_output(handmade, tmp_path, monkeypatch, capsys):
    import errno

    from ecgqa.cli import main
    from ecgqa.data import prepared

    _, _, mapped, out, _ = handmade
    before = file_tree(out)

    def full(self, row):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(prepared.SignalStoreWriter, "append", full)
    assert main(["prepare", str(mapped), "--out", str(out), "--force", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on the device while writing ") and "signals.npy" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert file_tree(out) == before and not list(out.parent.glob(f".{out.name}.*"))


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_honour_the_umask(handmade, tmp_path, mask, file_mode, dir_mode):
    import stat

    release, records, mapped, _, _ = handmade
    old = os.umask(mask)
    try:
        out = tmp_path / "prep"
        prepare(mapped, out, progress=False)
        remapped = tmp_path / "mapped"
        map_release("ptbxl", release, records, remapped, progress=False)
    finally:
        os.umask(old)
    for root in (out, remapped):
        for p in [root, *root.rglob("*")]:
            want = dir_mode if p.is_dir() else file_mode
            assert stat.S_IMODE(p.stat().st_mode) == want, (p, oct(p.stat().st_mode))
