"""The release's attribute rule (``templates.attribute_of``) and caps (``sampling.pick`` under
``--caps release``), each against the numbers of ``data/release_attributes.json`` / ``data/release_caps.json``
read here."""

from __future__ import annotations

import json
import random

import pytest

from ecgqa.generation import sampling
from ecgqa.generation.templates import DATA, attribute_of, load_templates


@pytest.fixture(scope="module")
def caps() -> dict:
    return json.loads((DATA / "release_caps.json").read_text())["caps"]


@pytest.fixture(scope="module")
def templates():
    return load_templates("ptbxl")


def test_attribute_kinds(templates):
    spec = json.loads((DATA / "release_attributes.json").read_text())["templates"]
    assert attribute_of(templates[28], ()) == ["any kind of noises"]
    assert attribute_of(templates[26], ("static noise",)) == ["static noise"]
    assert attribute_of(templates[39], ("pr interval", "below the normal range")) == [
        "below the normal range of pr interval"
    ]
    swapped = ("qt interval", "within the normal range", "below the normal range")
    assert attribute_of(templates[40], swapped) == [
        "within the normal range of qt interval",
        "below the normal range of qt interval",
    ]
    assert attribute_of(templates[41], ("p duration",)) == spec["41"]["value"]["p duration"]
    assert attribute_of(templates[42], ("within the normal range",)) == spec["42"]["value"]["within the normal range"]
    assert attribute_of(templates[8], ()) == spec["8"]["value"]
    assert all(attribute_of(templates[t], ()) is None for t in (47, 68, 70))


def test_a_dataset_subset_keeps_only_the_candidates_it_asks(templates):
    spec = json.loads((DATA / "release_attributes.json").read_text())["templates"]
    classes = frozenset({"atrial fibrillation", "sinus tachycardia", "complete left bundle branch block"})
    assert attribute_of(templates[10], (), classes) == [v for v in spec["10"]["value"] if v in classes]
    assert attribute_of(templates[8], (), classes) == ["complete left bundle branch block"]
    assert attribute_of(templates[12], (), classes) == ["any kind of abnormal symptoms"]  # not an option: kept


def _groups(**sizes: int) -> dict:
    return {(k.replace("_", " "),): list(range(n)) for k, n in sizes.items()}


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_verify_caps_and_the_no_per_yes_rule(caps, split):
    c = caps[split]["single-verify"]
    yes, no = c["yes"]["value"], c["no"]["value"]
    rng = random.Random(0)
    got = sampling.pick(
        _groups(yes=3 * yes, no=3 * no), question_type="single-verify", split=split, caps="release", balanced=False,
        rng=rng,
    )  # fmt: skip
    assert (len(got[("yes",)]), len(got[("no",)])) == (yes, no)
    for n_yes in (1, 2, 3):  # scarce yes: no is five times yes (test/40000.json T44: (1,5), (2,10), (3,15))
        got = sampling.pick(
            _groups(yes=n_yes, no=3 * no), question_type="comparison_consecutive-verify", split=split,
            caps="release", balanced=False, rng=rng,
        )  # fmt: skip
        assert len(got[("no",)]) == min(5 * n_yes, caps[split]["comparison_consecutive-verify"]["no"]["value"])
    # without yes no "no" is kept: a held-out question of only "no" answers is dropped
    assert sampling.pick(_groups(no=50), question_type="single-verify", split="valid", caps="release",
                         balanced=False, rng=rng) is None  # fmt: skip
    got = sampling.pick(_groups(yes=1, no=50), question_type="single-verify", split=split, caps="none",
                        balanced=False, rng=rng)  # fmt: skip
    assert len(got[("no",)]) == 50  # --caps none: every ECG


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_choose_caps_per_option_both_and_none_not_doubled(caps, split):
    per, none = caps[split]["single-choose"]["per_answer_set"]["value"], caps[split]["single-choose"]["none"]["value"]
    groups = {("a",): list(range(50)), ("b",): list(range(50, 100)), ("a", "b"): list(range(100, 150))}
    groups[("none",)] = list(range(150, 200))
    got = sampling.pick(groups, question_type="single-choose", split=split, caps="release", balanced=False,
                        rng=random.Random(1))  # fmt: skip
    assert {k: len(v) for k, v in got.items()} == {("a",): per, ("b",): per, ("a", "b"): per, ("none",): none}
    assert none == per  # the choose "none" cap is not doubled (unlike the query one)
    q = caps[split]["single-query"]
    got = sampling.pick(groups, question_type="single-query", split=split, caps="release", balanced=False,
                        rng=random.Random(1))  # fmt: skip
    assert len(got[("none",)]) == min(50, q["none"]["value"]) and len(got[("a",)]) == min(
        50, q["per_answer_set"]["value"]
    )


def test_template_42_asks_every_range_as_the_release(templates):
    """The release asks 42 for below, within and above (valid q1906 below, q1908 above): three questions whose
    attribute is the range's candidate list, and whose answer is the features in that range (p duration has
    no lower limit, so it is never "below")."""
    from ecgqa.data.attributes import Statements, derive
    from ecgqa.data.measure import Measurements
    from ecgqa.generation import answers as A
    from ecgqa.generation.engine import questions

    spec = json.loads((DATA / "release_attributes.json").read_text())["templates"]["42"]["value"]
    qs = questions(templates[42], templates, None)
    assert [q.values for q in qs] == [(r,) for r in spec]
    assert [q.text for q in qs] == [f"What numeric features of this ECG fall {r}?" for r in spec]
    status = {
        "rr interval": "below",
        "p duration": "within",
        "pr interval": "above",
        "qrs duration": "below",
        "qt interval": "within",
        "qt corrected": None,
    }
    labels = derive(
        {}, Statements(frozenset(), frozenset(), frozenset(), {}), Measurements(status=status), release_rules=True
    )
    got = {q.values[0]: A.answer(templates[42], q.values, None, [labels], ecgs=(1,)) for q in qs}
    assert got == {
        "below the normal range": ["rr interval", "qrs duration"],
        "within the normal range": ["p duration", "qt interval"],
        "above the normal range": ["pr interval"],
    }
    assert "below the normal range of p duration" not in spec["below the normal range"]
