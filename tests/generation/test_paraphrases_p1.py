"""Paraphrase patterns of templates 1–16 and 20–25, harvested from release samples.

``docs/paraphrase-evidence-p1.jsonl`` holds the paraphrased questions (age/sex suffix stripped) of 669 samples of
the ECG-QA PTB-XL ``paraphrased/valid`` split, read from a public full copy of the release (GitHub
jovianw/FSL_ECG_QA, ``ecgqa/ptbxl/paraphrased/valid/{00000,10000,20000}.json``), with each sample's
``attribute``. ``ecgqa/generation/data/paraphrases.json`` holds the patterns harvested from them (train/valid pool).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from ecgqa.generation.templates import DATA, harvest_paraphrases, load_templates

ROOT = Path(__file__).resolve().parents[2]
EVIDENCE = ROOT / "docs" / "paraphrase-evidence-p1.jsonl"
PATTERNS = DATA / "paraphrases.json"  # their train/valid pool
TEMPLATES = load_templates("ptbxl")
COVERED = set(range(1, 17)) | set(range(20, 26))


def _rows() -> list[dict]:
    return [json.loads(line) for line in EVIDENCE.read_text().splitlines() if line.strip()]


def _values(row: dict) -> tuple[str, ...]:
    """The slot values of a sample in its question's text order (the release writes them so in ``attribute``)."""
    return tuple(row["attribute"]) if TEMPLATES[row["template_id"]].value_tokens else ()


@pytest.fixture(scope="module")
def patterns() -> dict[int, list[str]]:
    spec = json.loads(PATTERNS.read_text())["templates"]
    return {int(k): v["train_valid"] for k, v in spec.items() if int(k) in COVERED}


def test_every_covered_template_has_evidence_and_patterns(patterns):
    rows = _rows()
    assert {r["template_id"] for r in rows} == COVERED
    assert set(patterns) == COVERED
    assert len({r["sample_id"] for r in rows}) == len(rows), "a sample is recorded twice"
    assert all(r["split"] == "valid" and r["sample_id"] // 10000 * 10000 == int(r["shard"]) for r in rows)
    # a template's paraphrases are few: every template seen here has 7, read from 17 to 53 samples each
    assert all(len(v) == 7 for v in patterns.values())
    assert min(Counter(r["template_id"] for r in rows).values()) >= 17


def test_each_sample_is_a_pattern_filled_with_its_values(patterns):
    for row in _rows():
        t = TEMPLATES[row["template_id"]]
        filled = {t.fill(_values(row), text=p) for p in patterns[t.id]}
        assert row["paraphrased"] in filled, f"valid sample {row['sample_id']}: {row['paraphrased']!r}"


def test_patterns_are_exactly_what_the_evidence_yields(patterns):
    """No pattern without a sample behind it, none of the samples' patterns left out."""
    triples = [(r["template_id"], TEMPLATES[r["template_id"]].fill(_values(r)), r["paraphrased"]) for r in _rows()]
    assert harvest_paraphrases(triples, TEMPLATES) == patterns


def test_patterns_fill_cleanly(patterns):
    """Every pattern uses exactly its template's slots, so any value pair fills it with nothing left over."""
    for tid, pats in patterns.items():
        t = TEMPLATES[tid]
        for p in pats:
            assert sorted(set(t.value_tokens)) == sorted({tok for tok in t.value_tokens if tok in p}), (tid, p)
            assert "${" not in t.fill(tuple(f"<v{i}>" for i in range(len(t.value_tokens))), text=p)
