"""``ecgqa prepare``'s defaults follow the previous step (issue 24): with no folder it takes what ``ecgqa map``
wrote by default (``mapped/ptbxl``), and ``--task attributes`` finds PTB-XL's ``ptbxl_database.csv`` beside
the records that mapping read; every choice is printed."""

from __future__ import annotations

import json
import shutil

import pytest

from ecgqa.cli import main
from ecgqa.data.prepared import PreparedData


@pytest.fixture
def records_subset(tmp_path, sample_paths):
    """A PTB-XL root holding a few of the bundled records and the metadata tables."""
    root = tmp_path / "my-ptbxl"
    (root / "records500" / "00000").mkdir(parents=True)
    headers = sorted((sample_paths.ptbxl_records / "records500" / "00000").glob("*_hr.hea"))[:60]
    for header in headers:
        for path in (header, header.with_suffix(".dat")):
            shutil.copy(path, root / "records500" / "00000" / path.name)
    for table in ("ptbxl_database.csv", "scp_statements.csv"):
        shutil.copy(sample_paths.ptbxl_records / table, root / table)
    return root, {int(h.name[:5]) for h in headers}


@pytest.mark.slow
def test_prepare_takes_the_mapped_folder_and_the_metadata_beside_its_records(
    records_subset, tmp_path, monkeypatch, capsys
):
    records, ids = records_subset
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["map", "ptbxl", "--records", str(records), "--skip-missing", "-q"]) == 0
    report = json.loads((work / "mapped" / "ptbxl" / "mapping_report.json").read_text())
    mapped_train = report["files"]["template/train/120000.json"]["mapped"]
    assert 0 < mapped_train < 413  # fewer than the bundled sample's: tells the two apart
    capsys.readouterr()

    assert main(["prepare", "--task", "attributes", "--rate", "100", "--out", str(tmp_path / "attrs"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "using mapped/ptbxl (written by `ecgqa map`" in err and "bundled sample" not in err
    assert f"using the PTB-XL metadata {records / 'ptbxl_database.csv'}" in err
    attrs = PreparedData(tmp_path / "attrs")
    assert attrs.meta["task"] == "upperbound" and attrs.meta.get("label_source", "attributes")
    assert {e for ids in attrs.split("train")["ecg_id"] for e in ids} <= ids

    assert main(["prepare", "--out", str(tmp_path / "qa"), "-q"]) == 0
    assert PreparedData(tmp_path / "qa").meta["splits"]["train"] == mapped_train


def test_two_mapped_versions_must_be_named(tmp_path, monkeypatch, capsys):
    for version in ("ptbxl", "mimic-iv-ecg"):
        (tmp_path / "mapped" / version).mkdir(parents=True)
        (tmp_path / "mapped" / version / "mapping_report.json").write_text(json.dumps({"version": version}))
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", "-q"]) == 2
    err = capsys.readouterr().err
    assert "both mapped/ptbxl and mapped/mimic-iv-ecg hold a mapping" in err or (
        "both mapped/mimic-iv-ecg and mapped/ptbxl" in err
    )
