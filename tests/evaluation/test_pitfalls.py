"""docs/scoring-pitfalls.md, pinned: for each pitfall, the same replies scored by a re-implementation of the
naive rule (as PEERS.md describes the peer's code) and by ours; the two numbers are asserted."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from ecgqa.cli import main
from ecgqa.evaluation.controls import MajorityAnswers, compare
from ecgqa.evaluation.replies import reply_correct

VERIFY = ["yes", "no", "not sure"]
LEADS = ["lead I", "lead II", "lead III", "lead aVR", "lead aVL", "lead aVF", "lead V1", "lead V2"]


def _ours(cases) -> int:
    """How many replies `ecgqa score` (the paper rule of ecgqa.evaluation.replies) counts right."""
    return sum(reply_correct(reply, options, true) for reply, options, true in cases)


def _substring(reply: str, options: list[str]) -> set[str]:
    """Substring matching: every option whose text occurs anywhere in the lowercased reply."""
    return {o for o in options if o.lower() in reply.lower()}


def test_pitfall_1_substring_matching():
    cases = [  # (reply, options offered, true answer) — every reply is right
        ("Not sure.", VERIFY, ["not sure"]),
        ("lead II", [*LEADS, "None"], ["lead II"]),
        ("Yes, it is normal.", VERIFY, ["yes"]),
        ("lead aVF", [*LEADS, "None"], ["lead aVF"]),
        ("lead V2", [*LEADS, "None"], ["lead V2"]),
    ]
    naive = [_substring(r, [o for o in opts if o != "None"]) == set(t) for r, opts, t in cases]
    # "not sure" holds "no", "lead II" holds "lead I", "normal" holds "no"; the last two have no overlap
    assert naive == [False, False, False, True, True]
    assert (sum(naive), _ours(cases)) == (2, 5)


def _charset(reply: str, options: list[str], true: list[str]) -> bool:
    """Character-set comparison: the characters of the matched options joined vs those of the gold string."""
    found = "".join(o for o in options if o.lower() in reply.lower())
    return set(found.lower()) == set(", ".join(true).lower())


def test_pitfall_2_character_sets():
    cases = [  # every reply is WRONG
        ("lead I, lead II", LEADS, ["lead II"]),
        ("lead I", LEADS, ["lead II"]),
        ("lead III", LEADS, ["lead II"]),
        ("lead aVL", LEADS, ["lead aVF"]),
    ]
    naive = sum(_charset(r, opts, t) for r, opts, t in cases)
    assert (naive, _ours(cases)) == (3, 0)


def test_pitfall_3_order_dependent_strings():
    opts = [*LEADS, "None"]
    cases = [  # every reply is right: the true set is {lead I, lead II}
        ("lead II, lead I", opts, ["lead I", "lead II"]),
        ("lead I lead II", opts, ["lead I", "lead II"]),
        ("lead I and lead II", opts, ["lead I", "lead II"]),
        ("Lead II and lead I.", opts, ["lead I", "lead II"]),
    ]
    naive = sum(r.lower().strip(". ") == " ".join(t).lower() for r, _, t in cases)  # joined by spaces
    assert (naive, _ours(cases)) == (1, 4)


def _bundled_train():
    from ecgqa import sample

    qs = []
    for f in sorted((sample.paths().ptbxl_release / "template" / "train").glob("*.json")):
        qs += json.loads(f.read_text())
    return qs


def test_pitfall_4_training_fold_scoring_inflates_and_is_refused():
    qs = _bundled_train()
    ecgs = sorted({q["ecg_id"][0] for q in qs})
    fold = set(np.random.default_rng(0).permutation(ecgs)[: len(ecgs) // 2].tolist())
    learn = [q for q in qs if q["ecg_id"][0] in fold]
    held = [q for q in qs if q["ecg_id"][0] not in fold]
    prior = MajorityAnswers(learn)

    def em(rows):
        return np.mean(
            [list(prior.answer(q["question"], q["template_id"], q["question_type"])) == q["answer"] for q in rows]
        )

    on_fold, on_held = em(learn), em(held)
    # the same prior, scored on what it learned from (docs/scoring-pitfalls.md quotes these two figures)
    assert (round(100 * on_fold, 1), round(100 * on_held, 1)) == (71.6, 64.6)
    from ecgqa.evaluation.protocol import card, match
    from ecgqa.evaluation.report import paper_results

    full = {"single-verify": {"n": 20000}, "single-choose": {"n": 10000}, "single-query": {"n": 11093}}
    c = card(
        version="ptbxl",
        variant="template",
        data_content_hash="x",
        split="test",
        sample={"kind": "full", "n": 41093, "n_in_split": 82146, "sha256": "y"},
        per_question_type=full,
        model="m",
        input="i",
        training_split_scored=True,
    )
    med_gemini = next(r for r in paper_results() if r["model"] == "Med-Gemini-S 1.0, Gemini frozen")
    ok, why = match(c, med_gemini)
    assert not ok and "training split" in why
    assert match({**c, "training_split_scored": False}, med_gemini)[0]


def test_pitfall_5_pooled_variants(tmp_path, prepared_qa, capsys):
    from ecgqa.data.prepared import PreparedData

    p = PreparedData(prepared_qa)
    t = p.split("valid")
    rows = [(r["sample_id"], [p.classes[c] for c in r["answer"]]) for r in t]
    # a model right on every template question and on half of the paraphrased ones
    template = {sid: true for sid, true in rows}
    para = {
        sid: (true if i % 2 == 0 else ["lead I"] if true != ["lead I"] else ["lead II"])
        for i, (sid, true) in enumerate(rows)
    }
    truth = dict(rows)
    pooled = [template[s] == truth[s] for s in truth] + [para[s] == truth[s] for s in truth]
    em_template = np.mean([template[s] == truth[s] for s in truth])
    em_para = np.mean([para[s] == truth[s] for s in truth])
    assert (em_template, em_para) == (1.0, pytest.approx(0.5, abs=0.02))
    assert np.mean(pooled) == pytest.approx((em_template + em_para) / 2)  # neither variant's number
    file = tmp_path / "pooled.jsonl"
    file.write_text(
        "".join(json.dumps({"sample_id": s, "answer": a}) + "\n" for s, a in [*template.items(), *para.items()])
    )
    args = [
        "score",
        "--data",
        str(prepared_qa),
        "--split",
        "valid",
        "--answers",
        str(file),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"pooled.jsonl:{len(rows) + 1}: sample_id" in err and "again" in err
    one = tmp_path / "template.jsonl"
    one.write_text("".join(json.dumps({"sample_id": s, "answer": a}) + "\n" for s, a in template.items()))
    assert main([*args[:-2], "--answers", str(one), "--out", str(tmp_path / "t")]) == 0
    report = json.loads((tmp_path / "t" / "report.json").read_text())
    assert report["em"] == em_template and report["protocol"]["variant"] == "template"


def test_pitfall_7_exact_match_rewards_no():
    qs = _bundled_train()
    rows = [
        {"sample_id": q["sample_id"], "question_type": q["question_type"], "question": q["question"],
         "true": q["answer"], "ecg_id": q["ecg_id"], "correct": q["answer"] == ["no"]}
        for q in qs
    ]  # fmt: skip
    assert Counter(q["question_type"] for q in qs) == {"single-verify": 413}
    b = compare(rows, {"same": rows}, n_bootstrap=50)
    assert b["arms"]["model"]["em"] == pytest.approx(291 / 413)  # 70.5 % without looking at an ECG
    assert b["arms"]["model"]["balanced_accuracy_macro"] == pytest.approx(0.5)
