"""Upperbound conversion: hand-made template samples (from docs/benchmark.md) → labels.

A label is (lead subset, attribute, yes/no).
"""

from __future__ import annotations

import pytest

from ecgqa.data.constants import LEAD_GROUPS, LEADS
from ecgqa.data.leads import lead_subsets_in, question_lead_group, trailing_lead_group
from ecgqa.data.upperbound_labels import (
    Label,
    UpperboundBuilder,
    bundled_grounding_classes,
    convert,
    read_grounding_classes,
    split_location,
)

PTBXL = read_grounding_classes(bundled_grounding_classes("ptbxl"))
MIMIC = read_grounding_classes(bundled_grounding_classes("mimic-iv-ecg"))


def qa(question, qtype, attribute, answer, *, atype="scp_code", sid=1, ecg=7):
    return {
        "template_id": 1,
        "question_id": 1,
        "sample_id": sid,
        "question_type": qtype,
        "attribute_type": atype,
        "question": question,
        "answer": answer,
        "ecg_id": [ecg],
        "attribute": attribute,
    }


def test_grounding_class_lists_ship_with_their_sizes():
    assert len(PTBXL) == 83 and len(MIMIC) == 164
    assert PTBXL[48] == "myocardial infarction" and "static noise" in PTBXL


def test_located_attribute_collapses_to_base_and_lead_subset():
    assert split_location("myocardial infarction in anterior leads") == ("myocardial infarction", "anterior")
    assert split_location("ischemic in inferolateral leads", PTBXL) == ("ischemic", "inferolateral")
    assert split_location("subendocardial injury in lateral leads", PTBXL) == ("subendocardial injury", "lateral")
    # a class that names leads itself stays whole, on the subset its name ends in (upstream's
    # parse_lead_position); all twelve leads ("frontal and horizontal") read as the entire ECG
    lvolt = "low qrs voltages in the frontal and horizontal leads"
    assert split_location(lvolt, PTBXL) == (lvolt, "entire")
    assert split_location("Broad R wave in lateral leads", MIMIC) == ("Broad R wave in lateral leads", "lateral")
    assert split_location("QRS changes in anteroseptal leads", MIMIC) == (
        "QRS changes in anteroseptal leads",
        "anteroseptal",
    )
    assert split_location("ischemic ST-T changes in diffuse leads", MIMIC) == ("ischemic ST-T changes", "diffuse")
    assert split_location("Myocardial infarction in septal leads", MIMIC) == ("Myocardial infarction", "septal")
    assert LEAD_GROUPS["anterior"] == ("V3", "V4")


@pytest.mark.parametrize(
    "cls, leads",
    [
        ("Broad R wave in lateral leads", ("I", "aVL", "V5", "V6")),
        ("QRS changes in anteroseptal leads", ("V1", "V2", "V3", "V4")),
    ],
)
def test_mimic_classes_naming_a_lead_group_train_and_ground_on_that_subset(cls, leads):
    """U1: the label conversion (training) and the LLM grounding plan read these classes on the same leads."""
    sample = qa(f"Does this ECG show {cls.lower()}?", "single-verify", [cls], ["yes"])
    sample["question"] = f"Does this ECG show {cls}?"
    (label,) = convert(sample, "train", set(MIMIC))
    assert label.attribute == cls and label.value == 1
    assert LEAD_GROUPS[label.lead_group] == leads
    assert lead_subsets_in(sample["question"]) == [label.lead_group]  # what llm_eval/grounding.py plans
    builder = UpperboundBuilder(MIMIC, "train")
    builder.add(sample)
    (row,) = builder.rows()
    assert row["lead_group"] == label.lead_group and row["label_classes"] == [MIMIC.index(cls)]
    assert trailing_lead_group("low qrs voltages in the frontal and horizontal leads") == "entire"
    assert trailing_lead_group("ischemic ST-T changes in diffuse leads") == "entire"
    assert trailing_lead_group("static noise") == "entire"


def test_mimic_located_mi_uses_the_capitalised_class():
    """U2 (documented in ecgqa/data/upperbound_labels.py): located MI → "Myocardial infarction" (12), not 105."""
    sample = qa(
        "Does this ECG show myocardial infarction in anterior leads?",
        "single-verify",
        ["Myocardial infarction in anterior leads"],
        ["yes"],
    )
    builder = UpperboundBuilder(MIMIC, "train")
    builder.add(sample)
    (row,) = builder.rows()
    assert (row["lead_group"], row["label_classes"], row["label_values"]) == ("anterior", [12], [1])
    assert MIMIC[12] == "Myocardial infarction" and MIMIC[105] == "myocardial infarction"


