"""`ecgqa records-needed`: exactly the records a release references, as a download list, and --check of a copy."""

from __future__ import annotations

import json
import shutil

import pytest
import wfdb

from ecgqa.cli import main
from ecgqa.distribution.records_needed import (
    PHYSIONET_BASE,
    RecordsNeededError,
    check,
    expected_dat_bytes,
    records_needed,
)
from tests.data.test_mimic import STUDIES, build_mimic_release, build_mimic_root


def _release_ids(folder, splits=("train", "valid")):
    """ECG ids referenced by the release's template shards, read with plain json (independent of the module)."""
    ids = set()
    for split in splits:
        for shard in (folder / "template" / split).glob("*.json"):
            ids.update(i for s in json.loads(shard.read_text()) for i in s["ecg_id"])
    return sorted(ids)


def test_ptbxl_list_is_exactly_the_referenced_records(sample_paths, tmp_path, capsys):
    ids = _release_ids(sample_paths.ptbxl_release)
    out = tmp_path / "urls.txt"
    assert main(["records-needed", "ptbxl", str(sample_paths.release), "--out", str(out)]) == 0
    urls = out.read_text().splitlines()
    base = "https://physionet.org/files/ptb-xl/1.0.3/"
    assert urls[:2] == [base + "ptbxl_database.csv", base + "scp_statements.csv"]
    expected = [f"{base}records500/{i // 1000 * 1000:05d}/{i:05d}_hr.{ext}" for i in ids for ext in ("hea", "dat")]
    assert urls[2:] == expected and len(ids) == 198
    err = capsys.readouterr().err
    assert "198 ECGs" in err and "wget -c -x -nH --cut-dirs=3" in err
    # every listed record is one the bundled copy holds: the paths are right
    for url in urls[2:]:
        assert (sample_paths.ptbxl_records / url.removeprefix(base)).is_file()

    only_valid = records_needed("ptbxl", sample_paths.release, splits=["valid"], rate=100)
    assert only_valid.ids == _release_ids(sample_paths.ptbxl_release, ["valid"])
    assert only_valid.records[0].startswith("records100/") and only_valid.records[0].endswith("_lr")
    assert only_valid.estimated_bytes() == len(only_valid.ids) * (12 * 1000 * 2 + 620)


def test_a_mapped_folder_is_read_like_its_release(sample_paths, mapped_sample):
    """`ecgqa map` output (variant folders, a mapping_report.json, no answers.csv) lists the same records."""
    assert (mapped_sample / "mapping_report.json").is_file()
    got = records_needed("ptbxl", mapped_sample)
    want = records_needed("ptbxl", sample_paths.release)
    assert got.records == want.records and got.questions == want.questions == 451


def test_check_reports_present_missing_and_truncated(sample_paths, tmp_path, capsys):
    needed = records_needed("ptbxl", sample_paths.release, splits=["valid"])
    root = tmp_path / "ptbxl"
    for rec in needed.records:
        for ext in ("hea", "dat"):
            (root / f"{rec}.{ext}").parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(sample_paths.ptbxl_records / f"{rec}.{ext}", root / f"{rec}.{ext}")
    for f in needed.root_files:
        shutil.copy2(sample_paths.ptbxl_records / f, root / f)
    gone, cut = needed.records[0], needed.records[1]
    (root / f"{gone}.dat").unlink()
    with (root / f"{cut}.dat").open("r+b") as f:
        f.truncate(1000)

    result = check(root, needed)
    assert result.missing == [gone]
    assert [r for r, _ in result.truncated] == [cut] and "1000 bytes" in result.truncated[0][1]
    assert result.present == needed.records[2:] and not result.ok
    assert result.refetch() == [f"{r}.{e}" for r in (gone, cut) for e in ("hea", "dat")]

    out = tmp_path / "refetch.txt"
    argv = ["records-needed", "ptbxl", str(sample_paths.release), "--splits", "valid", "--check", str(root), "-q"]
    assert main([*argv, "--out", str(out), "--format", "paths"]) == 1  # not complete: status 1
    assert out.read_text().splitlines() == result.refetch()
    assert f"{len(needed.records) - 2} of {len(needed.records)} records present, 1 missing, 1 truncated" in (
        capsys.readouterr().err
    )


def test_expected_size_agrees_with_wfdb(sample_paths):
    rec = sample_paths.ptbxl_records / "records500/00000/00002_hr"
    header = wfdb.rdheader(str(rec))
    assert (
        expected_dat_bytes(f"{rec}.hea")
        == header.n_sig * header.sig_len * 2
        == (rec.with_suffix(".dat")).stat().st_size
    )


def test_mimic_needs_record_list_and_lists_study_paths(tmp_path, sample_paths, capsys):
    root = tmp_path / "mimic"
    paths = build_mimic_root(root)
    build_mimic_release(tmp_path / "ecgqa" / "mimic-iv-ecg", sample_paths)
    release = tmp_path / "ecgqa"
    with pytest.raises(RecordsNeededError, match="record_list.csv"):
        records_needed("mimic-iv-ecg", release)
    # the release references 49999999, which record_list.csv does not hold: named in the error
    with pytest.raises(RecordsNeededError, match="1 study ids .* 49999999"):
        records_needed("mimic-iv-ecg", release, record_list=root / "record_list.csv")

    # a generated set (any folder of question files) that only references listed studies
    generated = tmp_path / "generated" / "train"
    generated.mkdir(parents=True)
    samples = json.loads((release / "mimic-iv-ecg" / "template" / "train" / "00000.json").read_text())[:2]
    (generated / "part-0.json").write_text(json.dumps(samples))
    out = tmp_path / "mimic.txt"
    argv = ["records-needed", "mimic", str(tmp_path / "generated"), "--record-list", str(root / "record_list.csv")]
    assert main([*argv, "--out", str(out)]) == 0
    base = PHYSIONET_BASE["mimic-iv-ecg"]
    want = [base + "record_list.csv"] + [f"{base}{paths[s]}.{e}" for s in sorted(STUDIES) for e in ("hea", "dat")]
    assert out.read_text().splitlines() == want
    assert "--ask-password" in capsys.readouterr().err  # how credentials are passed, never a password argument

    # --check against the test shard layout: all present, then one record truncated
    assert main([*argv, "--check", str(root), "--out", str(tmp_path / "again.txt"), "-q"]) == 0
    assert (tmp_path / "again.txt").read_text() == ""
    victim = root / f"{paths[41256771]}.dat"
    victim.write_bytes(victim.read_bytes()[:-2])
    assert main([*argv, "--check", str(root), "--out", str(tmp_path / "again.txt"), "-q"]) == 1
    assert (tmp_path / "again.txt").read_text().splitlines() == [f"{base}{paths[41256771]}.{e}" for e in ("hea", "dat")]


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert main(["records-needed", "ptbxl", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "q.json").write_text("{not json")
    assert main(["records-needed", "ptbxl", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "q.json" in err and "Traceback" not in err
