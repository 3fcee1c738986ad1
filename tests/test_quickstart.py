"""``ecgqa quickstart`` end to end (a few training steps), and its hold-out split by ECG."""

from __future__ import annotations

import json

import pytest

from ecgqa.cli import main
from ecgqa.quickstart import holdout_by_ecg
from ecgqa.release import load_shard, shards


def _check_holdout(mapped, release, report) -> None:
    """No ECG on both sides; each question sits where its ECGs are, or is left out when they straddle."""
    test_ecgs, train_ecgs = set(report["ecgs"]["test"]), set(report["ecgs"]["train"])
    assert test_ecgs and train_ecgs and not test_ecgs & train_ecgs
    side = {}
    for name in ("train", "test"):
        for s in load_shard(release / "template" / name / "00000.json"):
            side[s["sample_id"]] = name
    left_out = set(report["left_out_samples"])
    originals = [s for shard in shards(mapped, variants=("template",)) for s in load_shard(shard)]
    assert len(side) + len(left_out) == len(originals)
    for s in originals:
        ids = set(s["ecg_id"])
        if ids <= test_ecgs:
            assert side[s["sample_id"]] == "test"
        elif ids <= train_ecgs:
            assert side[s["sample_id"]] == "train"
        else:
            assert s["sample_id"] in left_out and len(ids) == 2


def test_holdout_by_ecg_is_disjoint_and_seeded(mapped_sample, tmp_path):
    a = holdout_by_ecg(mapped_sample, tmp_path / "a" / "ptbxl", test_fraction=0.5, seed=1)
    _check_holdout(mapped_sample, tmp_path / "a" / "ptbxl", a)
    n_ecgs = len(a["ecgs"]["test"]) + len(a["ecgs"]["train"])
    assert abs(len(a["ecgs"]["test"]) - n_ecgs / 2) <= n_ecgs * 0.1  # held-out ECGs of left-out questions drop
    b = holdout_by_ecg(mapped_sample, tmp_path / "b" / "ptbxl", test_fraction=0.5, seed=1)
    c = holdout_by_ecg(mapped_sample, tmp_path / "c" / "ptbxl", test_fraction=0.5, seed=2)
    assert a["ecgs"] == b["ecgs"] and a["ecgs"] != c["ecgs"]
    with pytest.raises(ValueError, match="test-fraction"):
        holdout_by_ecg(mapped_sample, tmp_path / "d", test_fraction=1.5)


def test_quickstart_fast_run(tmp_path, capsys):
    from ecgqa.data import PreparedData

    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--max-steps", "2", "--batch-size", "4", "-q"]) == 0
    printed = capsys.readouterr().out

    release = out / "release" / "ptbxl"
    split = json.loads((release / "split_report.json").read_text())
    _check_holdout(out / "mapped" / "ptbxl", release, split)
    data = PreparedData(out / "prepared" / "ptbxl-template-qa")
    assert sorted(data.splits) == ["test", "train"]
    seen = {name: {e for ids in data.split(name)["ecg_id"] for e in ids} for name in ("train", "test")}
    assert seen["test"] == set(split["ecgs"]["test"]) and not seen["test"] & seen["train"]
    test_ids = sorted(data.split("test")["sample_id"])

    table = (out / "comparison.md").read_text()
    assert table in printed
    assert table.splitlines()[0] == "| | fusion-small | blind |"
    ems = []
    for name in ("fusion-small", "blind"):
        report = json.loads((out / "reports" / name / "report.json").read_text())
        assert report["model"] == name and report["split"] == "test" and report["n"] == len(test_ids)
        lines = (out / "reports" / name / "predictions.jsonl").read_text().splitlines()
        assert sorted(json.loads(x)["sample_id"] for x in lines) == test_ids
        assert (out / "checkpoints" / name / "model.safetensors").is_file()
        ems.append(f"**{100 * report['em']:.1f}** (n={report['n']})")
    assert f"| **EM** | {ems[0]} | {ems[1]} |" in table
    assert str(out / "comparison.md") in printed
