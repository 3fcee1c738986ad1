"""``data/release_caps.json``: the release's sampling caps per split and question type, checked for internal
consistency (train vs valid ratios, test vs valid) and against the bundled real release shards."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from ecgqa.data.constants import QUESTION_TYPES as QTYPES
from ecgqa.data.release import SPLITS
from ecgqa.generation.templates import DATA

STATUSES = {"measured", "inferred", "not_observed"}
EVIDENCE = Path(__file__).resolve().parents[2] / "docs" / "release-caps-evidence.jsonl"


@pytest.fixture(scope="module")
def spec() -> dict:
    return json.loads((DATA / "release_caps.json").read_text())


def _entries(spec):
    for split, types in spec["caps"].items():
        for qtype, keys in types.items():
            for key, entry in keys.items():
                if isinstance(entry, dict) and "status" in entry:
                    yield split, qtype, key, entry


def test_every_split_and_question_type_is_covered_and_the_source_is_attributed(spec):
    assert set(spec["caps"]) == set(SPLITS)
    for split in SPLITS:
        assert set(spec["caps"][split]) == set(QTYPES), split
    assert "CC BY 4.0" in spec["source"]["attribution"]
    assert "Oh, J." in spec["source"]["attribution"]


def test_measured_values_name_their_evidence_and_inferred_ones_their_reason(spec):
    seen = 0
    for split, qtype, key, entry in _entries(spec):
        assert entry["status"] in STATUSES, (split, qtype, key)
        if entry["status"] == "measured":
            seen += 1
            assert entry["evidence"], (split, qtype, key)
            for item in entry["evidence"]:
                assert item["shard"] and item["question"] and item["what"], (split, qtype, key)
        elif entry["status"] == "inferred":
            assert entry["why"] and entry["value"] is not None, (split, qtype, key)
        else:
            assert entry["value"] is None, (split, qtype, key)
    assert seen >= 25


def _value(spec, split, qtype, key):
    entry = spec["caps"][split][qtype][key]
    return entry["value"], entry["status"]


@pytest.mark.parametrize(
    ("qtype", "key", "ratio"),
    [
        ("single-verify", "yes", 5),
        ("single-verify", "no", 5),
        ("single-choose", "per_answer_set", 5),
        ("single-choose", "none", 5),
        ("comparison_consecutive-verify", "yes", 5),
        ("comparison_consecutive-verify", "no", 5),
        ("comparison_irrelevant-verify", "yes", 5),
        ("comparison_irrelevant-verify", "no", 5),
        ("single-query", "per_answer_set", 2),
        ("single-query", "none", 2),
        ("comparison_irrelevant-query", "per_answer_set", 2),
        ("comparison_irrelevant-query", "none", 2),
    ],
)
def test_measured_train_caps_are_a_fixed_multiple_of_valid(spec, qtype, key, ratio):
    train, train_status = _value(spec, "train", qtype, key)
    valid, valid_status = _value(spec, "valid", qtype, key)
    assert train_status == valid_status == "measured"
    assert train == ratio * valid


def test_query_none_cap_is_twice_the_per_answer_cap_and_verify_no_twice_yes(spec):
    for split in SPLITS:
        for qtype in QTYPES:
            keys = spec["caps"][split][qtype]
            if qtype.endswith("query"):
                assert keys["none"]["value"] == 2 * keys["per_answer_set"]["value"], (split, qtype)
            if qtype.endswith("verify"):
                assert keys["no"]["value"] == 2 * keys["yes"]["value"], (split, qtype)


def test_test_split_caps_read_equal_valid(spec):
    compared = 0
    for _split, qtype, key, entry in (e for e in _entries(spec) if e[0] == "test"):
        if entry["status"] == "measured" and isinstance(entry["value"], int):
            assert entry["value"] == spec["caps"]["valid"][qtype][key]["value"], (qtype, key)
            compared += 1
    assert compared >= 5


def test_evidence_notes_parse_and_cover_every_split():
    rows = [json.loads(line) for line in EVIDENCE.read_text().splitlines() if line.strip()]
    assert {row["split"] for row in rows} == set(SPLITS)
    assert all(row["how"] for row in rows)


def test_bundled_release_shards_stay_within_the_caps(spec, sample_paths):
    """No (question text, answer) group of the bundled real shards is larger than its split's cap."""
    checked = 0
    for path in sorted(Path(sample_paths.ptbxl_release, "template").glob("*/*.json")):
        split = path.parent.name
        counts = collections.Counter()
        for sample in json.loads(path.read_text()):
            counts[(sample["question_type"], sample["question"], tuple(sorted(sample["answer"])))] += 1
        for (qtype, _question, answer), n in counts.items():
            keys = spec["caps"][split][qtype]
            if qtype.endswith("verify"):
                cap = keys["yes" if answer == ("yes",) else "no" if answer == ("no",) else "not_sure"]["value"]
            else:
                cap = keys["none" if answer == ("none",) else "per_answer_set"]["value"]
            if cap is not None:
                assert n <= cap, (path.name, qtype, answer, n, cap)
                checked += 1
    assert checked > 0
