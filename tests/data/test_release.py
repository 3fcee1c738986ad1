"""Answer space, valid classes and question codes, recomputed independently from the release CSVs."""

from __future__ import annotations

import csv
import json

import pytest

from ecgqa.data.constants import LEAD_GROUPS, LEADS, question_codes
from ecgqa.data.release import AnswerSpace, ReleaseError, encode_sample, load_shard


def _csv_classes(path):
    with open(path, newline="") as f:
        return [r["class"] for r in csv.DictReader(f)]


@pytest.mark.parametrize("version, n, lead_i", [("ptbxl", 103, 66), ("mimic-iv-ecg", 187, 126)])
def test_answer_space_sizes_and_lead_classes(sample_paths, version, n, lead_i):
    space = AnswerSpace.from_release(sample_paths.release / version)
    assert len(space) == n
    assert space.classes == tuple(_csv_classes(sample_paths.grounding / version / "qa_class.csv"))
    assert set(space.classes[lead_i : lead_i + 12]) == {f"lead {x}" for x in LEADS}


def test_sample_encoding_matches_hand_computation(sample_paths):
    space = AnswerSpace.from_release(sample_paths.ptbxl_release)
    classes = _csv_classes(sample_paths.ptbxl_release / "answers.csv")
    classes.remove("none")
    samples = json.loads((sample_paths.ptbxl_release / "template/valid/60000.json").read_text())
    s = samples[0]
    enc = encode_sample(space, s)
    assert enc["answer"] == sorted(classes.index(a) for a in s["answer"] if a != "none")
    assert [classes[i] for i in enc["valid_classes"]] == sorted(
        ["p duration", "pr interval", "qrs duration", "qt corrected", "qt interval", "rr interval"], key=classes.index
    )
    assert (enc["qt1"], enc["qt2"], enc["qt3"]) == (2, 8, 53)


def test_choose_valid_classes_and_none():
    space = AnswerSpace(
        classes=("no", "yes", "above the normal range", "within the normal range", "none of myocardial infarction"),
        template_classes={9: ("no", "none", "yes")},
    )
    choose = {
        "question_type": "single-choose",
        "attribute_type": "numeric_feature",
        "template_id": 40,
        "attribute": ["within the normal range of qt interval", "above the normal range of qt interval"],
        "answer": ["none"],
    }
    enc = encode_sample(space, choose)
    assert enc["valid_classes"] == [2, 3] and enc["answer"] == []
    assert enc["qt3"] == 6 * 1 + 5
    verify = {
        "question_type": "single-verify",
        "attribute_type": "scp_code",
        "template_id": 9,
        "answer": ["yes"],
        "attribute": ["x"],
    }
    assert encode_sample(space, verify)["valid_classes"] == [0, 1]
    assert space.encode(["none of myocardial infarction"]) == [4]  # a real class, not the empty answer
    with pytest.raises(ReleaseError, match="sample 8: choose question without attribute options"):
        encode_sample(space, {**choose, "attribute": None}, where="sample 8: ")
    with pytest.raises(ReleaseError, match="sample 7: unknown answer class 'maybe'"):
        space.encode(["maybe"], where="sample 7: ")


def test_question_codes_table():
    assert question_codes("single-verify", "scp_code") == (0, 0, 0)
    assert question_codes("comparison_consecutive-query", "heart_axis") == (1, 5, 34)
    assert question_codes("comparison_irrelevant-verify", "noise") == (2, 6, 37)
    with pytest.raises(ValueError, match="unknown question_type"):
        question_codes("single-guess", "noise")


def test_lead_groups_are_standard_leads():
    assert set(LEAD_GROUPS["inferoposterolateral"]) == set(LEADS) - {"aVR", "V4"}
    for leads in LEAD_GROUPS.values():
        assert set(leads) <= set(LEADS)


_GOOD = {
    "template_id": 26,
    "question_id": 1,
    "sample_id": 7,
    "question_type": "single-verify",
    "attribute_type": "noise",
    "question": "Does this ECG show static noise?",
    "answer": ["no"],
    "ecg_id": [127],
    "attribute": ["static noise"],
}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ecg_id": None}, r"ecg_id must be a non-empty list of integer ids, not null"),
        ({"ecg_id": [127.9]}, r"ecg_id must be a non-empty list of integer ids, not \[127\.9\]"),
        ({"ecg_id": ["127"]}, r'ecg_id must be .*not \["127"\]'),
        ({"ecg_id": "../../etc/passwd"}, r'ecg_id must be .*"../../etc/passwd"'),
        ({"ecg_id": [True]}, r"ecg_id must be"),
        ({"question": None}, r"question must be a non-empty string, not null"),
        ({"sample_id": "x"}, r"sample_id must be an integer, not \"x\""),
        ({"answer": "yes"}, r'answer must be a non-empty list of class names .*not "yes"'),
        ({"template_id": 26.0}, r"template_id must be an integer, not 26.0"),
        ({"attribute": "static noise"}, r"attribute must be null or a list of strings"),
    ],
)
def test_bad_sample_values_name_file_and_sample(tmp_path, change, message):

    shard = tmp_path / "template" / "train" / "0.json"
    shard.parent.mkdir(parents=True)
    shard.write_text(json.dumps([_GOOD, {**_GOOD, "sample_id": 8, **change}]))
    with pytest.raises(ReleaseError, match=message) as err:
        load_shard(shard)
    assert str(err.value).startswith(f"{shard}: sample #1 (sample_id ")


def test_duplicate_sample_id_in_a_shard(tmp_path):

    shard = tmp_path / "0.json"
    shard.write_text(json.dumps([_GOOD, dict(_GOOD)]))
    with pytest.raises(ReleaseError, match=r"0\.json: sample_id 7 appears twice"):
        load_shard(shard)
    shard.write_text(json.dumps([_GOOD, {**_GOOD, "sample_id": 9, "attribute": None}]))
    assert [s["sample_id"] for s in load_shard(shard)] == [7, 9]


def test_shards_sort_by_plain_file_name(tmp_path):
    """As upstream's sorted(glob(...)) (fairseq-signals preprocess_ecgqa.py): string order, not numeric."""
    from ecgqa.data.release import shards

    folder = tmp_path / "template" / "train"
    folder.mkdir(parents=True)
    for name in ("9", "10", "200", "011"):
        (folder / f"{name}.json").write_text("[]")
    assert [p.name for p in shards(tmp_path)] == ["011.json", "10.json", "200.json", "9.json"]


def test_unknown_question_type_names_the_file_and_sample(sample_paths):
    """Probe P5: the error for an unknown question_type named neither the shard nor the sample."""
    space = AnswerSpace.from_release(sample_paths.ptbxl_release)
    sample = {
        "template_id": 26,
        "question_id": 1,
        "sample_id": 7,
        "question_type": "bogus",
        "attribute_type": "noise",
        "question": "q?",
        "answer": ["no"],
        "ecg_id": [1],
        "attribute": ["static noise"],
    }
    with pytest.raises(ReleaseError, match=r"^train/1\.json: sample 7: unknown question_type/attribute_type 'bogus'"):
        encode_sample(space, sample, where="train/1.json: sample 7: ")
