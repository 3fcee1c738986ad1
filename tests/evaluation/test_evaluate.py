"""``ecgqa evaluate``: its exact match equals an independent recomputation from predictions.jsonl and
the release CSVs, on real comparison samples (with ``none`` answers) plus hand-made single-choose /
query / verify samples over real records (the bundled sample has none of those)."""

from __future__ import annotations

import ast
import csv
import itertools
import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from ecgqa.cli import main

# Hand-made samples over real sample records. "expected" is the exact match a model that scores only
# the HIGH classes > 0.5 (whatever the input) must get; see test_rigged_model_scores_exactly_as_designed.
HIGH = ("no", "lead I", "left axis deviation", "within the normal range", "qt interval", "static noise")
HAND_MADE = [
    # (template_id, question_type, attribute_type, question, attribute, answer, n_ecgs, expected)
    (26, "single-verify", "noise", "Does this ECG show static noise in lead I?", ["static noise"], ["no"], 1, True),
    (26, "single-verify", "noise", "Does this ECG show static noise in lead II?", ["static noise"], ["yes"], 1, False),
    # choose: valid classes are the options named in `attribute`; "left axis deviation" is the answer
    (
        22,
        "single-choose",
        "heart_axis",
        "Which heart axis does this ECG show, left axis deviation or right axis deviation?",
        ["left axis deviation", "right axis deviation"],
        ["left axis deviation"],
        1,
        True,
    ),
    # choose with "X of Y" options: the class is the part before " of "
    (
        41,
        "single-choose",
        "numeric_feature",
        "Is the qt interval of this ECG below the normal range of qt interval or within the normal range of qt interval?",  # noqa: E501 - the release text
        ["below the normal range of qt interval", "within the normal range of qt interval"],
        ["below the normal range"],
        1,
        False,
    ),
    # choose answered none: a high score for "left axis deviation" is outside the options, so it must not count
    (
        22,
        "single-choose",
        "heart_axis",
        "Which heart axis does this ECG show, normal heart axis or right axis deviation?",
        ["normal heart axis", "right axis deviation"],
        ["none"],
        1,
        True,
    ),
    (
        30,
        "single-query",
        "noise",
        "What kind of noises does this ECG show?",
        ["any kind of noises"],
        ["none"],
        1,
        False,
    ),
    (
        30,
        "single-query",
        "noise",
        "What kind of noises does this ECG show?",
        ["any kind of noises"],
        ["static noise"],
        1,
        True,
    ),
    (
        19,
        "single-query",
        "scp_code",
        "Which leads show non-specific st depression?",
        ["non-specific st depression"],
        ["lead I"],
        1,
        True,
    ),
    (
        19,
        "single-query",
        "scp_code",
        "Which leads show non-specific st depression?",
        ["non-specific st depression"],
        ["lead I", "lead II"],
        1,
        False,
    ),
    (
        43,
        "comparison_consecutive-verify",
        "scp_code",
        "Does the recent ECG show any new symptoms?",
        None,
        ["no"],
        2,
        True,
    ),
    (
        43,
        "comparison_consecutive-verify",
        "scp_code",
        "Does the recent ECG show any new symptoms?",
        None,
        ["yes"],
        2,
        False,
    ),
]


def _records(sample_paths) -> dict[int, str]:
    root = sample_paths.ptbxl_records / "records500"
    out = {}
    for hea in sorted(root.glob("*/*_hr.hea")):
        out[int(hea.name[:5])] = str(hea.with_suffix(""))
    return out


@pytest.fixture(scope="module")
def test_release(tmp_path_factory, mapped_sample, sample_paths) -> Path:
    """A mapped release whose test split holds the hand-made samples and the real comparison samples."""
    out = tmp_path_factory.mktemp("release") / "ptbxl"
    (out / "template" / "test").mkdir(parents=True)
    for name in ("answers.csv", "answers_for_each_template.csv", "mapping_report.json"):
        shutil.copy(mapped_sample / name, out / name)
    records = _records(sample_paths)
    ids = sorted(records)
    samples = []
    for k, (tid, qt, at, question, attribute, answer, n_ecgs, _) in enumerate(HAND_MADE):
        ecg_id = [ids[k], ids[k + 20]][:n_ecgs]
        samples.append(
            {
                "template_id": tid,
                "question_id": 9000 + k,
                "sample_id": 900000 + k,
                "question_type": qt,
                "attribute_type": at,
                "question": question,
                "answer": answer,
                "ecg_id": ecg_id,
                "attribute": attribute,
                "ecg_path": [records[i] for i in ecg_id],
            }
        )
    samples += json.loads((mapped_sample / "template" / "valid" / "60000.json").read_text())
    (out / "template" / "test" / "90000.json").write_text(json.dumps(samples))
    return out


