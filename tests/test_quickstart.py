"""``ecgqa quickstart`` end to end (a few training steps), its hold-out split by ECG, the attribute
classifier's AUC scoring and the demo contract (``ensure_demo``)."""

from __future__ import annotations

import json

import pytest

from ecgqa.cli import main
from ecgqa.data.release import load_shard, shards
from ecgqa.quickstart import DemoPaths, _auc, auc_markdown, demo_paths, ensure_demo, holdout_by_ecg


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


def test_rank_auc_matches_sklearn():
    import numpy as np
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.integers(0, 2, 40)
        scores = np.round(rng.random(40), 1)  # ties on purpose
        if 0 < labels.sum() < 40:
            assert _auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert np.isnan(_auc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_auc_markdown_says_plainly_whether_it_learned():
    base = {
        "n_ecgs": 50,
        "macro_auc": 0.81,
        "macro_ci95": [0.75, 0.86],
        "control_macro_auc": 0.52,
        "classes": [
            {
                "class": "sinus rhythm",
                "auc": 0.9,
                "ci95": [0.8, 0.97],
                "positives": 30,
                "negatives": 20,
                "control_auc": 0.5,
            }
        ],
    }
    yes = auc_markdown({**base, "difference_ci95": [0.2, 0.35], "learned": True})
    assert "The ECG side learned something" in yes and "| sinus rhythm | 0.900 (0.800–0.970) | 30/20 | 0.500 |" in yes
    no = auc_markdown({**base, "difference_ci95": [-0.05, 0.1], "learned": False})
    assert "No evidence that the ECG side learned" in no


def test_classes_with_too_few_labels_get_no_interval():
    """Issue 24: 2 held-out positives printed a 1.000–1.000 interval; such classes are marked, with the minimum."""
    import numpy as np

    from ecgqa.quickstart import MIN_FOR_INTERVAL, auc_result

    rng = np.random.default_rng(0)
    n = 60
    labels = np.zeros((n, 3))
    labels[:2, 0] = 1  # 2 positives: AUC defined, too few for an interval
    labels[:MIN_FOR_INTERVAL, 1] = 1  # just enough
    labels[:30, 2] = 1
    probs = np.clip(labels * 0.6 + rng.random((n, 3)) * 0.5, 0, 1)  # the positives rank first
    result = auc_result(probs, labels, ["rare", "few", "common"], n_boot=200)
    by = {e["class"]: e for e in result["classes"]}
    assert by["rare"]["positives"] == 2 and by["rare"]["ci95"] is None and by["rare"]["auc"] == 1.0
    assert by["few"]["ci95"] is not None and by["common"]["ci95"] is not None
    table = auc_markdown(result)
    assert f"| rare | 1.000 (too few for an interval: needs {MIN_FOR_INTERVAL}+/{MIN_FOR_INTERVAL}−) | 2/58 |" in table
    assert "1.000–1.000" not in table.split("| few")[0]
    assert f"1 class with fewer than {MIN_FOR_INTERVAL} held-out positives or negatives" in table


def test_ensure_demo_returns_existing_paths_without_training(tmp_path, prepared_qa):
    import shutil

    from ecgqa.checkpoint import REQUIRED

    paths = demo_paths(tmp_path)
    paths.checkpoint.mkdir(parents=True)
    for name in REQUIRED:  # a finished checkpoint's files: ensure_demo must not start a quickstart run
        (paths.checkpoint / name).write_text("{}")
    shutil.copytree(prepared_qa, paths.data)
    got = ensure_demo(tmp_path, quiet=True)
    assert isinstance(got, DemoPaths) and got.checkpoint == paths.checkpoint and got.data == paths.data
    assert got.attributes_checkpoint is None  # no attribute classifier trained in this folder


def test_quickstart_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    thesis = tmp_path / "thesis"
    (thesis / "sub").mkdir(parents=True)
    (thesis / "a.txt").write_text("my thesis")
    (thesis / "sub" / "data.csv").write_text("precious")
    (tmp_path / "notes.txt").write_text("a file")
    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / "quickstart.json").write_text('{"written_by": "someone else"}')
    (forged / "keep.txt").write_text("x")
    for out in (thesis, tmp_path / "notes.txt", forged):
        assert main(["quickstart", "--out", str(out), "-q"]) == 2
        assert "quickstart output" in capsys.readouterr().err
    assert (thesis / "a.txt").read_text() == "my thesis" and (thesis / "sub" / "data.csv").read_text() == "precious"
    assert sorted(p.name for p in thesis.iterdir()) == ["a.txt", "sub"]
    assert (tmp_path / "notes.txt").read_text() == "a file"
    assert sorted(p.name for p in forged.iterdir()) == ["keep.txt", "quickstart.json"]


