"""The report folder (ecgqa/evaluation/report_folder.py): charts of a rerun replace the earlier run's, a metric
an arm lacks is n/a in the controls chart (never a 0 % bar), and the protocol card words every sample kind."""

from __future__ import annotations

import json
import math

from ecgqa.cli import main
from ecgqa.evaluation.report_folder import arm_bars, protocol_markdown, write_report


def _report(per_qt: dict, **extra) -> dict:
    return {
        "kind": "qa",
        "model": "m",
        "split": "valid",
        "n": sum(v["n"] for v in per_qt.values()),
        "em": 0.5,
        "per_question_type": per_qt,
        "per_question_attribute_type": {qt: {"noise": dict(v)} for qt, v in per_qt.items()},
        **extra,
    }


def _pngs(out):
    return sorted(p.relative_to(out).as_posix() for p in (out / "charts").glob("*.png"))


def test_a_rerun_leaves_no_chart_of_the_earlier_run(tmp_path):
    out = tmp_path / "report"
    first = write_report(
        out, _report({"single-verify": {"n": 4, "em": 0.5}, "single-query": {"n": 2, "em": 0.0}}), lines=[]
    )
    assert "charts/single-query.png" in first["charts"] and _pngs(out) == sorted(first["charts"])
    again = write_report(out, _report({"single-verify": {"n": 4, "em": 0.75}}), lines=[])
    assert "charts/single-query.png" not in again["charts"]
    assert _pngs(out) == sorted(again["charts"]) == ["charts/question_types.png", "charts/single-verify.png"]
    md = (out / "report.md").read_text()
    assert all(f"({c})" in md for c in again["charts"]) and "single-query.png" not in md
    write_report(out, _report({"single-verify": {"n": 4, "em": 0.75}}), lines=[], charts=False)
    assert _pngs(out) == []  # no chart at all beats charts of another run's numbers


def test_a_missing_metric_is_not_drawn_as_zero():
    per_type = {"single-verify": {"em": 0.5}, "single-query": {"em": None}, "single-choose": {"em": float("nan")}}
    heights, labels = arm_bars(per_type, ["single-verify", "single-query", "single-choose", "absent"], "em")
    assert heights[0] == 50.0 and labels[0] == "50"
    assert all(math.isnan(h) for h in heights[1:]) and labels[1:] == ["n/a", "n/a", "n/a"]
    assert arm_bars({"single-verify": {"em": 0.0}}, ["single-verify"], "em") == ([0.0], ["0"])  # a real 0 stays 0


def test_the_controls_chart_draws_an_arm_without_the_metric(tmp_path):
    arm = {"single-verify": {"n": 4, "em": 0.5, "balanced_accuracy_macro": 0.6}}
    ctrl = {"single-verify": {"n": 4, "em": 0.25, "balanced_accuracy_macro": None}}
    report = _report(
        {"single-verify": {"n": 4, "em": 0.5}},
        controls={"arms": {"model": {"per_question_type": arm}, "question-only": {"per_question_type": ctrl}}},
    )
    from ecgqa.evaluation.report_folder import make_charts

    charts = make_charts(report, tmp_path)
    assert {"charts/controls_em.png", "charts/controls_balanced_accuracy.png"} <= set(charts)
    assert all((tmp_path / c).stat().st_size > 1000 for c in charts)


def test_protocol_card_words_every_sample_kind():
    for kind in ("full", "paper", "draw", "first-n", "ids-file", "subset"):
        md = protocol_markdown({"sample": {"kind": kind, "n": 5, "n_in_split": 9, "fraction": 0.5, "seed": 1}})
        line = next(x for x in md.splitlines() if x.startswith("- sample: "))
        assert not line.startswith(f"- sample: {kind}:"), line  # the fallback that just echoes the kind
    md = protocol_markdown({"sample": {"kind": "subset", "n": 5, "n_in_split": 9}})
    assert "the answered subset: 5 of the split's 9 questions" in md and "not the full split" in md


def test_score_of_a_partial_answers_file_says_subset(tmp_path, prepared_qa):
    from ecgqa.data.prepared import PreparedData

    data = PreparedData(prepared_qa)
    rows = list(data.split("valid"))
    half = rows[: len(rows) // 2]
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"sample_id": r["sample_id"], "answer": ["yes"]}) + "\n" for r in half))
    out = tmp_path / "scored"
    rc = main(["score", "--data", str(prepared_qa), "--split", "valid", "--answers", str(answers), "--out", str(out),
               "--missing", "skip"])  # fmt: skip
    assert rc == 0
    card = json.loads((out / "report.json").read_text())["protocol"]
    assert card["sample"]["kind"] == "subset" and card["sample"]["n"] == len(half)
    md = (out / "report.md").read_text()
    assert f"the answered subset: {len(half)} of the split's {len(rows)} questions" in md