def test_question_lead_group_distinguishes_lead_i_from_ii_and_iii():
    assert question_lead_group("Does this ECG show static noise in lead II?") == "II"
    assert question_lead_group("Does this ECG show static noise in lead I?") == "I"
    assert question_lead_group("Does this ECG show baseline drift in lead III?") == "III"
    assert question_lead_group("Does this ECG show burst noise in limb leads?") == "limb"
    assert question_lead_group("Does this ECG show burst noise?") is None


def test_verify_questions():
    mi = qa(
        "Does this ECG show symptoms of myocardial infarction in anterior leads?",
        "single-verify",
        ["myocardial infarction in anterior leads"],
        ["yes"],
    )
    assert convert(mi, "test", PTBXL) == [Label("anterior", "myocardial infarction", 1)]
    noise = qa("Does this ECG show static noise in lead aVL?", "single-verify", ["static noise"], ["no"], atype="noise")
    assert convert(noise, "train", PTBXL) == [Label("aVL", "static noise", 0)]
    assert convert({**noise, "answer": ["not sure"]}, "train", PTBXL) == []
    # "excluding uncertain symptoms": only a yes is certain; "including": only a no is certain
    ex = qa(
        "Does this ECG show left axis deviation, excluding uncertain symptoms?",
        "single-verify",
        ["left axis deviation"],
        ["no"],
    )
    assert convert(ex, "train", PTBXL) == []
    assert convert({**ex, "answer": ["yes"]}, "train", PTBXL) == [Label("entire", "left axis deviation", 1)]
    inc = {**ex, "question": "Does this ECG show left axis deviation, including uncertain symptoms?"}
    assert convert(inc, "train", PTBXL) == [Label("entire", "left axis deviation", 0)]
    assert convert({**inc, "answer": ["yes"]}, "train", PTBXL) == []
    rng = qa(
        "Does the qt interval of this ECG fall within the normal range?",
        "single-verify",
        ["within the normal range of qt interval"],
        ["yes"],
        atype="numeric_feature",
    )
    assert convert(rng, "valid", PTBXL) == [Label("entire", "within the normal range of qt interval", 1)]


def test_choose_questions_label_each_option_in_train_and_none_in_test():
    q = qa(
        "Which range does the qt interval of this ECG fall in, above the normal range or within the normal range?",
        "single-choose",
        ["above the normal range of qt interval", "within the normal range of qt interval"],
        ["within the normal range"],
        atype="numeric_feature",
    )
    assert convert(q, "train", PTBXL) == [
        Label("entire", "above the normal range of qt interval", 0),
        Label("entire", "within the normal range of qt interval", 1),
    ]
    assert convert(q, "test", PTBXL) == []
    ex = qa(
        "Which diagnostic symptom does this ECG show, long qt-interval or incomplete right bundle branch block, "
        "excluding uncertain symptoms?",
        "single-choose",
        ["long qt-interval", "incomplete right bundle branch block"],
        ["long qt-interval"],
    )
    assert convert(ex, "train", PTBXL) == [Label("entire", "long qt-interval", 1)]
    mi = qa(
        "Which symptom does this ECG show, myocardial infarction in inferior leads or first degree av block?",
        "single-choose",
        ["myocardial infarction in inferior leads", "first degree av block"],
        ["myocardial infarction in inferior leads"],
    )
    assert convert(mi, "valid", PTBXL) == [
        Label("inferior", "myocardial infarction", 1),
        Label("entire", "first degree av block", 0),
    ]


def test_query_questions():
    leads = qa(
        "What leads show static noise?", "single-query", ["static noise"], ["lead V1", "lead aVR"], atype="noise"
    )
    got = convert(leads, "train", PTBXL)
    assert [lab.lead_group for lab in got] == list(LEADS)
    assert {lab.lead_group for lab in got if lab.value} == {"V1", "aVR"}
    volt = qa(
        "What leads show high qrs voltage?",
        "single-query",
        ["high qrs voltage"],
        ["lead V1", "lead V2", "lead V3", "lead V4", "lead V5", "lead V6", "lead I"],
    )
    assert convert(volt, "train", PTBXL) == [
        Label("limb", "high qrs voltage", 0),
        Label("chest", "high qrs voltage", 1),
    ]
    stage = qa(
        "What stage of myocardial infarction does this ECG show?",
        "single-query",
        [
            "early stage of myocardial infarction",
            "middle stage of myocardial infarction",
            "old stage of myocardial infarction",
            "unknown stage of myocardial infarction",
            "none of myocardial infarction",
        ],
        ["old stage of myocardial infarction"],
        atype="stage_of_infarction",
    )
    assert convert(stage, "train", PTBXL) == [
        Label("entire", "early stage of myocardial infarction", 0),
        Label("entire", "middle stage of myocardial infarction", 0),
        Label("entire", "old stage of myocardial infarction", 1),
    ]
    assert convert({**stage, "answer": ["unknown stage of myocardial infarction"]}, "train", PTBXL) == []
    numeric = qa(
        "What numeric features of this ECG fall below the normal range?",
        "single-query",
        ["below the normal range of pr interval", "below the normal range of qt interval"],
        ["pr interval"],
        atype="numeric_feature",
    )
    assert [lab.value for lab in convert(numeric, "train", PTBXL)] == [1, 0]
    in_lead = qa(
        "What noises does this ECG show in lead V2?",
        "single-query",
        ["static noise", "burst noise"],
        ["burst noise"],
        atype="noise",
    )
    assert convert(in_lead, "train", PTBXL) == [Label("V2", "static noise", 0), Label("V2", "burst noise", 1)]
    assert convert(in_lead, "test", PTBXL) == []