def test_qa_model_option_picks_the_model_and_its_steps(capsys):
    """--qa-model fusion-sewrn-quick: run C of docs/controls.md (1200 steps, lr 3e-3, frozen ECG side started from a
    300-step se-wrn-quick classifier, a cap that lets it finish); the default stays fusion-quick's budget."""
    import argparse

    from ecgqa.cli import build_parser
    from ecgqa.quickstart import DEFAULTS, qa_plan

    def plan(*argv):
        return qa_plan(build_parser().parse_args(["quickstart", *argv]))

    default = plan()
    assert (default.model, default.steps, default.lr, default.minutes) == ("fusion-quick", 300, 1e-3, 0.8)
    assert default.overrides == {} and default.init_steps == 0
    assert qa_plan(argparse.Namespace(**DEFAULTS)) == default  # ensure_demo's defaults agree

    sewrn = plan("--qa-model", "fusion-sewrn-quick")
    assert (sewrn.model, sewrn.steps, sewrn.lr) == ("fusion-sewrn-quick", 1200, 3e-3)
    assert sewrn.overrides == {"feature_grad_mult": 0.0} and (sewrn.init_steps, sewrn.init_lr) == (300, 1e-3)
    assert sewrn.minutes >= 5  # the 0.8-minute --minutes cap stopped it near 300 steps
    assert plan("--qa-model", "fusion-sewrn-quick", "--minutes", "0.1").minutes == sewrn.minutes
    mine = plan("--qa-model", "fusion-sewrn-quick", "--qa-steps", "600", "--qa-minutes", "2", "--lr", "5e-4")
    assert (mine.steps, mine.minutes, mine.lr) == (600, 2.0, 3e-3)  # --lr is the other models'; 3e-3 is the run's
    assert plan("--qa-model", "fusion-sewrn-quick", "--qa-steps", "0") is None
    assert plan("--qa-steps", "50", "--lr", "5e-4").steps == 50 and plan("--lr", "5e-4").lr == 5e-4

    with pytest.raises(SystemExit) as exit_:
        main(["quickstart", "--qa-model", "fusion-base"])
    assert exit_.value.code == 2 and "fusion-sewrn-quick" in capsys.readouterr().err


