"""The protocol card: what a report measured, and whether a published figure was measured the same way.

Peers' ECG-QA numbers are rarely comparable (different test sets, scorers, pooled variants:
docs/scoring-pitfalls.md). Every report of this toolkit therefore carries a card (:func:`card`, typed as
``ecgqa.evaluation.report_folder.ProtocolCard``): dataset and version, variant, split, the exact sample (kind,
size, sha256 of the ids), n per question type, metric definitions, scorer version, prompt style, the model
and its input. :func:`match` decides, row by row of ``ecgqa/paper_results.json``, whether the run and the
published figure share test questions and metric, and says why not when they do not; ``ecgqa report
--paper`` places a published row only beside a run it matches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ecgqa.evaluation.metrics import SINGLE_TYPES

#: Published ``dataset`` names → this toolkit's ECG-QA versions.
DATASETS = {"PTB-XL": "ptbxl", "MIMIC-IV-ECG": "mimic-iv-ecg"}
PAPER_SAMPLE_SIZE = 8154
METRICS = {
    "em": "exact match: the predicted answer set equals the true set over the question's valid classes "
    "(class score > 0.5; a free-text reply is parsed to options by the reply rule; a reply naming no option is wrong)",
    "em_macro_single": "mean EM over single-verify, single-choose and single-query (the paper's headline)",
    "em_macro_all": "mean EM over every question type present",
    "balanced_accuracy_macro": "controls only: per verify question text, mean over the answers that occur of "
    "the fraction answered right; macro over texts with at least two answers",
}


def sample_card(kind: str, ids: Sequence[int], n_in_split: int, **extra: Any) -> dict[str, Any]:
    """The ``sample`` entry of a card: ``kind`` (full / paper / draw / ids-file / first-n / subset), the size
    and the sha256 of the scored ids (one per line, as the paper's published list hashes)."""
    from ecgqa.evaluation.paper_sample import ids_sha256

    return {"kind": kind, "n": len(ids), "n_in_split": int(n_in_split), "sha256": ids_sha256(sorted(ids)), **extra}


def card(
    *,
    version: str,
    variant: str | None,
    data_content_hash: str | None,
    split: str,
    sample: Mapping[str, Any],
    per_question_type: Mapping[str, Mapping[str, Any]],
    model: str,
    input: str,
    reply_rule: str | None = None,
    prompt_style: str | None = None,
    control: str | None = None,
    training_split_scored: bool = False,
) -> dict[str, Any]:
    """A protocol card, with its comparison against every published row (:func:`match`)."""
    from ecgqa.evaluation.report_folder import SCORER_VERSION

    c: dict[str, Any] = {
        "dataset": "ECG-QA",
        "version": version,
        "data_content_hash": data_content_hash,
        "variant": variant,
        "split": split,
        "sample": dict(sample),
        "n_per_question_type": {k: int(v["n"]) for k, v in per_question_type.items()},
        "metrics": dict(METRICS),
        "scorer_version": SCORER_VERSION,
        "reply_rule": reply_rule,
        "prompt_style": prompt_style,
        "model": model,
        "input": input,
        "control": control,
        "training_split_scored": bool(training_split_scored),
    }
    c["comparable_with_published"] = comparisons(c)
    return c


def comparisons(c: Mapping[str, Any]) -> list[dict[str, Any]]:
    """For each published row: ``{"model", "comparable", "reason"}``."""
    from ecgqa.evaluation.report import paper_results

    out = []
    for row in paper_results():
        ok, why = match(c, row)
        out.append({"model": row["model"], "comparable": ok, "reason": why})
    return out


def match(c: Mapping[str, Any] | None, row: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a run with card ``c`` measured what the published ``row`` measured, and why (not)."""
    if not c:
        return False, "the run has no protocol card (a report written before cards existed): re-score it"
    why: list[str] = []
    if c.get("control"):
        why.append(f"this run is a {c['control']} control, not a model's score")
    want = DATASETS.get(row.get("dataset", ""), row.get("dataset"))
    if c.get("version") != want:
        why.append(f"dataset {c.get('version')} is not the published {row.get('dataset')}")
    if c.get("split") != "test":
        why.append(f"split {c.get('split')!r} is not the test split")
    if c.get("training_split_scored"):
        why.append("the split scored is the model's own training split")
    n_qt = c.get("n_per_question_type") or {}
    if "Macro (single)" in (row.get("em") or {}) and not all(n_qt.get(t) for t in SINGLE_TYPES):
        missing = [t for t in SINGLE_TYPES if not n_qt.get(t)]
        why.append(f"the published figure is the macro over the single-ECG types; this run has none of {missing}")
    s = c.get("sample") or {}
    wanted = row.get("sample")
    n_single = sum(n_qt.get(t, 0) for t in SINGLE_TYPES)
    if wanted is None:
        why.append("the published source does not state its test questions")
    elif wanted == "paper" and not (s.get("kind") == "paper" and s.get("n") == PAPER_SAMPLE_SIZE):
        why.append(
            f"the published figure is on the paper's {PAPER_SAMPLE_SIZE:,} LLM ids; this run scored {_sample_words(s)}"
        )
    elif wanted == "full" and not (s.get("kind") == "full" and (row.get("n") is None or n_single == row["n"])):
        why.append(
            f"the published figure is on the full test split ({row.get('n') or '?'} single-ECG questions); this run "
            f"scored {_sample_words(s)} with {n_single} single-ECG questions"
        )
    if why:
        return False, "; ".join(why)
    caveat = ""
    if row.get("variant") is None:
        caveat = " (the source does not say template or paraphrased questions)"
    return True, f"same dataset, test questions and metric (EM, macro over single-ECG types){caveat}"


def _sample_words(s: Mapping[str, Any]) -> str:
    kind = s.get("kind", "?")
    return {
        "full": f"the full split ({s.get('n')} questions)",
        "paper": f"the paper's sample with {s.get('n')} of its ids present",
        "draw": f"a seeded draw of {s.get('n')} questions",
        "first-n": f"the first {s.get('n')} questions (--limit)",
        "subset": f"an answered subset of {s.get('n')} of {s.get('n_in_split')} questions",
        "ids-file": f"{s.get('n')} questions of an ids file",
    }.get(kind, f"{kind} ({s.get('n')} questions)")
