"""LLM harness, offline: grounding (which leads each question reads, per-lead masking, the on-disk cache), the
prompts built from it and reply parsing, with a stand-in grounding classifier on the real sample records."""

from __future__ import annotations

import re

import numpy as np
import pytest

from ecgqa.data.constants import LEAD_GROUPS, LEADS
from llm_eval.grounding import Grounder, lead_subsets_in, plan_readings
from llm_eval.prompts import INSTRUCTION, build_prompt
from llm_eval.scoring import parse_reply
from tests.llm_eval.llm_eval_helpers import StandInClassifier, synthetic
from tests.llm_eval.paper_helpers import LEAD_OPTIONS


class InPlaceMaskingClassifier(StandInClassifier):
    """The upstream defect: zeroes the leads of the array it was handed, in place."""

    def classify(self, ecgs, lead_masks=None, batch_size=64):
        if lead_masks is not None:
            ecgs[~np.asarray(lead_masks, bool)] = 0.0
        return super().classify(ecgs, lead_masks, batch_size)


# ----------------------------------------------------------------------------- grounding


def test_lead_subsets_named_by_questions():
    assert lead_subsets_in("Does this ECG show static noise in lead aVL?") == ["aVL"]
    assert lead_subsets_in("Does this ECG show any kind of noises in lead III?") == ["III"]
    assert lead_subsets_in("Does this ECG show any kind of noises in lead I?") == ["I"]
    assert lead_subsets_in("Does this ECG show ischemic in inferior leads?") == ["inferior"]
    assert lead_subsets_in("Is there myocardial infarction in inferoposterolateral leads?") == ["inferoposterolateral"]
    assert lead_subsets_in("Does this ECG show low qrs voltages in the frontal and horizontal leads?") == ["entire"]
    assert lead_subsets_in("Which does it show, ischemic in lateral leads or ischemic in inferior leads?") == [
        "lateral",
        "inferior",
    ]
    assert lead_subsets_in("Does this ECG show baseline drift?") == []
    assert lead_subsets_in("Is the V5 lead noisy?") == ["V5"]


def test_plan_blocks_per_question_kind(every_type):
    verify = every_type["single-verify"]
    lead = re.search(r"in lead (\S+)\?", verify.question).group(1)
    assert [(b.subset, b.leads) for b in plan_readings(verify)] == [(lead, (lead,))]
    which = plan_readings(every_type["single-query"])
    assert [b.subset for b in which] == list(LEADS)  # one pass per single lead
    comp = plan_readings(every_type["comparison_consecutive-verify"])
    assert [(b.ecg_label, b.ecg_id, b.subset) for b in comp] == [
        ("previous ECG", 16, "entire"),
        ("recent ECG", 17, "entire"),
    ]
    irr = plan_readings(every_type["comparison_irrelevant-query"])
    assert [b.ecg_label for b in irr] == ["first ECG", "second ECG"]
    assert [b.ecg_id for b in irr] == list(every_type["comparison_irrelevant-query"].ecg_ids)
    # "first degree av block" is a class, not the first ECG: a consecutive question keeps previous/recent
    av = synthetic(
        "comparison_consecutive-verify",
        "Has first degree av block newly appeared in the later ECG compared to the earlier one?",
        ["no", "yes"],
        ["no"],
        ecg_ids=(16, 17),
        attribute_type="scp_code",
    )
    assert [b.ecg_label for b in plan_readings(av)] == ["previous ECG", "recent ECG"]
    both = plan_readings(every_type["comparison_irrelevant-verify"])  # a lead named in a comparison question
    assert [(b.ecg_label, b.subset) for b in both] == [("first ECG", "V2"), ("second ECG", "V2")]


def test_per_lead_grounding_differs_and_never_touches_the_store(signals, grounding_classes, every_type):
    q = every_type["single-query"]  # "which leads": one pass per lead
    ecg = np.array(signals(plan_readings(q)[0]))
    for clf in (StandInClassifier(grounding_classes), InPlaceMaskingClassifier(grounding_classes)):
        g = Grounder(clf, signals, progress=False)
        g.ground([q])
        per_lead = np.stack([g.scores(b) for b in plan_readings(q)])
        zeroed = clf.classify(np.zeros((1, 12, ecg.shape[-1]), np.float32))[0]
        # every pair of leads reads differently, and no lead reads like an all-zero ECG
        for i in range(12):
            assert not np.allclose(per_lead[i], zeroed, atol=1e-4), LEADS[i]
            for j in range(i):
                assert not np.allclose(per_lead[i], per_lead[j], atol=1e-4), (LEADS[i], LEADS[j])
        # each reading equals the classifier on its own zero-masked copy
        for i, _lead in enumerate(LEADS):
            x = ecg.copy()
            x[[k for k in range(12) if k != i]] = 0
            np.testing.assert_allclose(
                per_lead[i], StandInClassifier(grounding_classes).classify(x[None])[0], rtol=0, atol=1e-6
            )  # the cache keeps float32 scores exactly
        np.testing.assert_array_equal(signals(plan_readings(q)[0]), ecg)  # the source is unchanged


