"""``ecgqa generate check``: agreement with the release per template, and the disagreeing ids it names."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from ecgqa.generation.check import check_release, table


def test_bundled_release_agrees_on_every_metadata_template(sample_paths):
    report = check_release(sample_paths.release, sample_paths.ptbxl_records, measure=False, progress=False)
    rows = {r["template_id"]: r for r in report["per_template"]}
    assert report["samples_checked"] == 451
    for tid, n in ((26, 242), (27, 37), (28, 134)):
        assert rows[tid]["checked"] == n
        assert rows[tid]["agree"] == n and rows[tid]["text_agree"] == n and not rows[tid]["disagree_ids"]
    # numeric templates need the signal: without measurements they are errors that say why, never agreements
    for tid in (68, 69, 70):
        assert rows[tid]["agree"] == 0 and rows[tid]["error"] == rows[tid]["checked"]
        assert "within the normal range" in rows[tid]["errors"][0][1]
    assert report["per_attribute_type"]["noise"] == {
        "checked": 413,
        "agree": 413,
        "text_agree": 413,
        "attribute_agree": 413,
    }
    # the release's attribute field, template by template (26/27 the noise slot, 28 ["any kind of noises"],
    # 68-70 null) is what the generator writes for the same values
    assert all(r["attribute_agree"] == r["checked"] and not r["attribute_disagree_ids"] for r in rows.values())
    assert "| 26 | noise | 242 | 242 (100.0 %)" in table(report)
    assert "| 28 | noise | 134 | 134 (100.0 %) | 0 | 0 | 134 (100.0 %) | 134 (100.0 %) |" in table(report)


def test_a_changed_answer_is_named(tmp_path, sample_paths):
    release = tmp_path / "ecgqa" / "ptbxl"
    shutil.copytree(sample_paths.ptbxl_release, release)
    shard = release / "template" / "train" / "120000.json"
    samples = json.loads(shard.read_text())
    victim = samples[5]
    victim["answer"] = ["yes"] if victim["answer"] == ["no"] else ["no"]
    victim2 = samples[9]
    victim2["question"] = victim2["question"].replace("Does this ECG show", "Does this ECG have")
    victim3 = next(s for s in samples[10:] if s["template_id"] == 28)
    victim3["attribute"] = None  # what the generator wrote before version 3
    shard.write_text(json.dumps(samples))
    r = subprocess.run(
        [sys.executable, "-m", "ecgqa", "generate", "check", "--release", str(release), "--records",
         str(sample_paths.ptbxl_records), "--no-measure", "-q", "--json", str(tmp_path / "report.json")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"disagreeing sample ids [{victim['sample_id']}]" in r.stdout
    assert f"template 28: attribute disagrees in sample ids [{victim3['sample_id']}]" in r.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    row = next(x for x in report["per_template"] if x["template_id"] == victim["template_id"])
    assert row["disagree_ids"] == [victim["sample_id"]]
    errs = [sid for x in report["per_template"] for sid, _ in x["errors"]]
    assert victim2["sample_id"] in errs  # a text that fits no template is reported, not matched loosely
