"""``data/release_attributes.json``: what the release writes in ``attribute``, checked against the templates,
the answer options, the grounding classes, PTB-XL's statement table and the bundled release shards."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ecgqa.data.attributes import SCP_CLASS
from ecgqa.generation.templates import DATA, NONE, load_templates

KINDS = {"fixed", "slot", "range_of_feature", "per_feature", "per_range", "null", "unknown"}
FEATURES = ["rr interval", "p duration", "pr interval", "qrs duration", "qt interval", "qt corrected"]
RANGES = ["below the normal range", "within the normal range", "above the normal range"]


@pytest.fixture(scope="module")
def spec() -> dict:
    return json.loads((DATA / "release_attributes.json").read_text())


@pytest.fixture(scope="module")
def templates():
    return load_templates("ptbxl")


@pytest.fixture(scope="module")
def grounding(sample_paths) -> set[str]:
    with open(sample_paths.grounding / "ptbxl" / "grounding_class.csv", newline="") as f:
        return {row["class"] for row in csv.DictReader(f)}


def _values(template, question: str) -> list[str]:
    """The non-lead slot values of a filled question, in text order (independent of the engine)."""
    match = template.pattern().match(question)
    assert match, f"template {template.id}: {question!r} does not match {template.text!r}"
    seen: dict[str, str] = {}
    for token, value in zip(template.tokens, match.groups(), strict=True):
        if token != "${lead}":
            seen.setdefault(token, value)
    return list(seen.values())


def _expected(entry: dict, template, question: str):
    kind = entry["kind"]
    if kind == "fixed":
        return entry["value"]
    if kind == "null":
        return None
    values = _values(template, question)
    if kind == "slot":
        return values
    if kind == "range_of_feature":  # values: feature, then its range slot(s)
        return [f"{r} of {values[0]}" for r in values[1:]]
    if kind == "per_feature":
        return entry["value"][values[0]]
    if kind == "per_range":
        return entry["value"][values[0]]
    raise AssertionError(f"template {template.id}: kind {kind!r} has no expected attribute")


def test_every_template_has_a_known_kind_and_the_file_names_its_source(spec, templates):
    assert sorted(map(int, spec["templates"])) == sorted(templates) == list(range(1, 71))
    assert {e["kind"] for e in spec["templates"].values()} <= KINDS
    assert "Oh, J." in spec["source"]["attribution"] and "CC BY 4.0" in spec["source"]["attribution"]
    assert all(len(c) == 40 for c in spec["source"]["commits"].values())
    # every template this study marks as verified names the samples it read
    assert all(e["samples_read"] for e in spec["templates"].values() if e["verified"])


def test_comparison_templates_write_null_and_single_templates_do_not(spec, templates):
    for tid, t in templates.items():
        kind = spec["templates"][str(tid)]["kind"]
        assert (kind == "null") == (t.scope != "single"), (tid, kind)


def test_fixed_values_are_grounding_or_option_classes(spec, templates, grounding):
    for tid, entry in spec["templates"].items():
        if entry["kind"] != "fixed":
            continue
        options = set(templates[int(tid)].options) - {NONE}
        value = entry["value"]
        assert len(value) == len(set(value)) > 0, tid
        assert set(value) <= grounding | options, (tid, set(value) - grounding - options)
        if templates[int(tid)].kind == "query":  # a query's list is exactly its non-none options
            assert set(value) == options, tid
        else:  # a verify without slot names one grounding class
            assert len(value) == 1 and value[0] in grounding, tid


def test_scp_query_lists_follow_the_ptbxl_statement_table(spec, templates, sample_paths):
    """Templates 8-11: statement-table row order, NORM left out, kept where the template offers it."""
    with open(sample_paths.ptbxl_records / "scp_statements.csv", newline="") as f:
        rows = list(csv.DictReader(f))

    def listed(column: str, tid: int) -> list[str]:
        names = []
        for row in rows:
            code = row[""]
            if code == "NORM" or code not in SCP_CLASS or float(row[column] or 0) != 1.0:
                continue
            base, where = SCP_CLASS[code]
            names.append(base if where == "entire" else f"{base} in {where} leads")
        return [n for n in names if n in templates[tid].options]

    for tid, column in ((8, "diagnostic"), (9, "diagnostic"), (10, "rhythm"), (11, "form")):
        assert spec["templates"][str(tid)]["value"] == listed(column, tid), tid


def test_numeric_lists_are_every_grounding_range_of_each_feature(spec, templates, grounding):
    assert set(templates[41].options) == set(RANGES)
    per_feature = spec["templates"]["41"]["value"]
    per_range = spec["templates"]["42"]["value"]
    assert list(per_feature) == FEATURES and list(per_range) == RANGES
    for f in FEATURES:
        assert per_feature[f] == [f"{r} of {f}" for r in RANGES if f"{r} of {f}" in grounding], f
    for r in RANGES:
        assert per_range[r] == [f"{r} of {f}" for f in FEATURES if f"{r} of {f}" in grounding], r
    assert "below the normal range of p duration" not in grounding  # why p duration has two ranges


def test_bundled_release_shards_match(spec, templates, sample_paths):
    """Every sample of the bundled real shards (templates 26-28 and 68-70) carries the predicted attribute."""
    checked = set()
    for path in sorted(Path(sample_paths.ptbxl_release, "template").glob("*/*.json")):
        for s in json.loads(path.read_text()):
            tid = s["template_id"]
            want = _expected(spec["templates"][str(tid)], templates[tid], s["question"])
            assert s["attribute"] == want, f"{path.name} sample {s['sample_id']}: {s['attribute']} != {want}"
            checked.add(tid)
    assert checked == {26, 27, 28, 68, 69, 70}


@pytest.mark.parametrize(
    ("tid", "question", "attribute"),
    [  # samples read from the release (valid split); see samples_read in the data file
        (
            5,
            "Which diagnostic symptom does this ECG show, ischemic in inferolateral leads or right atrial "
            "overload/enlargement, excluding uncertain symptoms?",
            ["ischemic in inferolateral leads", "right atrial overload/enlargement"],
        ),
        (
            33,
            "What kind of noises does this ECG show in lead aVL?",
            ["baseline drift", "static noise", "burst noise", "electrodes problems"],
        ),
        (
            39,
            "Does the pr interval of this ECG fall below the normal range?",
            ["below the normal range of pr interval"],
        ),
        (
            40,
            "Which range does the qt corrected of this ECG fall in, within the normal range or below the normal range?",
            ["within the normal range of qt corrected", "below the normal range of qt corrected"],
        ),
        (
            41,
            "What range does the p duration of this ECG fall in?",
            ["within the normal range of p duration", "above the normal range of p duration"],
        ),
        (
            42,
            "What numeric features of this ECG fall below the normal range?",
            [f"below the normal range of {f}" for f in FEATURES if f != "p duration"],
        ),
        (60, "Compared to the first ECG, is ischemic in inferior leads still not found in the second ECG?", None),
    ],
)
def test_release_samples_read_for_this_file(spec, templates, tid, question, attribute):
    assert _expected(spec["templates"][str(tid)], templates[tid], question) == attribute
