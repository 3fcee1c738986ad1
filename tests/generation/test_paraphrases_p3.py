"""The paraphrase patterns of templates 50–67 (``ecgqa/generation/data/paraphrases.json``, train/valid pool)
against the release samples they were harvested from (``docs/paraphrase-evidence-p3.jsonl``: valid-split samples
of the paraphrased PTB-XL release, each with the template text of the same sample).

Every sample read must be one of its template's patterns filled with that sample's slot values, every pattern
must be witnessed by a sample, and the file must be what :func:`harvest_paraphrases` makes of the evidence.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from ecgqa.generation.templates import DATA, harvest_paraphrases, load_templates

ROOT = Path(__file__).resolve().parents[2]
EVIDENCE = ROOT / "docs" / "paraphrase-evidence-p3.jsonl"
PATTERNS = DATA / "paraphrases.json"  # their train/valid pool
COVERED = range(50, 68)


@pytest.fixture(scope="module")
def evidence() -> list[dict]:
    return [json.loads(line) for line in EVIDENCE.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def patterns() -> dict[int, list[str]]:
    spec = json.loads(PATTERNS.read_text())["templates"]
    return {int(k): v["train_valid"] for k, v in spec.items() if int(k) in COVERED}


def _values(t, text: str) -> tuple[str, ...]:
    m = t.pattern().match(text)
    assert m is not None, f"template {t.id}: {text!r} is not this template's text"
    return tuple(dict.fromkeys(m.groups()))


def test_every_covered_template_has_patterns_and_samples(evidence, patterns):
    assert sorted(patterns) == list(COVERED)
    counts = Counter(r["template_id"] for r in evidence)
    for tid in COVERED:
        assert counts[tid] >= 20, f"template {tid}: only {counts[tid]} samples read"
        assert len(patterns[tid]) >= 6, f"template {tid}: {patterns[tid]}"
    assert len({r["sample_id"] for r in evidence}) == len(evidence)  # no sample recorded twice


def test_each_sample_is_a_pattern_filled_with_its_values(evidence, patterns):
    templates = load_templates("ptbxl")
    for r in evidence:
        t = templates[r["template_id"]]
        values = _values(t, r["template"])
        filled = {t.fill(values, text=p) for p in patterns[t.id]}
        assert r["paraphrased"] in filled, f"valid sample {r['sample_id']} (template {t.id}): {r['paraphrased']!r}"


def test_slot_templates_keep_their_slot_and_fixed_ones_have_none(patterns):
    templates = load_templates("ptbxl")
    for tid, pats in patterns.items():
        t = templates[tid]
        for p in pats:
            for token in t.value_tokens:
                assert p.count(token) == 1, f"template {tid}: {p!r}"
            if not t.value_tokens:
                assert "${" not in p, f"template {tid}: {p!r}"


def test_every_pattern_is_witnessed_and_the_file_is_the_harvest(evidence, patterns):
    templates = load_templates("ptbxl")
    seen: dict[int, set[str]] = {}
    for r in evidence:
        t = templates[r["template_id"]]
        values = _values(t, r["template"])
        for p in patterns[t.id]:
            if t.fill(values, text=p) == r["paraphrased"]:
                seen.setdefault(t.id, set()).add(p)
    assert {k: sorted(v) for k, v in seen.items()} == patterns
    triples = [(r["template_id"], r["template"], r["paraphrased"]) for r in evidence]
    assert harvest_paraphrases(triples, templates) == patterns


def test_the_template_texts_read_from_the_template_shard_agree(evidence):
    """Where the template variant was read (template/valid/30000.json offset 4062000, samples 37249–37280), its
    text is the template filled with the value the paraphrase names; elsewhere the template text was rebuilt that
    way, so every slot value must appear verbatim in the paraphrase."""
    read = {r["sample_id"]: r["template"] for r in evidence if r["template_from"] == "template shard"}
    assert sorted(read) == list(range(37249, 37281))
    apc = "Compared to the first ECG, has atrial premature complex been newly detected in the second ECG?"
    ppr = "Compared to the first ECG, has prolonged pr interval been newly detected in the second ECG?"
    assert {sid for sid, text in read.items() if text == apc} == set(range(37249, 37278))
    assert {sid for sid, text in read.items() if text == ppr} == set(range(37278, 37281))
    templates = load_templates("ptbxl")
    for r in evidence:
        for v in _values(templates[r["template_id"]], r["template"]):
            assert v in r["paraphrased"], r