@pytest.fixture(scope="module")
def prepared_test(tmp_path_factory, test_release) -> Path:
    from ecgqa.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "hand-made-qa"
    prepare(test_release, out, variant="template", task="qa", rate=500, progress=False)
    return out


def _release_truth(release: Path) -> tuple[dict[int, dict], list[str]]:
    """sample_id -> {true, valid, question_type, attribute_type}, from the release CSVs and shard alone."""
    with (release / "answers.csv").open(newline="") as f:
        classes = [row["class"] for row in csv.DictReader(f) if row["class"] != "none"]
    with (release / "answers_for_each_template.csv").open(newline="") as f:
        per_template = {int(r["template_id"]): ast.literal_eval(r["classes"]) for r in csv.DictReader(f)}
    truth = {}
    for s in json.loads((release / "template" / "test" / "90000.json").read_text()):
        if s["question_type"].endswith("choose"):
            valid = {a if a in classes else a.split(" of ")[0] for a in s["attribute"]}
        else:
            valid = set(per_template[s["template_id"]]) - {"none"}
        assert valid <= set(classes)
        truth[s["sample_id"]] = {
            "true": set(s["answer"]) - {"none"},
            "valid": valid,
            "question_type": s["question_type"],
            "attribute_type": s["attribute_type"],
        }
    return truth, classes


def _recompute(out: Path, release: Path) -> tuple[dict, dict[int, bool]]:
    truth, _ = _release_truth(release)
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(x["sample_id"] for x in lines) == sorted(truth)
    correct = {}
    by_qt, by_at = defaultdict(list), defaultdict(list)
    for x in lines:
        t = truth[x["sample_id"]]
        assert set(x["valid"]) == t["valid"], x["sample_id"]
        assert set(x["true"]) == t["true"], x["sample_id"]
        assert set(x["scores"]) == t["valid"]  # scores over the valid classes only
        predicted = {c for c in t["valid"] if x["scores"][c] > 0.5}
        assert set(x["predicted"]) == predicted
        ok = predicted == t["true"] & t["valid"]
        assert x["correct"] == ok, x["sample_id"]
        correct[x["sample_id"]] = ok
        by_qt[t["question_type"]].append(ok)
        by_at[t["attribute_type"]].append(ok)
    summary = {
        "n": len(lines),
        "em": float(np.mean(list(correct.values()))),
        "em_macro_question_type": float(np.mean([np.mean(v) for v in by_qt.values()])),
        "em_macro_single": float(np.mean([np.mean(v) for k, v in by_qt.items() if k.startswith("single-")])),
        "per_question_type": {k: {"n": len(v), "em": float(np.mean(v))} for k, v in by_qt.items()},
        "per_attribute_type": {k: {"n": len(v), "em": float(np.mean(v))} for k, v in by_at.items()},
    }
    return summary, correct


def _assert_report_matches(report: dict, summary: dict) -> None:
    assert report["n"] == summary["n"]
    assert report["em"] == pytest.approx(summary["em"])
    assert report["em_macro_question_type"] == pytest.approx(summary["em_macro_question_type"])
    assert report["em_macro_all"] == pytest.approx(summary["em_macro_question_type"])
    assert report["em_macro_single"] == pytest.approx(summary["em_macro_single"])
    for key in ("per_question_type", "per_attribute_type"):
        assert set(report[key]) == set(summary[key])
        for k, v in summary[key].items():
            assert report[key][k]["n"] == v["n"]
            assert report[key][k]["em"] == pytest.approx(v["em"])