def test_comparison_questions_give_nothing():
    cmp_ = qa("Does the second ECG show static noise?", "comparison_consecutive-verify", None, ["yes"])
    cmp_["ecg_id"] = [1, 2]
    assert convert(cmp_, "train", PTBXL) == []


def test_builder_groups_per_subset_dedups_and_resolves_conflicts_to_no():
    b = UpperboundBuilder(PTBXL, "train")
    b.add(
        qa(
            "Does this ECG show symptoms of myocardial infarction?",
            "single-verify",
            ["myocardial infarction"],
            ["yes"],
            sid=1,
        )
    )
    b.add(
        qa(
            "Does this ECG show symptoms of myocardial infarction in inferior leads?",
            "single-verify",
            ["myocardial infarction in inferior leads"],
            ["yes"],
            sid=2,
        )
    )
    b.add(
        qa(
            "Does this ECG show symptoms of myocardial infarction in inferior leads?",
            "single-verify",
            ["myocardial infarction in inferior leads"],
            ["no"],
            sid=3,
        )
    )  # clash → no
    b.add(qa("Does this ECG show first degree av block?", "single-verify", ["first degree av block"], ["yes"], sid=4))
    b.add(qa("Does this ECG show first degree av block?", "single-verify", ["first degree av block"], ["yes"], sid=5))
    b.add(qa("Does this ECG show static noise in lead I?", "single-verify", ["static noise"], ["no"], sid=6, ecg=8))
    rows = list(b.rows())
    mi, av, inferior = PTBXL.index("myocardial infarction"), PTBXL.index("first degree av block"), "inferior"
    by_key = {(r["sample_id"], r["lead_group"]): r for r in rows}
    # each (ecg, subset, class) is labelled once, by the first sample that asks about it
    assert by_key[(1, "entire")]["label_classes"] == [mi] and by_key[(1, "entire")]["label_values"] == [1]
    assert by_key[(2, inferior)]["label_classes"] == [mi] and by_key[(2, inferior)]["label_values"] == [0]
    assert by_key[(4, "entire")]["label_classes"] == [av] and by_key[(4, "entire")]["label_values"] == [1]
    assert by_key[(6, "I")]["ecg_id"] == [8]
    assert len(rows) == 4
    assert b.stats["labels_conflicting"] == 1 and b.stats["labels_duplicate"] == 1


@pytest.mark.parametrize("cls", ["abnormal qrs", "within the normal range of rr interval"])
def test_builder_skips_attributes_outside_the_grounding_classes(cls):
    b = UpperboundBuilder([cls], "train")
    b.add(qa("Does this ECG show static noise?", "single-verify", ["static noise"], ["no"], atype="noise"))
    assert list(b.rows()) == [] and b.unknown_attributes == {"static noise": 1}


def test_query_labels_answered_attributes_it_does_not_mention():
    # docs/benchmark.md: one label per attribute they mention or answer
    q = qa("What kind of noises does this ECG show?", "single-query", ["static noise"], ["burst noise"], atype="noise")
    assert convert(q, "train", PTBXL) == [Label("entire", "static noise", 0), Label("entire", "burst noise", 1)]
    in_lead = {**q, "question": "What kind of noises does this ECG show in lead V2?"}
    assert convert(in_lead, "valid", PTBXL) == [Label("V2", "static noise", 0), Label("V2", "burst noise", 1)]
    mi = qa(
        "What symptoms does this ECG show?",
        "single-query",
        ["first degree av block"],
        ["myocardial infarction in inferior leads"],
    )
    assert convert(mi, "train", PTBXL) == [
        Label("entire", "first degree av block", 0),
        Label("inferior", "myocardial infarction", 1),
    ]
    assert convert({**q, "answer": ["none"]}, "train", PTBXL) == [Label("entire", "static noise", 0)]
