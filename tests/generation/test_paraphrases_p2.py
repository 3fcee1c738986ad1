"""Paraphrase patterns of templates 29-49, harvested from the release's valid split.

Evidence: ``docs/paraphrase-evidence-p2.jsonl``, one line per paraphrased sample read (public copy of the
release, GitHub jovianw/FSL_ECG_QA ``ecgqa/ptbxl/paraphrased/{valid,test}/NNNNN.json``; the copy appends
" Given that patient is ... years old." to every question, stripped here). ``template`` is the template
variant's text of the same sample, rebuilt from its ``attribute`` (43-49: ``attribute`` is null, the slot
value read off the paraphrased text). Patterns: ``ecgqa/generation/data/paraphrases.json`` (the train/valid
pool, read in valid; the test pool: the test split's own patterns, for the templates read there).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ecgqa.generation.check import expected_texts, slot_values
from ecgqa.generation.templates import DATA, harvest_paraphrases, load_templates, swap_words

ROOT = Path(__file__).resolve().parents[2]
EVIDENCE = ROOT / "docs" / "paraphrase-evidence-p2.jsonl"
PATTERNS = DATA / "paraphrases.json"  # train_valid and test pools
TEMPLATES = load_templates("ptbxl")


def _evidence(split: str | None = "valid") -> list[dict]:
    rows = [json.loads(line) for line in EVIDENCE.read_text().splitlines() if line.strip()]
    return [r for r in rows if split is None or r["split"] == split]


def _patterns(pool: str = "train_valid") -> dict[int, list[str]]:
    spec = json.loads(PATTERNS.read_text())["templates"]
    return {int(k): v[pool] for k, v in spec.items() if 29 <= int(k) <= 49 and pool in v}


def _values(tid: int, text: str) -> tuple[tuple[str, ...], str | None]:
    """Slot values (attribute slots in text order) and lead read off a template text."""
    t = TEMPLATES[tid]
    m = t.pattern().match(text)
    assert m is not None, f"template {tid}: {text!r} does not fit {t.text!r}"
    found = dict(zip(t.tokens, m.groups(), strict=True))
    return tuple(found[tok] for tok in t.value_tokens), found.get("${lead}")


def test_every_template_29_to_49_has_seven_patterns_with_its_own_slots():
    patterns = _patterns()
    assert sorted(patterns) == list(range(29, 50))
    for tid, pats in patterns.items():
        t = TEMPLATES[tid]
        assert len(pats) == len(set(pats)) == 7, tid  # the valid split shows 7 per template
        for p in pats:
            assert set(re.findall(r"\$\{[a-z_]+[12]?\}", p)) == set(t.tokens), (tid, p)


def test_the_patterns_are_what_harvest_paraphrases_gives_on_the_valid_evidence():
    rows = _evidence()
    harvested = harvest_paraphrases([(r["template_id"], r["template"], r["paraphrased"]) for r in rows], TEMPLATES)
    assert harvested == _patterns()


def test_the_rebuilt_template_texts_are_texts_the_release_writes_for_the_attribute():
    checked = 0
    for r in _evidence(None):
        t = TEMPLATES[r["template_id"]]
        if r["attribute"] is None:  # comparison templates: the release writes no attribute
            continue
        got = slot_values(t, {"question": r["template"], "attribute": r["attribute"]})
        assert got is not None, r["sample_id"]
        assert r["template"] in expected_texts(t, *got), r["sample_id"]
        checked += 1
    assert checked > 500


def test_every_valid_paraphrase_is_a_pattern_filled_with_the_samples_slot_values():
    patterns = _patterns()
    rows = _evidence()
    assert len(rows) > 700 and {r["template_id"] for r in rows} == set(range(29, 50))
    for r in rows:
        t = TEMPLATES[r["template_id"]]
        values, lead = _values(t.id, r["template"])
        filled = {t.fill(values, lead, text=p) for p in patterns[t.id]}
        assert r["paraphrased"] in filled, (r["sample_id"], r["paraphrased"])
        assert " Given that patient" not in r["paraphrased"]


def test_a_swapped_template_37_paraphrase_is_the_word_swap_of_the_unswapped_one():
    # The release swaps the two options in the paraphrased text as in the template text, quirk included:
    # "..., supraventricular extrasystoles or suprasupraventricular extrasystoles?" (valid sample 26971).
    # A generator reproduces it with swap_words(fill(pattern, (b, a)), b, a), not with fill(pattern, (a, b)).
    patterns = _patterns()[37]
    order = ["extrasystoles", "ventricular extrasystoles", "supraventricular extrasystoles"]
    swapped = [
        r
        for r in _evidence()
        if r["template_id"] == 37 and order.index(r["attribute"][0]) > order.index(r["attribute"][1])
    ]
    assert len(swapped) >= 8
    t = TEMPLATES[37]
    for r in swapped:
        a, b = r["attribute"]
        assert r["paraphrased"] in {swap_words(t.fill((b, a), text=p), b, a) for p in patterns}, r["sample_id"]
        assert r["paraphrased"] not in {t.fill((a, b), text=p) for p in patterns}, r["sample_id"]


def test_template_33_keeps_the_releases_carriage_returns():
    rows = [r for r in _evidence() if r["template_id"] == 33]
    assert any(r["paraphrased"].endswith("?\r") for r in rows)
    assert sum(p.endswith("?\r") for p in _patterns()[33]) == 3


def test_the_test_split_draws_its_own_three_patterns_per_template():
    # The release gives each split its own subset of a template's paraphrases: valid shows 7 per template,
    # test 3 (templates 29-34, 39, 41 read in test/30000), almost all ones valid never shows.
    # ``data/paraphrases.json`` holds them as the templates' test pools.
    rows = _evidence("test")
    assert {r["template_id"] for r in rows} == {29, 30, 31, 32, 33, 34, 39, 41} and len(rows) >= 170
    test = harvest_paraphrases([(r["template_id"], r["template"], r["paraphrased"]) for r in rows], TEMPLATES)
    assert test == _patterns("test")
    valid = _patterns()
    for tid, pats in test.items():
        assert len(pats) == 3, tid
        assert set(pats) - set(valid[tid]), f"template {tid}: the test split shows only valid patterns"
    for tid in (29, 30, 31, 32, 33, 34, 41):
        assert not set(test[tid]) & set(valid[tid]), tid
    assert set(test[39]) & set(valid[39]) == {"Does the ${feature} of this ECG lie ${range}?"}