@pytest.mark.slow  # trains a checkpoint fixture
def test_evaluate_em_equals_independent_recomputation(qa_checkpoint, prepared_test, test_release, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(
        [
            "evaluate",
            "--checkpoint",
            str(qa_checkpoint),
            "--data",
            str(prepared_test),
            "--split",
            "test",
            "--out",
            str(out),
            "--batch-size",
            "8",
            "-q",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    # the paper's columns, then the single-ECG and all-types macros (percent, one decimal)
    row = next(line for line in printed.splitlines() if line.startswith("| fusion"))
    cells = row.split(" | ")
    pq = report["per_question_type"]
    assert (
        cells[1] == f"{100 * pq['single-verify']['em']:.1f}"
        and cells[4] == f"{100 * pq['comparison_consecutive-verify']['em']:.1f}"
    )
    assert cells[5] == "–"  # no comparison_consecutive-query sample
    assert cells[8] == f"{100 * report['em_macro_single']:.1f}" and cells[9] == f"{100 * report['em_macro_all']:.1f}"
    summary, _ = _recompute(out, test_release)
    _assert_report_matches(report, summary)
    assert report["kind"] == "qa" and report["split"] == "test" and report["checkpoint"] == str(qa_checkpoint)
    assert "note" not in report
    assert set(report["per_question_type"]) == {
        "single-verify",
        "single-choose",
        "single-query",
        "comparison_consecutive-verify",
        "comparison_irrelevant-query",
    }
    assert 0 <= report["label_metrics"]["precision"] <= 1 and report["label_metrics"]["n_decisions"] > 0
    md = (out / "report.md").read_text()
    assert f"**{100 * report['em']:.1f}** (n={report['n']})" in md
    for chart in report["charts"]:
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "charts/question_types.png" in report["charts"]


@pytest.mark.slow  # trains a checkpoint fixture
def test_rigged_model_scores_exactly_as_designed(qa_checkpoint, prepared_test, test_release, tmp_path):
    """A copy of the checkpoint whose head ignores its input and scores only HIGH classes > 0.5: every
    hand-made sample's exact match is then known in advance (threshold over valid classes only)."""
    from safetensors.numpy import load_file, save_file

    from ecgqa.evaluation.evaluate import evaluate

    ckpt = tmp_path / "rigged"
    shutil.copytree(qa_checkpoint, ckpt)
    classes = json.loads((ckpt / "config.json").read_text())["classes"]
    weights = load_file(ckpt / "model.safetensors")
    weights["head.weight"][:] = 0
    weights["head.bias"][:] = [4.0 if c in HIGH else -4.0 for c in classes]
    save_file(weights, ckpt / "model.safetensors", metadata={"format": "pt"})

    out = tmp_path / "report"
    report = evaluate(ckpt, prepared_test, "test", out, batch_size=16, progress=False)
    summary, correct = _recompute(out, test_release)
    _assert_report_matches(report, summary)
    for k, row in enumerate(HAND_MADE):
        assert correct[900000 + k] is row[-1], (k, row[3])
    # the real comparison samples: only those whose answer is exactly {"qt interval"} can be right
    real = json.loads((test_release / "template" / "test" / "90000.json").read_text())[len(HAND_MADE) :]
    assert any(s["answer"] == ["none"] for s in real)
    for s in real:
        assert correct[s["sample_id"]] is (set(s["answer"]) == {"qt interval"})
    assert report["per_question_type"]["single-choose"] == {"n": 3, "em": pytest.approx(2 / 3)}


def _auc_by_pairs(y, s):
    pos = [p for p, t in zip(s, y, strict=False) if t]
    neg = [p for p, t in zip(s, y, strict=False) if not t]
    if not pos or not neg:
        return None
    return sum((p > q) + 0.5 * (p == q) for p, q in itertools.product(pos, neg)) / (len(pos) * len(neg))


@pytest.mark.slow  # trains a checkpoint fixture
def test_evaluate_upperbound_per_class_metrics(upperbound_checkpoint, prepared_upperbound, mapped_sample, tmp_path):
    from ecgqa.evaluation.evaluate import evaluate

    out = tmp_path / "ub"
    report = evaluate(upperbound_checkpoint, prepared_upperbound, "train", out, progress=False)
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert report["kind"] == "upperbound" and report["n"] == len(lines) > 0
    assert "trained on split 'train'" in report["note"]  # the only split with samples: flagged, not hidden
    release = {s["sample_id"]: s for s in json.loads((mapped_sample / "template/train/120000.json").read_text())}
    per_class = defaultdict(lambda: ([], []))
    for x in lines:
        # every bundled train question is "Does this ECG show <attribute>[ in lead <L>]?": one label each
        s = release[x["sample_id"]]
        where = re.search(r" in lead (\w+)\?$", s["question"])
        lead = where.group(1) if where else "entire"
        assert x["lead_group"] == lead and x["valid"] == [s["attribute"][0]]
        ok = all((x["scores"][c] > 0.5) == (c in x["true"]) for c in x["valid"])
        assert x["correct"] == ok
        for c in x["valid"]:
            per_class[c][0].append(c in x["true"])
            per_class[c][1].append(x["scores"][c])
    assert report["em"] == pytest.approx(np.mean([x["correct"] for x in lines]))
    assert set(report["per_class"]) == set(per_class)
    for c, (y, s) in per_class.items():
        got = report["per_class"][c]
        assert got["n"] == len(y) and got["n_positive"] == sum(y)
        assert got["accuracy"] == pytest.approx(np.mean([(p > 0.5) == t for p, t in zip(s, y, strict=False)]))
        auc = _auc_by_pairs(y, s)
        assert got["auc"] == (pytest.approx(auc) if auc is not None else None)
    assert "charts/per_class_auc.png" in report["charts"] and (out / "charts/per_class_auc.png").is_file()


@pytest.mark.slow  # trains a checkpoint fixture
def test_evaluate_refuses_mismatched_data(upperbound_checkpoint, prepared_qa, tmp_path, capsys):
    rc = main(
        [
            "evaluate",
            "--checkpoint",
            str(upperbound_checkpoint),
            "--data",
            str(prepared_qa),
            "--split",
            "valid",
            "--out",
            str(tmp_path / "x"),
            "-q",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "upperbound" in err and str(prepared_qa) in err
    assert not (tmp_path / "x" / "report.json").exists()


def test_evaluate_bad_counts_are_one_line_errors(tmp_path, capsys):
    for flag in ("--batch-size", "--limit"):
        rc = main(
            [
                "evaluate",
                "--checkpoint",
                str(tmp_path),
                "--data",
                str(tmp_path),
                "--out",
                str(tmp_path / "r"),
                flag,
                "0",
            ]
        )
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith(f"error: {flag} 0: must be a positive integer"), err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # trains a checkpoint fixture
def test_evaluate_out_must_be_ours(qa_checkpoint, prepared_test, tmp_path, capsys):
    """--out an existing file or a folder of someone else's: refused, nothing deleted; our own report: replaced."""
    a_file = tmp_path / "report.txt"
    a_file.write_text("mine")
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("precious")
    for out in (a_file, folder):
        rc = main(
            [
                "evaluate",
                "--checkpoint",
                str(qa_checkpoint),
                "--data",
                str(prepared_test),
                "--split",
                "test",
                "--out",
                str(out),
                "--limit",
                "2",
                "-q",
            ]
        )
        err = capsys.readouterr().err
        assert rc == 2 and "error: --out" in err and "Traceback" not in err, err
    assert a_file.read_text() == "mine" and sorted(p.name for p in folder.iterdir()) == ["chapter1.tex"]
    ours = tmp_path / "ours"
    for _ in range(2):  # a re-run over its own report folder is allowed
        assert (
            main(
                [
                    "evaluate",
                    "--checkpoint",
                    str(qa_checkpoint),
                    "--data",
                    str(prepared_test),
                    "--split",
                    "test",
                    "--out",
                    str(ours),
                    "--limit",
                    "2",
                    "-q",
                ]
            )
            == 0
        )
    assert json.loads((ours / "report.json").read_text())["n"] == 2
    assert oct((ours / "report.json").stat().st_mode & 0o777) != oct(0o600)  # umask honoured, not mkstemp's 0600


@pytest.mark.slow  # trains a checkpoint fixture
def test_check_compatible_names_both_rates_and_the_fix(qa_checkpoint, prepared_qa):
    from types import SimpleNamespace

    from ecgqa.checkpoint import CheckpointError, check_compatible, load_checkpoint
    from ecgqa.data.prepared import PreparedData

    ckpt = load_checkpoint(qa_checkpoint, device="cpu")
    data = PreparedData(prepared_qa)
    check_compatible(ckpt, data)  # the data it was trained on
    check_compatible(ckpt, data, tokenizer=True)
    other = SimpleNamespace(meta={**data.meta, "rate": 250, "signal_length": 2500}, path="prepared/at-250")
    with pytest.raises(CheckpointError, match=r"250 Hz x 2500 samples.*500 Hz x 5000.*--rate 500 --seconds 10"):
        check_compatible(ckpt, other)
    swapped = SimpleNamespace(meta={**data.meta, "classes": data.classes[::-1]}, path="prepared/other")
    with pytest.raises(CheckpointError, match="first difference at index 0"):
        check_compatible(ckpt, swapped)
    with pytest.raises(CheckpointError, match="prepared for task 'upperbound'"):
        check_compatible(ckpt, SimpleNamespace(meta={**data.meta, "task": "upperbound"}, path="p"))
    # an upperbound classifier reading the ECGs of QA data (LLM grounding): rate and length only
    qa_meta = SimpleNamespace(meta={**data.meta, "task": "upperbound", "classes": ["x"]}, path="p")
    check_compatible(ckpt, qa_meta, signal_only=True)
    with pytest.raises(CheckpointError, match="250 Hz"):
        check_compatible(ckpt, SimpleNamespace(meta={**qa_meta.meta, "rate": 250}, path="p"), signal_only=True)


@pytest.mark.slow  # trains a checkpoint fixture
def test_upperbound_checkpoint_reads_attributes_data(upperbound_checkpoint, prepared_upperbound):
    from types import SimpleNamespace

    from ecgqa.checkpoint import check_compatible, load_checkpoint
    from ecgqa.data.torch_datasets import PreparedData

    ckpt = load_checkpoint(upperbound_checkpoint, device="cpu")
    meta = PreparedData(prepared_upperbound).meta
    check_compatible(ckpt, SimpleNamespace(meta={**meta, "task": "attributes"}, path="p"))  # same classes, dense labels
