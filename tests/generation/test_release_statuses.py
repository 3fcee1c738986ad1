"""``ecgqa.generation.release_statuses`` reads a release through ``ecgqa.data.release`` (the one shard reader):
the same statuses as harvesting the shards read with plain ``json``, and a malformed shard is an error that
names the file (and the sample)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ecgqa.data.release import ReleaseError
from ecgqa.generation.release_statuses import ReleaseStatusError, harvest, load, release_shards


@pytest.fixture
def release_copy(tmp_path, sample_paths) -> Path:
    out = tmp_path / "ecgqa" / "ptbxl"
    shutil.copytree(sample_paths.ptbxl_release, out)
    return out


def test_load_equals_harvest_over_the_shards_read_with_json(sample_paths):
    root = sample_paths.ptbxl_release
    paths = sorted(root.glob("template/*/*.json"))  # independent of ecgqa.data.release.shards
    assert {p.relative_to(root).as_posix() for p in release_shards(root)} == {
        p.relative_to(root).as_posix() for p in paths
    }
    want = harvest(s for p in paths for s in json.loads(p.read_text()))
    got = load(root)
    assert got.statuses == want.statuses and got.questions == want.questions > 0
    assert not got.contradictions and not want.contradictions


def test_a_folder_without_shards_is_named(tmp_path):
    with pytest.raises(ReleaseStatusError, match=f"{tmp_path}: no template/<split>/\\*.json shards"):
        load(tmp_path)


def test_a_malformed_shard_is_an_error_naming_the_file(release_copy):
    shard = release_copy / "template" / "valid" / "60000.json"
    shard.write_text(shard.read_text()[:-40])  # cut short: not JSON any more
    with pytest.raises(ReleaseError, match=f"^{shard}: malformed JSON"):
        load(release_copy)


def test_a_sample_without_ecg_ids_is_an_error_naming_file_and_sample(release_copy):
    shard = release_copy / "template" / "train" / "120000.json"
    samples = json.loads(shard.read_text())
    del samples[3]["ecg_id"]
    shard.write_text(json.dumps(samples))
    with pytest.raises(ReleaseError, match=rf"^{shard}: sample #3 \(sample_id {samples[3]['sample_id']}\) lacks"):
        load(release_copy)


def test_generate_with_a_malformed_release_is_one_line(tmp_path, release_copy, sample_paths):
    """``generate ptbxl --statuses release`` on a broken shard: exit 2, one line naming the shard, no output."""
    import pandas as pd

    root = tmp_path / "ptbxl"
    root.mkdir()
    db = pd.read_csv(sample_paths.ptbxl_records / "ptbxl_database.csv")
    db.head(4).to_csv(root / "ptbxl_database.csv", index=False)
    for name in ("scp_statements.csv", "records500"):
        (root / name).symlink_to(sample_paths.ptbxl_records / name)
    shard = release_copy / "template" / "valid" / "60000.json"
    shard.write_text("{not json")
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "ecgqa", "generate", "ptbxl", "--records", str(root), "--out", str(out),
         "--no-measure", "-q", "--statuses", "release", "--release", str(release_copy)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"error: {shard}: malformed JSON") and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()
