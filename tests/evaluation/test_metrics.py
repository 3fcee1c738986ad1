"""The exact-match metric and friends, checked against hand-worked cases and brute-force loops."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from ecgqa.cli import main
from ecgqa.evaluation import metrics
from ecgqa.evaluation.report import compare_table, load_report
from ecgqa.evaluation.report_folder import render_markdown


def test_exact_match_hand_cases():
    # classes: 0 "no", 1 "yes", 2 "lead I", 3 "lead II"
    valid = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0]], bool)
    labels = np.array([[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1], [1, 0, 0, 0], [0, 0, 1, 0], [1, 0, 1, 0]], bool)
    probs = np.array(
        [
            [0.2, 0.9, 0.99, 0.99],  # right: high scores outside the valid classes do not count
            [0.9, 0.9, 0.1, 0.49],  # right: none = nothing valid above the threshold
            [0.0, 0.0, 0.51, 0.7],  # right: both lead classes above the threshold
            [0.6, 0.6, 0.0, 0.0],  # wrong: an extra class
            [0.0, 0.0, 0.4, 0.1],  # wrong: a missing class
            [0.7, 0.1, 0.0, 0.0],  # right: a true class outside the valid set is ignored
        ]
    )
    assert metrics.exact_match(probs, labels, valid).tolist() == [True, True, True, False, False, True]
    # 0.5 itself is "no" (the reference code's `probs > 0.5`): a true class scored exactly 0.5 is missed
    at_threshold = probs.copy()
    at_threshold[2, 2] = 0.5
    assert not metrics.exact_match(at_threshold, labels, valid)[2]
    pred = metrics.predict(probs, valid)
    assert pred[0].tolist() == [False, True, False, False]
    assert pred[2].tolist() == [False, False, True, True]


def test_exact_match_equals_set_comparison_on_random_data():
    rng = np.random.default_rng(0)
    n, c = 400, 9
    probs = rng.random((n, c))
    probs[rng.random((n, c)) < 0.1] = 0.5  # exercise the boundary
    valid = rng.random((n, c)) < 0.5
    labels = (rng.random((n, c)) < 0.3) & valid
    got = metrics.exact_match(probs, labels, valid)
    expected = []
    for i in range(n):
        options = {j for j in range(c) if valid[i, j]}
        predicted = {j for j in options if probs[i, j] > 0.5}
        expected.append(predicted == {j for j in options if labels[i, j]})
    assert got.tolist() == expected
    assert 0 < got.sum() < n


def test_exact_match_sets_treats_none_as_empty():
    got = metrics.exact_match_sets([["none"], [], ["a", "b"], ["a"]], [[], ["none"], ["b", "a"], ["a", "b"]])
    assert got.tolist() == [True, True, True, False]


def test_em_summary_groups_and_macro():
    correct = np.array([1, 1, 0, 0, 1, 0, 1], bool)
    qts = ["single-verify"] * 4 + ["comparison_irrelevant-query"] * 2 + ["single-choose"]
    ats = ["noise", "noise", "scp_code", "scp_code", "numeric_feature", "numeric_feature", "heart_axis"]
    s = metrics.em_summary(correct, qts, ats)
    assert s["n"] == 7 and s["em"] == pytest.approx(4 / 7)
    assert list(s["per_question_type"]) == ["single-verify", "single-choose", "comparison_irrelevant-query"]
    assert s["per_question_type"]["single-verify"] == {"n": 4, "em": 0.5}
    assert s["per_question_type"]["comparison_irrelevant-query"] == {"n": 2, "em": 0.5}
    assert s["em_macro_question_type"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert s["per_attribute_type"]["scp_code"] == {"n": 2, "em": 0.0}
    assert list(s["per_attribute_type"]) == ["scp_code", "noise", "heart_axis", "numeric_feature"]


def _auc_by_pairs(y, s):
    """AUC as the share of (positive, negative) pairs ranked right, ties half: the definition."""
    pos, neg = s[y == 1], s[y == 0]
    wins = sum((p > q) + 0.5 * (p == q) for p, q in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_label_metrics_against_hand_counts():
    rng = np.random.default_rng(1)
    n, c = 60, 5
    probs = rng.random((n, c)).round(2)
    valid = rng.random((n, c)) < 0.6
    valid[:, 4] = False  # a class never valid: no AUC
    labels = rng.random((n, c)) < 0.4
    m = metrics.label_metrics(probs, labels, valid)
    y, s = labels[valid].astype(int), probs[valid]
    tp = int(((s > 0.5) & (y == 1)).sum())
    fp = int(((s > 0.5) & (y == 0)).sum())
    fn = int(((s <= 0.5) & (y == 1)).sum())
    assert m["n_decisions"] == int(valid.sum())
    assert m["precision"] == pytest.approx(tp / (tp + fp))
    assert m["recall"] == pytest.approx(tp / (tp + fn))
    assert m["auc_micro"] == pytest.approx(_auc_by_pairs(y, s))
    per_class = [_auc_by_pairs(labels[valid[:, j], j].astype(int), probs[valid[:, j], j]) for j in range(4)]
    assert m["n_classes_with_auc"] == 4
    assert m["auc_macro"] == pytest.approx(np.mean(per_class))


def test_upperbound_metrics_score_only_labelled_entries():
    classes = ["afib", "lbbb", "noise"]
    probs = np.array([[0.9, 0.2, 0.99], [0.1, 0.8, 0.99], [0.6, 0.7, 0.0], [0.3, 0.1, 0.0]])
    mask = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 0], [1, 0, 1]], bool)
    labels = np.array([[1, 0, 1], [0, 1, 1], [0, 1, 0], [1, 0, 0]], bool)
    m = metrics.upperbound_metrics(probs, labels, mask, classes)
    assert m["per_class"]["afib"] == {"n": 4, "n_positive": 2, "accuracy": 0.5, "auc": 0.75}
    # lbbb labelled twice: (0.2, no), (0.7, yes) -> both right, AUC 1
    assert m["per_class"]["lbbb"] == {"n": 2, "n_positive": 1, "accuracy": 1.0, "auc": 1.0}
    # noise labelled once, negative only: accuracy defined, AUC undefined
    assert m["per_class"]["noise"] == {"n": 1, "n_positive": 0, "accuracy": 1.0, "auc": None}
    assert m["auc_macro"] == pytest.approx(0.875)
    assert m["accuracy_micro"] == pytest.approx(5 / 7)
    assert metrics.upperbound_correct(probs, labels, mask).tolist() == [True, True, False, False]


def _report(kind, em, macro, per_qt, **extra):
    return {
        "kind": kind,
        "model": extra.pop("model", kind),
        "split": "test",
        "n": sum(v["n"] for v in per_qt.values()),
        "em": em,
        "em_macro_question_type": macro,
        "per_question_type": per_qt,
        "per_attribute_type": {"noise": {"n": 3, "em": 1 / 3}},
        **extra,
    }


def test_report_command_tabulates_folders_and_files(tmp_path, capsys):
    a = tmp_path / "fusion"
    a.mkdir()
    (a / "report.json").write_text(
        json.dumps(
            _report(
                "qa",
                0.5,
                0.25,
                {"single-verify": {"n": 4, "em": 0.5}, "comparison_irrelevant-query": {"n": 2, "em": 0.0}},
            )
        )
    )
    b = tmp_path / "gpt.json"
    b.write_text(json.dumps(_report("llm", 0.754, 0.754, {"single-verify": {"n": 3, "em": 0.754}}, llm="gpt")))
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "t.md")]) == 0
    table = capsys.readouterr().out
    assert (tmp_path / "t.md").read_text() == table
    lines = table.splitlines()
    assert lines[0] == "| | fusion | gpt |"
    assert "| **EM** | **50.0** (n=6) | **75.4** (n=3) |" in lines
    assert "| single-verify | 50.0 (n=4) | 75.4 (n=3) |" in lines
    assert "| comparison_irrelevant-query | 0.0 (n=2) | – |" in lines
    assert "| noise | 33.3 (n=3) | 33.3 (n=3) |" in lines
    # question types come in the canonical order, before attribute types
    assert (
        lines.index("| single-verify | 50.0 (n=4) | 75.4 (n=3) |")
        < lines.index("| comparison_irrelevant-query | 0.0 (n=2) | – |")
        < lines.index("| noise | 33.3 (n=3) | 33.3 (n=3) |")
    )


def test_report_rejects_what_is_not_a_report(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"accuracy": 1}))
    with pytest.raises(ValueError, match="x.json.*lacks"):
        load_report(bad)
    with pytest.raises(FileNotFoundError, match="report.json"):
        load_report(tmp_path)
    assert main(["report", str(bad)]) == 2
    # probe N15: a report.json of the wrong shape is one error naming the file and the field, never a traceback
    for fields, field in (
        ({"per_question_type": [1, 2]}, "per_question_type"),
        ({"per_question_type": {"single-verify": "x"}}, "per_question_type"),
        ({"em": "abc"}, "em must be a number"),
        ({"em": float("nan")}, "em must be a number"),
    ):
        odd = tmp_path / "odd.json"
        odd.write_text(json.dumps({"em": 0.5, "per_question_type": {}, **fields}))
        with pytest.raises(ValueError, match=f"odd.json: {field}"):
            load_report(odd)
        assert main(["report", str(odd), "--paper"]) == 2


def test_render_markdown_lists_extra_blocks():
    r = _report(
        "upperbound",
        0.5,
        0.5,
        {"single-verify": {"n": 2, "em": 0.5}},
        checkpoint="ck",
        per_class={"afib": {"n": 2, "n_positive": 1, "accuracy": 0.5, "auc": None}},
        auc_macro=None,
        accuracy_macro=0.5,
        accuracy_micro=0.5,
        charts=["charts/question_types.png"],
    )
    md = render_markdown(r)
    assert "| afib | 2 | 1 | 50.0 | – |" in md
    assert "![question_types](charts/question_types.png)" in md
    assert compare_table([r], ["x"]).splitlines()[0] == "| | x |"


def test_em_summary_names_both_macros():
    correct = np.array([1, 0, 1, 1, 0, 0], bool)
    qts = [
        "single-verify",
        "single-verify",
        "single-choose",
        "single-query",
        "comparison_consecutive-query",
        "comparison_irrelevant-verify",
    ]
    s = metrics.em_summary(correct, qts, ["noise"] * 6)
    assert s["em_macro_single"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    assert s["em_macro_all"] == pytest.approx((0.5 + 1.0 + 1.0 + 0.0 + 0.0) / 5)
    assert s["em_macro_question_type"] == s["em_macro_all"]  # the old name, still written
    assert metrics.em_summary(correct[4:], qts[4:], ["noise"] * 2)["em_macro_single"] is None


def test_paper_table_columns_and_references(tmp_path, capsys):
    per_qt = {
        "single-verify": {"n": 4, "em": 0.75},
        "single-query": {"n": 2, "em": 0.5},
        "comparison_irrelevant-query": {"n": 2, "em": 0.0},
    }
    old = _report("qa", 0.5, 0.4, per_qt, model="fusion")  # an old report: no em_macro_single/all keys
    (tmp_path / "fusion").mkdir()
    (tmp_path / "fusion" / "report.json").write_text(json.dumps(old))
    assert main(["report", str(tmp_path / "fusion"), "--paper"]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(line for line in lines if line.startswith("| model | S-Verify"))
    assert head.split(" | ")[1:10] == [
        "S-Verify",
        "S-Choose",
        "S-Query",
        "CC-Verify",
        "CC-Query",
        "CI-Verify",
        "CI-Query",
        "Macro (single)",
        "Macro (all)",
    ]
    ours = next(line for line in lines if line.startswith("| fusion |"))
    # single macro recomputed from the per-type block: (75 + 50) / 2; all-types macro: the stored old name
    assert ours.split(" | ")[1:10] == ["75.0", "–", "50.0", "–", "–", "–", "0.0", "62.5", "40.0"]
    # an old report has no protocol card: no published row is placed beside it, and each says why
    assert not any("(PTB-XL, published)" in line for line in lines)
    assert any(line.startswith("- M3AE (Macro (single) 57.6") for line in lines)
    from ecgqa.evaluation.report import paper_results

    assert all(r["source"] for r in paper_results())


def test_report_shows_unmatched_and_failed_counts_per_run(tmp_path, capsys):
    """A model answering "no" to everything and one whose replies match nothing must not look alike: each
    run's count of replies matching no option and of questions failed / missing (not scored) is shown."""
    verify = {"single-verify": {"n": 6, "em": 0.0}}
    says_no = _report("llm", 0.0, 0.0, verify, llm="m1")
    says_no.update({"n_questions": 6, "n_no_match": 0, "n_failed": 0})
    rambles = _report("llm", 0.0, 0.0, verify, llm="m2")
    rambles.update({"n_questions": 8, "n_no_match": 6, "n_failed": 2})
    scored = _report("answers", 0.5, 0.5, verify)
    scored.update({"n_questions": 7, "n_no_match": 1, "n_missing": 1})
    trained = _report("qa", 0.5, 0.5, verify)
    paths = []
    for name, r in (("no", says_no), ("ramble", rambles), ("score", scored), ("fusion", trained)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(r))
        paths.append(str(tmp_path / name))
    assert main(["report", *paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "| replies matching no option (scored wrong) | 0 of 6 | 6 of 8 | 1 of 7 | – |" in lines
    assert "| failed or missing (not scored) | 0 of 6 | 2 of 8 | 1 of 7 | – |" in lines
    # a table of trained models alone has no such rows
    assert "failed or missing" not in compare_table([trained], ["fusion"])
