"""Templates as package data, the slot engine, the release's text quirks, and the harvested paraphrases."""

from __future__ import annotations

import csv
import json

import pytest

from ecgqa.generation.check import expected_texts, slot_values
from ecgqa.generation.templates import (
    LEAD_NAMES,
    TemplateError,
    harvest_paraphrases,
    load_templates,
    paraphrases,
    swap_words,
)


def _release_samples(sample_paths, variant="template"):
    out = []
    for path in sorted((sample_paths.ptbxl_release / variant).glob("*/*.json")):
        out.extend(json.loads(path.read_text()))
    return out


def test_seventy_ptbxl_and_sixty_mimic_templates_with_the_release_options(sample_paths):
    ptbxl, mimic = load_templates("ptbxl"), load_templates("mimic-iv-ecg")
    assert sorted(ptbxl) == list(range(1, 71))
    assert set(ptbxl) - set(mimic) == {28, 29, 30, 31, 32, 33, 35, 36, 37, 38}
    assert len(mimic) == 60
    with open(sample_paths.ptbxl_release / "answers_for_each_template.csv", newline="") as f:
        release = {int(r["template_id"]): r["classes"] for r in csv.DictReader(f)}
    for tid, t in ptbxl.items():
        assert str(list(t.options)) == release[tid]
    groups = {t.scope for t in ptbxl.values()}
    assert groups == {"single", "comparison_consecutive", "comparison_irrelevant"}
    assert [t.id for t in ptbxl.values() if t.scope == "comparison_consecutive"] == list(range(43, 57))


def test_every_bundled_release_text_is_a_filled_template(sample_paths):
    templates = load_templates()
    samples = _release_samples(sample_paths)
    assert len(samples) == 451
    for s in samples:
        t = templates[s["template_id"]]
        values, lead = slot_values(t, s)
        assert s["question"] in expected_texts(t, values, lead), s["sample_id"]
        if t.has_lead:
            assert lead in LEAD_NAMES


def test_template_37_word_swap_quirk_is_reproduced():
    t = load_templates()[37]
    text = t.fill(("extrasystoles", "ventricular extrasystoles"))
    assert text == "Which kind of extra systoles does this ECG show, extrasystoles or ventricular extrasystoles?"
    swapped = swap_words(text, "extrasystoles", "ventricular extrasystoles")
    # the release's own text (GENERATION.md, "Release quirk, template 37")
    assert swapped == (
        "Which kind of extra systoles does this ECG show, ventricular extrasystoles or "
        "ventricular ventricular extrasystoles?"
    )
    plain = load_templates()[30].fill(("static noise", "baseline drift"))
    assert swap_words(plain, "static noise", "baseline drift").endswith("baseline drift or static noise?")


def test_fill_refuses_wrong_slot_counts():
    t = load_templates()
    with pytest.raises(TemplateError, match="template 26"):
        t[26].fill(("static noise",))  # no lead
    with pytest.raises(TemplateError, match="template 3"):
        t[3].fill(("hypertrophy",))
    assert (
        t[40]
        .fill(("rr interval", "below the normal range", "within the normal range"))
        .startswith("Which range does the rr interval of this ECG fall in, below")
    )


def test_paraphrases_are_harvested_not_invented(sample_paths):
    """Every bundled paraphrased text is one of the shipped patterns filled with that sample's values."""
    templates = load_templates()
    shipped = paraphrases()
    assert sorted(shipped) == [t for t in range(1, 71) if t not in (17, 18, 19)]  # 17-19 are not generated
    para = {s["sample_id"]: s for s in _release_samples(sample_paths, "paraphrased")}
    triples = []
    for s in _release_samples(sample_paths):
        t = templates[s["template_id"]]
        values, lead = slot_values(t, s)
        filled = {t.fill(values, lead, text=p) for p in shipped[t.id]["train_valid"]}  # train/120000, valid/60000
        assert para[s["sample_id"]]["question"] in filled, s["sample_id"]
        triples.append((t.id, s["question"], para[s["sample_id"]]["question"]))
    # harvesting the bundled shards alone finds a subset of the shipped patterns
    harvested = harvest_paraphrases(triples, templates)
    for tid, patterns in harvested.items():
        assert set(patterns) <= set(shipped[tid]["train_valid"])


def test_python_api_and_cli_row():
    import ecgqa
    from ecgqa.cli import SUBCOMMANDS
    from ecgqa.generation.engine import generate

    assert ecgqa.generate is generate
    assert SUBCOMMANDS["generate"][0] == "ecgqa.cli.generate"
