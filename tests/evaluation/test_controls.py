"""Controls beside every number (``ecgqa.evaluation.controls``): the shuffled-ECG permutation, the majority
question-only reference, EM and balanced accuracy per arm, the paired bootstrap CI over ECGs, and a verdict
that follows the CI; then through ``ecgqa score --control`` / ``ecgqa report`` and ``ecgqa evaluate``."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from ecgqa.cli import main
from ecgqa.evaluation.controls import MajorityAnswers, compare, shuffled_ecg_map


def test_shuffled_ecg_map_is_a_seeded_permutation_without_fixed_points():
    ids = [5, 9, 9, 12, 40, 41, 77]
    m = shuffled_ecg_map(ids, seed=3)
    assert sorted(m) == sorted(set(ids)) and sorted(m.values()) == sorted(set(ids))  # a permutation
    assert all(k != v for k, v in m.items())  # every question sees another ECG
    assert m == shuffled_ecg_map(reversed(ids), seed=3)  # depends on the set and the seed only
    assert any(shuffled_ecg_map(ids, seed=s) != m for s in range(4, 10))
    with pytest.raises(ValueError, match="at least 2 distinct ECGs"):
        shuffled_ecg_map([7, 7])


def test_majority_answers_per_text_then_template_then_type():
    rows = [
        {"question": "q1", "template_id": 1, "question_type": "single-verify", "answer": ["no"]},
        {"question": "q1", "template_id": 1, "question_type": "single-verify", "answer": ["no"]},
        {"question": "q1", "template_id": 1, "question_type": "single-verify", "answer": ["yes"]},
        {"question": "q2", "template_id": 1, "question_type": "single-verify", "answer": ["yes"]},
        {"question": "q3", "template_id": 2, "question_type": "single-query", "answer": ["b", "a"]},
    ]
    m = MajorityAnswers(rows)
    assert m.answer("q1", 1, "single-verify") == ("no",)
    assert m.answer("q2", 1, "single-verify") == ("yes",)
    assert m.answer("unseen", 1, "single-verify") == ("no",)  # template 1: no 2, yes 2 -> tie, "no" sorts first
    assert m.answer("unseen", 2, "single-query") == ("a", "b")
    assert m.answer("unseen", 99, "single-query") == ("a", "b")  # by type
    assert m.answer("unseen", 99, "comparison_irrelevant-query") == ()
    assert m.fallbacks == {"question": 2, "template": 2, "type": 1, "none": 1}


def _rows(n_ecgs=60, per_ecg=6, seed=0, p_model=0.85):
    """Verify questions (30 % yes) over ECGs; the model is right with p_model, the control always says no."""
    rng = np.random.default_rng(seed)
    model, control = [], []
    sid = 0
    for e in range(n_ecgs):
        for t in range(per_ecg):
            truth = "yes" if rng.random() < 0.3 else "no"
            base = {"sample_id": sid, "question_type": "single-verify", "question": f"text {t}"}
            model.append({**base, "true": [truth], "ecg_id": [1000 + e], "correct": bool(rng.random() < p_model)})
            control.append({"sample_id": sid, "correct": truth == "no"})
            sid += 1
    return model, control


def _independent_balanced(rows, correct):
    by_text = defaultdict(lambda: defaultdict(list))
    for r, c in zip(rows, correct, strict=True):
        by_text[r["question"]]["|".join(r["true"])].append(c)
    texts = [v for v in by_text.values() if len(v) >= 2]
    return float(np.mean([np.mean([np.mean(x) for x in v.values()]) for v in texts]))


def test_compare_metrics_equal_an_independent_recomputation_and_the_ci_resamples_ecgs():
    model, control = _rows()
    block = compare(model, {"question-only": control}, n_bootstrap=400, seed=5)
    mc = [r["correct"] for r in model]
    cc = [r["correct"] for r in control]
    arms = block["arms"]
    assert arms["model"]["em"] == pytest.approx(np.mean(mc))
    assert arms["question-only"]["em"] == pytest.approx(np.mean(cc))
    assert arms["question-only"]["balanced_accuracy_macro"] == pytest.approx(0.5)  # constant "no"
    assert arms["model"]["balanced_accuracy_macro"] == pytest.approx(_independent_balanced(model, mc))
    d = block["differences"]["question-only"]["balanced_accuracy_macro"]
    assert d["diff"] == pytest.approx(_independent_balanced(model, mc) - 0.5)

    # the CI, recomputed by hand: ECGs drawn with replacement (same draws), EM difference per resample
    rng = np.random.default_rng(5)
    n_ecg = 60
    draws = rng.multinomial(n_ecg, np.full(n_ecg, 1 / n_ecg), size=400)
    cluster = np.array([r["ecg_id"][0] - 1000 for r in model])
    diffs = [
        np.average(np.array(mc, float) - np.array(cc, float), weights=w[cluster]) if w[cluster].sum() else np.nan
        for w in draws
    ]
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    assert block["differences"]["question-only"]["em"]["ci"] == pytest.approx([lo, hi])
    assert block["n_ecg_clusters"] == n_ecg and block["n_paired"] == len(model)
    assert block["primary_metric"] == "balanced_accuracy_macro"
    assert block["verdict"]["per_control"] == {"question-only": "above"} and block["verdict"]["above_all"]


def test_ci_over_ecgs_is_wider_than_over_questions_when_questions_of_an_ecg_agree():
    """Six questions per ECG, all right or all wrong together: a question-level bootstrap would be ~sqrt(6)
    times too narrow; resampling ECGs is not fooled."""
    rng = np.random.default_rng(1)
    model, control = [], []
    for e in range(80):
        ok = bool(rng.random() < 0.6)
        for t in range(6):
            sid = 6 * e + t
            model.append({"sample_id": sid, "question_type": "single-query", "question": "q", "true": ["x"],
                          "ecg_id": [e], "correct": ok})  # fmt: skip
            control.append({"sample_id": sid, "correct": False})
    ci = compare(model, {"c": control}, n_bootstrap=500)["differences"]["c"]["em"]["ci"]
    as_questions = compare([{**r, "ecg_id": [r["sample_id"]]} for r in model], {"c": control}, n_bootstrap=500)[
        "differences"
    ]["c"]["em"]["ci"]
    assert (ci[1] - ci[0]) > 2 * (as_questions[1] - as_questions[0])


def test_verdict_follows_the_ci_never_the_point_estimate():
    model, _ = _rows(p_model=0.85)
    same = [{"sample_id": r["sample_id"], "correct": r["correct"]} for r in model]
    v = compare(model, {"shuffled-ecg": same}, n_bootstrap=200)["verdict"]
    assert v["per_control"] == {"shuffled-ecg": "indistinguishable"} and not v["above_all"]
    assert "NOT shown" in v["sentence"] and "do not show that it uses the ECG" in v["sentence"]
    better = [{"sample_id": r["sample_id"], "correct": True} for r in model]
    v = compare(model, {"shuffled-ecg": better}, n_bootstrap=200)["verdict"]
    assert v["per_control"] == {"shuffled-ecg": "below"} and "NOT shown" in v["sentence"]
    # a tiny true edge on few ECGs: the point estimate is positive, the CI spans 0 -> not "above"
    rng = np.random.default_rng(2)
    few = [dict(r, ecg_id=[r["sample_id"] % 4]) for r in model[:40]]
    noisy = [{"sample_id": r["sample_id"], "correct": bool(rng.random() < 0.8)} for r in few]
    b = compare(few, {"shuffled-ecg": noisy}, n_bootstrap=300)
    d = b["differences"]["shuffled-ecg"][b["primary_metric"]]
    expected = "above" if d["ci"][0] > 0 else "below" if d["ci"][1] < 0 else "indistinguishable"
    assert b["verdict"]["per_control"]["shuffled-ecg"] == expected


def test_failed_lines_are_left_out_and_unpaired_samples_counted():
    model, control = _rows(n_ecgs=10)
    model[0]["correct"] = None  # a failed request: not scored
    control = control[:-5]  # the control did not answer the last five
    b = compare(model, {"c": control}, n_bootstrap=50)
    assert b["n_paired"] == len(model) - 1 - 5 and b["n_model_only"] == 5


# ------------------------------------------------------------------------------------ through the CLI


def _questions(prepared_qa):
    from ecgqa.data.prepared import PreparedData

    p = PreparedData(prepared_qa)
    t = p.split("valid")
    classes = p.classes
    return (
        p,
        [
            {
                "sample_id": r["sample_id"],
                "true": [classes[c] for c in r["answer"]],
                "valid": [classes[c] for c in r["valid_classes"]],
                "ecg_id": r["ecg_id"],
                "question": r["question"],
                "question_type": r["question_type"],
            }
            for r in t
        ],
    )


def test_score_with_controls_and_report_side_by_side(tmp_path, prepared_qa, capsys):
    _, qs = _questions(prepared_qa)
    # the "model" knows the answer for every ECG it is asked about; the "control" gives one fixed answer per text
    answers = tmp_path / "model.jsonl"
    answers.write_text("".join(json.dumps({"sample_id": q["sample_id"], "answer": q["true"]}) + "\n" for q in qs))
    majority = Counter((q["question"], tuple(q["true"])) for q in qs)
    fixed = {}
    for (text, ans), _n in sorted(majority.items(), key=lambda kv: -kv[1]):
        fixed.setdefault(text, list(ans))
    control = tmp_path / "qonly.jsonl"
    control.write_text(
        "".join(json.dumps({"sample_id": q["sample_id"], "answer": fixed[q["question"]]}) + "\n" for q in qs)
    )
    out = tmp_path / "scored"
    rc = main(
        ["score", "--data", str(prepared_qa), "--split", "valid", "--answers", str(answers), "--out", str(out),
         "--control", f"question-only={control}"]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    c = report["controls"]
    em_control = np.mean([fixed[q["question"]] == q["true"] for q in qs])
    assert c["arms"]["model"]["em"] == 1.0 and c["arms"]["question-only"]["em"] == pytest.approx(em_control)
    assert c["differences"]["question-only"]["em"]["diff"] == pytest.approx(1 - em_control)
    assert c["verdict"]["sentence"] in printed and c["verdict"]["sentence"] in (out / "report.md").read_text()
    lines = [json.loads(x) for x in (out / "controls" / "question-only.jsonl").read_text().splitlines()]
    assert len(lines) == len(qs) and np.mean([x["correct"] for x in lines]) == pytest.approx(em_control)
    assert "charts/controls_em.png" in report["charts"] and (out / "charts" / "controls_em.png").is_file()
    card = report["protocol"]
    assert card["split"] == "valid" and card["sample"]["kind"] == "full" and card["sample"]["n"] == len(qs)
    assert sum(card["n_per_question_type"].values()) == len(qs)
    assert not any(x["comparable"] for x in card["comparable_with_published"])  # valid split: never comparable

    assert main(["report", str(out)]) == 0
    side = capsys.readouterr().out
    assert "above its controls?" in side and "## scored — controls:" in side
    assert "| model | question-only |" in side.replace(
        "| metric | model | question-only |", "| model | question-only |"
    )


def test_score_control_errors_are_one_line(tmp_path, prepared_qa, capsys):
    _, qs = _questions(prepared_qa)
    answers = tmp_path / "a.jsonl"
    answers.write_text("".join(json.dumps({"sample_id": q["sample_id"], "answer": q["true"]}) + "\n" for q in qs))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sample_id": 1, "answer": ["no"]}\n')
    args = ["score", "--data", str(prepared_qa), "--split", "valid", "--answers", str(answers)]
    assert main([*args, "--out", str(tmp_path / "o"), "--control", f"x={bad}"]) == 2
    assert "bad.jsonl:1: sample_id 1 is not a question" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "o2"), "--control", "=x"]) == 2
    assert "expected NAME=FILE" in capsys.readouterr().err


@pytest.mark.slow  # trains a checkpoint fixture
def test_evaluate_writes_controls_that_recompute_from_their_lines(qa_checkpoint, prepared_qa, tmp_path):
    from ecgqa.data.prepared import PreparedData
    from ecgqa.evaluation.evaluate import evaluate

    out = tmp_path / "report"
    report = evaluate(qa_checkpoint, prepared_qa, "valid", out, batch_size=8, progress=False, n_bootstrap=200)
    c = report["controls"]
    lines = {
        name: [json.loads(x) for x in (out / "controls" / f"{name}.jsonl").read_text().splitlines()]
        for name in ("shuffled-ecg", "question-only")
    }
    model = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    # shuffled: the same questions, each shown another ECG, one permutation of the split's ECGs
    shuffled = lines["shuffled-ecg"]
    assert [x["sample_id"] for x in shuffled] == [x["sample_id"] for x in model]
    assert all(x["shown_ecg_id"] != x["ecg_id"] for x in shuffled)
    mapping = {}
    for x in shuffled:
        for real, shown in zip(x["ecg_id"], x["shown_ecg_id"], strict=True):
            assert mapping.setdefault(real, shown) == shown
    assert sorted(mapping.values()) == sorted(mapping)
    # question-only: the majority answer per question text of the train split, recomputed here
    p = PreparedData(prepared_qa)
    train = p.split("train")
    counts: dict[str, Counter] = defaultdict(Counter)
    for r in train:
        counts[r["question"]][tuple(sorted(r["answer"]))] += 1
    for x in lines["question-only"]:
        if x["question"] in counts:
            best = min(counts[x["question"]].items(), key=lambda kv: (-kv[1], kv[0]))[0]
            assert x["predicted"] == [p.classes[i] for i in best if p.classes[i] in x["valid"]]
    # every arm's EM and the verdict re-derived from the saved lines
    for name, arm in c["arms"].items():
        rows = model if name == "model" else lines[name]
        assert arm["em"] == pytest.approx(np.mean([x["correct"] for x in rows]))
    again = compare(model, lines, n_bootstrap=200, seed=0)
    assert again["verdict"] == c["verdict"] and again["differences"] == c["differences"]
    card = report["protocol"]
    assert card["sample"]["kind"] == "full" and card["input"].startswith("the ECG signal")
    assert "Controls: does the model use the ECG?" in (out / "report.md").read_text()