def test_each_ecg_subset_classified_once_and_cached_on_disk(tmp_path, signals, grounding_classes, train_questions):
    qs = train_questions[:60]
    distinct = {b.key for q in qs for b in plan_readings(q)}
    total = sum(len(plan_readings(q)) for q in qs)
    clf = StandInClassifier(grounding_classes)
    g = Grounder(clf, signals, tmp_path / "cache.jsonl", fingerprint="abc", batch_size=16, progress=False)
    first = g.ground(qs)
    assert g.n_forward == clf.rows == len(distinct) < total + 1
    again = Grounder(clf, signals, tmp_path / "cache.jsonl", fingerprint="abc", progress=False)
    assert again.ground(qs) == first and again.n_forward == 0
    with pytest.raises(ValueError, match="cache.jsonl holds classifier scores of another checkpoint"):
        Grounder(clf, signals, tmp_path / "cache.jsonl", fingerprint="another-checkpoint", progress=False)
    with (tmp_path / "cache.jsonl").open("a") as f:
        f.write('{"key": "1|entire", "scores": [0.1, 0.')  # a write torn by a crash is skipped, not fatal
    torn = Grounder(clf, signals, tmp_path / "cache.jsonl", fingerprint="abc", progress=False)
    assert torn.ground(qs) == first and torn.n_forward == 0
    torn.ground(train_questions[60:70])  # appends after the torn line...
    n_new = torn.n_forward
    after = Grounder(clf, signals, tmp_path / "cache.jsonl", fingerprint="abc", progress=False)
    after.ground(train_questions[:70])
    assert n_new > 0 and after.n_forward == 0  # ...and every new record reads back
    # interpretations: classes scored > 0.5 with three decimals, highest first
    interp = first[qs[0].sample_id][0]
    scores = g.scores(interp.reading)
    expect = sorted(
        ((c, round(float(s), 3)) for c, s in zip(grounding_classes, scores, strict=False) if s > 0.5),
        key=lambda cs: (-cs[1], cs[0]),
    )
    assert list(interp.findings) == expect and expect


@pytest.mark.parametrize("left_behind", ["", '{"kind": "ecgqa-grou', '{"kind": "ecgqa-grounding-cache", "fingerp'])
def test_cache_killed_before_its_header_was_written_starts_afresh(
    tmp_path, signals, grounding_classes, train_questions, left_behind
):
    """A kill between creating the cache file and completing its header line must not block every later run."""
    path = tmp_path / "cache.jsonl"
    path.write_text(left_behind)
    qs = train_questions[:5]
    g = Grounder(StandInClassifier(grounding_classes), signals, path, fingerprint="abc", progress=False)
    first = g.ground(qs)
    assert g.n_forward > 0
    again = Grounder(StandInClassifier(grounding_classes), signals, path, fingerprint="abc", progress=False)
    assert again.ground(qs) == first and again.n_forward == 0


# ----------------------------------------------------------------------------- prompts and parsing


def test_prompt_for_each_question_type(signals, grounding_classes, every_type):
    g = Grounder(StandInClassifier(grounding_classes), signals, progress=False)
    interps = g.ground(list(every_type.values()))
    for qtype, q in every_type.items():
        text = build_prompt(q, interps[q.sample_id])[0]["content"]
        blocks = re.findall(r"^Interpretation of the (.+?) \((.+?)\):$", text, re.MULTILINE)
        expected = [(b.ecg_label, b.subset) for b in plan_readings(q)]
        assert len(blocks) == len(expected), qtype
        for (label, leads), (want_label, subset) in zip(blocks, expected, strict=False):
            assert label == want_label
            group = LEAD_GROUPS[subset]
            assert leads == (
                "all 12 leads"
                if len(group) == 12
                else f"lead {group[0]} only"
                if len(group) == 1
                else f"leads {', '.join(group)} only"
            )
        assert f"\nQuestion: {q.question}\n" in text
        options = re.search(r"^Options: (.*)$", text, re.MULTILINE).group(1).split("; ")
        assert options == list(q.options) + ([] if qtype.endswith("verify") else ["None"]), qtype
        assert text.rstrip().endswith(INSTRUCTION)
        findings = re.findall(r"^- (.+): (\d\.\d{3})$", text, re.MULTILINE)
        assert findings and all(float(s) >= 0.5 and c in grounding_classes for c, s in findings), findings
    assert "two ECGs" in build_prompt(every_type["comparison_irrelevant-query"], [])[0]["content"]


@pytest.mark.parametrize("rule", ["paper", "ecgqa-v2"])  # the rules of --prompt paper and --prompt ecgqa-v2
def test_parse_reply_longest_first_case_insensitive(rule):
    assert parse_reply("Lead II", [*LEAD_OPTIONS, "None"], rule=rule) == (["lead II"], True)
    assert parse_reply("lead III; LEAD I.", LEAD_OPTIONS, rule=rule) == (["lead I", "lead III"], True)
    assert parse_reply("Lead aVF, lead V1", LEAD_OPTIONS, rule=rule)[0] == ["lead V1", "lead aVF"]
    stages = ["early stage of myocardial infarction", "none of myocardial infarction", "None"]
    assert parse_reply("None of myocardial infarction", stages, rule=rule) == (["none of myocardial infarction"], True)
    assert parse_reply("None", stages, rule=rule) == ([], True)
    big = ["bigeminal pattern (unknown origin, supraventricular, or ventricular)", "sinus rhythm", "None"]
    assert parse_reply("Bigeminal pattern (unknown origin, supraventricular, or ventricular)", big, rule=rule)[0] == [
        big[0]
    ]
    assert parse_reply("I cannot tell from this.", ["no", "yes"], rule=rule) == ([], False)
    assert parse_reply("yes", ["no", "yes"], rule=rule) == (["yes"], True)
    assert parse_reply("eyes", ["no", "yes"], rule=rule) == ([], False)  # whole phrases only