def _check_qa_learning(out, printed: str) -> None:
    """QA learning: balanced generated questions, patients held out, and the verdict re-derived from the saved
    predictions of the model and of both controls (never taken from the report)."""
    from collections import Counter

    import pandas as pd

    from ecgqa import sample
    from ecgqa.data.prepared import PreparedData
    from ecgqa.evaluation.controls import compare

    data = PreparedData(out / "prepared" / "ptbxl-generated-balanced-qa")
    assert data.rate == 100 and sorted(data.splits) == ["test", "train"]
    train, test = data.split("train"), data.split("test")
    assert {t for t in train["question_type"]} <= {"single-verify", "single-choose", "single-query"}
    meta = pd.read_csv(sample.paths().ptbxl_records / "ptbxl_database.csv").set_index("ecg_id")
    patients = {
        name: {meta.at[e, "patient_id"] for ids in t["ecg_id"] for e in ids}
        for name, t in (("train", train), ("test", test))
    }
    assert patients["test"] and not patients["test"] & patients["train"]  # split by patient
    yes_no = Counter()
    for q, qt, a in zip(train["question"], train["question_type"], train["answer"], strict=True):
        if qt == "single-verify":
            yes_no[(q, data.classes[a[0]])] += 1
    texts = {q for q, _ in yes_no}
    assert texts and all(yes_no[(q, "yes")] == yes_no[(q, "no")] for q in texts)  # --balanced

    folder = out / "reports" / "qa-learning"

    def lines(path):
        return [json.loads(x) for x in path.read_text().splitlines()]

    model = lines(folder / "predictions.jsonl")
    controls = {n: lines(folder / "controls" / f"{n}.jsonl") for n in ("shuffled-ecg", "question-only")}
    saved = json.loads((out / "qa_learning.json").read_text())["controls"]
    again = compare(model, controls, n_bootstrap=50, seed=0)
    assert again["verdict"] == saved["verdict"] and again["differences"] == saved["differences"]
    assert saved["verdict"]["sentence"] in printed
    assert ("Target not reached" in printed) == (not saved["verdict"]["above_all"])
    report = json.loads((folder / "report.json").read_text())
    assert "blind-quick" in report["controls"]["how"]["question-only"]
    assert report["protocol"]["questions"].startswith("generated by `ecgqa generate --balanced`")
    assert not any(r["comparable"] for r in report["protocol"]["comparable_with_published"])


@pytest.mark.slow
def test_quickstart_fast_run(tmp_path, capsys):
    from ecgqa.data.prepared import PreparedData

    out = tmp_path / "qs"
    assert (
        main(
            [
                "quickstart",
                "--out",
                str(out),
                "--max-steps",
                "2",
                "--attribute-steps",
                "3",
                "--batch-size",
                "4",
                "--bootstrap",
                "50",
                "--qa-steps",
                "3",
                "-q",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    _check_qa_learning(out, printed)

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
    assert table.splitlines()[0] == "| | fusion-quick | blind-quick |"
    ems = []
    for name in ("fusion-quick", "blind-quick"):
        report = json.loads((out / "reports" / name / "report.json").read_text())
        assert report["model"] == name and report["split"] == "test" and report["n"] == len(test_ids)
        lines = (out / "reports" / name / "predictions.jsonl").read_text().splitlines()
        assert sorted(json.loads(x)["sample_id"] for x in lines) == test_ids
        assert (out / "checkpoints" / name / "model.safetensors").is_file()
        ems.append(f"**{100 * report['em']:.1f}** (n={report['n']})")
    assert f"| **EM** | {ems[0]} | {ems[1]} |" in table
    assert str(out / "comparison.md") in printed

    # the attribute classifier: dense labels of the same ECG split, scored on held-out ECGs only
    attrs = PreparedData(out / "prepared" / "ptbxl-attributes")
    assert attrs.task == "upperbound" and attrs.rate == 100
    attr_ecgs = {name: {e for ids in attrs.split(name)["ecg_id"] for e in ids} for name in ("train", "test")}
    assert attr_ecgs["test"] <= set(split["ecgs"]["test"]) and not attr_ecgs["test"] & attr_ecgs["train"]
    result = json.loads((out / "attributes.json").read_text())
    assert result["n_ecgs"] == len(attr_ecgs["test"]) and len(result["classes"]) >= 20
    assert all(0 <= e["ci95"][0] <= e["auc"] <= e["ci95"][1] <= 1 for e in result["classes"] if e["ci95"])
    assert all(e["ci95"] or min(e["positives"], e["negatives"]) < result["min_for_interval"] for e in result["classes"])
    assert "control_macro_auc" in result and isinstance(result["learned"], bool)
    md = (out / "attributes.md").read_text()
    assert md in printed and ("learned something" in md or "No evidence" in md)
    assert json.loads((out / "quickstart.json").read_text())["written_by"] == "ecgqa quickstart"
    demo = ensure_demo(out)
    assert demo.attributes_checkpoint == out / "checkpoints" / "se-wrn-quick"
    assert demo.checkpoint == out / "checkpoints" / "fusion-quick"
