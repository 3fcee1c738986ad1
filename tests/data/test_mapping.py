"""Mapping ECG-QA samples to PTB-XL records, on the bundled real sample."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ecgqa.data.release import ReleaseError
from mapping.mapper import MissingRecordsError, map_release


def _json(path: Path):
    return json.loads(path.read_text())


def _copy_release(sample_paths, tmp_path: Path) -> Path:
    release = tmp_path / "release" / "ptbxl"
    shutil.copytree(sample_paths.ptbxl_release, release)
    return release


def test_sample_maps_completely(mapped_sample: Path, sample_paths):
    src = sample_paths.ptbxl_release
    shards = sorted(p.relative_to(src) for p in src.glob("*/*/*.json"))
    assert [str(s) for s in shards] == [
        "paraphrased/train/120000.json",
        "paraphrased/valid/60000.json",
        "template/train/120000.json",
        "template/valid/60000.json",
    ]
    total = 0
    for rel in shards:
        original, mapped = _json(src / rel), _json(mapped_sample / rel)
        assert len(mapped) == len(original)
        for before, after in zip(original, mapped, strict=False):
            assert after == {**before, "ecg_path": after["ecg_path"]}
            assert len(after["ecg_path"]) == len(before["ecg_id"])
            for ecg_id, path in zip(before["ecg_id"], after["ecg_path"], strict=False):
                expected = sample_paths.ptbxl_records / f"records500/00000/{ecg_id:05d}_hr"
                assert Path(path) == expected.resolve()
                assert Path(path + ".hea").is_file() and Path(path + ".dat").is_file()
        total += len(mapped)
    assert total == 2 * 451
    for name in ("answers.csv", "answers_for_each_template.csv", "train_ecgs.tsv"):
        assert (mapped_sample / name).read_bytes() == (src / name).read_bytes()
    report = _json(mapped_sample / "mapping_report.json")
    assert report["status"] == "ok"
    assert report["totals"]["mapped"] == 902 and report["totals"]["skipped"] == 0
    assert report["records_checked"] == 198  # each record checked once, not once per sample
    assert not list(mapped_sample.glob(".mapping-staging-*"))


def _add_samples(release: Path, rel: str, ids: list[list[int]]) -> list[dict]:
    """Append samples with the given ecg_id lists (0 stands for an id the sample has a record for)."""
    path = release / rel
    samples = _json(path)
    present = samples[0]["ecg_id"][0]
    extra = []
    for k, ecg_ids in enumerate(ids):
        ecg_ids = [i or present for i in ecg_ids]
        s = dict(samples[0], sample_id=10_000_000 + k, ecg_id=ecg_ids)
        extra.append(s)
    path.write_text(json.dumps(samples + extra))
    return samples


def test_strict_mode_lists_missing_records_after_full_scan(sample_paths, tmp_path):
    release = _copy_release(sample_paths, tmp_path)
    _add_samples(release, "template/train/120000.json", [[9001], [9002, 0]])
    _add_samples(release, "paraphrased/valid/60000.json", [[0, 12345]])
    out = tmp_path / "out"
    with pytest.raises(MissingRecordsError) as err:
        map_release("ptbxl", release, sample_paths.ptbxl_records, out, progress=False)
    msg = str(err.value)
    assert msg.startswith("3 records referenced by the release were not found")
    for ecg_id in ("9001", "9002", "12345"):
        assert ecg_id in msg
    assert "records500/09000/09001_hr.hea" in msg and "--skip-missing" in msg
    # nothing half-written: --out is untouched, the report (beside it) names the missing ids per file
    assert not out.exists() and "out.mapping_report.json" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mapping_report.json", "release"]
    report = _json(tmp_path / "out.mapping_report.json")
    assert report["status"].startswith("failed")
    assert report["files"]["template/train/120000.json"]["missing_ids"] == [9001, 9002]
    assert report["files"]["paraphrased/valid/60000.json"]["missing_ids"] == [12345]
    assert report["totals"]["n_missing_ids"] == 3


def test_skip_missing_keeps_exactly_the_answerable_samples(sample_paths, tmp_path):
    release = _copy_release(sample_paths, tmp_path)
    original = _add_samples(release, "template/train/120000.json", [[9001], [9002, 0], [0]])
    out = tmp_path / "out"
    report = map_release("ptbxl", release, sample_paths.ptbxl_records, out, skip_missing=True, progress=False)
    mapped = _json(out / "template/train/120000.json")
    assert [s["sample_id"] for s in mapped] == [s["sample_id"] for s in original] + [10_000_002]
    f = report["files"]["template/train/120000.json"]
    assert (f["samples"], f["mapped"], f["skipped"], f["missing_ids"]) == (
        len(original) + 3,
        len(original) + 1,
        2,
        [9001, 9002],
    )
    assert report["files"]["template/valid/60000.json"]["skipped"] == 0


def test_rate_100_points_at_records100(sample_paths, tmp_path):
    # the bundled sample carries 500 Hz records only, so strict mode must say where 100 Hz ones belong
    with pytest.raises(MissingRecordsError, match=r"records100/00000/00\d\d\d_lr\.hea"):
        map_release(
            "ptbxl", sample_paths.ptbxl_release, sample_paths.ptbxl_records, tmp_path / "o", rate=100, progress=False
        )


@pytest.mark.parametrize(
    "content, pattern",
    [
        ("[{", r"120000\.json: malformed JSON"),
        ('{"a": 1}', r"120000\.json: expected a JSON list"),
        ("DROP_ECG_ID", r"120000\.json: sample #1 \(sample_id \d+\) lacks \['ecg_id'\]"),
    ],
)
def test_malformed_release_names_file_and_sample(sample_paths, tmp_path, content, pattern):
    release = _copy_release(sample_paths, tmp_path)
    path = release / "template/train/120000.json"
    if content == "DROP_ECG_ID":
        samples = _json(path)
        del samples[1]["ecg_id"]
        content = json.dumps(samples)
    path.write_text(content)
    with pytest.raises(ReleaseError, match=pattern):
        map_release("ptbxl", release, sample_paths.ptbxl_records, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "template").exists()


def test_unknown_layout(tmp_path, sample_paths):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(ReleaseError, match="unknown release layout"):
        map_release("ptbxl", tmp_path / "stuff", sample_paths.ptbxl_records, tmp_path / "out")


def test_release_parent_folder_is_accepted(sample_paths, tmp_path):
    report = map_release("ptbxl", sample_paths.release, sample_paths.ptbxl_records, tmp_path / "o", progress=False)
    assert report["totals"]["mapped"] == 902


@pytest.mark.slow
def test_cli_entry_points(tmp_path):
    out = tmp_path / "cli"
    run = subprocess.run(
        ["ecgqa", "map", "ptbxl", "--out", str(out), "-q"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    assert "mapped 902 of 902 samples" in run.stdout
    assert len(_json(out / "template/valid/60000.json")) == 38
    run = subprocess.run(
        [sys.executable, "-m", "mapping", "ptbxl", "--out", str(out), "--records", str(tmp_path), "-q"],
        capture_output=True,
        check=False,
        text=True,
    )
    assert run.returncode == 1 and "198 records referenced by the release were not found" in run.stderr


# ------------------------------------------------------------------ outputs we may replace (issue 13)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_remap_leaves_no_stale_shards(sample_paths, tmp_path):
    """P12: an earlier release's shards (other names) must not survive next to the new ones."""
    out = tmp_path / "out"
    map_release("ptbxl", sample_paths.ptbxl_release, sample_paths.ptbxl_records, out, progress=False)
    release = _copy_release(sample_paths, tmp_path)
    (release / "template/train/120000.json").rename(release / "template/train/7.json")
    shutil.rmtree(release / "paraphrased")
    report = map_release("ptbxl", release, sample_paths.ptbxl_records, out, progress=False)
    shards = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*/*.json"))
    assert shards == ["template/train/7.json", "template/valid/60000.json"] == sorted(report["files"])
    assert report["totals"]["mapped"] == 451
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "release"]  # no staging left beside it


def test_crash_while_swapping_keeps_the_old_output_whole(sample_paths, tmp_path, monkeypatch):
    """P13: a crash at the final step leaves the previous mapping complete, and the next run cleans up."""
    from mapping import mapper

    out = tmp_path / "out"
    map_release("ptbxl", sample_paths.ptbxl_release, sample_paths.ptbxl_records, out, progress=False)
    before = _tree(out)
    release = _copy_release(sample_paths, tmp_path)
    (release / "template/train/120000.json").rename(release / "template/train/7.json")

    def killed(build, target):
        raise KeyboardInterrupt("simulated kill at the swap")

    monkeypatch.setattr(mapper, "swap_dir", killed)
    with pytest.raises(KeyboardInterrupt):
        map_release("ptbxl", release, sample_paths.ptbxl_records, out, progress=False)
    assert _tree(out) == before
    monkeypatch.undo()
    # a leftover of a killed run (its pid is gone) is removed by the next run
    leftover = tmp_path / ".out.build-999999999"
    (leftover / "template").mkdir(parents=True)
    map_release("ptbxl", release, sample_paths.ptbxl_records, out, progress=False)
    assert (out / "template/train/7.json").is_file() and not (out / "template/train/120000.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "release"]


def test_map_refuses_an_out_it_did_not_write(sample_paths, tmp_path, capsys):
    from ecgqa.cli import main
    from ecgqa.files import OutputDirError

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(OutputDirError, match=r"mine already holds 1 entries \(notes.txt\) but no mapping_report.json"):
        map_release("ptbxl", sample_paths.ptbxl_release, sample_paths.ptbxl_records, mine, progress=False)
    assert _tree(mine) == {"notes.txt": b"keep"}
    target = tmp_path / "file.json"
    target.write_text("{}")
    src = [str(sample_paths.ptbxl_release), "--records", str(sample_paths.ptbxl_records)]
    assert main(["map", "ptbxl", *src, "--out", str(target), "-q"]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and err.count("\n") == 1 and target.read_text() == "{}"


def test_map_is_byte_identical_across_runs(sample_paths, tmp_path, mapped_sample):
    again = tmp_path / "again"
    report = map_release("ptbxl", sample_paths.ptbxl_release, sample_paths.ptbxl_records, again, progress=False)
    assert "seconds" in report and "seconds" not in _json(again / "mapping_report.json")
    assert _tree(again) == _tree(mapped_sample)


def test_map_disk_full_is_one_line_and_keeps_the_old_output(sample_paths, tmp_path, monkeypatch, capsys):
    import errno

    from ecgqa.cli import main
    from mapping import mapper

    out = tmp_path / "out"
    map_release("ptbxl", sample_paths.ptbxl_release, sample_paths.ptbxl_records, out, progress=False)
    before = _tree(out)

    def full(path, obj, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(mapper, "atomic_write_json", full)
    src = [str(sample_paths.ptbxl_release), "--records", str(sample_paths.ptbxl_records)]
    assert main(["map", "ptbxl", *src, "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on the device while writing ") and "mapping_report.json" in err
    assert err.count("\n") == 1 and _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_map_out_dot_is_a_clear_error(sample_paths, tmp_path, monkeypatch, capsys):
    from ecgqa.cli import main

    (tmp_path / "notes.txt").write_text("keep")
    monkeypatch.chdir(tmp_path)
    src = [str(sample_paths.ptbxl_release), "--records", str(sample_paths.ptbxl_records)]
    assert main(["map", "ptbxl", *src, "--out", ".", "-q"]) == 2
    err = capsys.readouterr().err
    assert "current folder" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
