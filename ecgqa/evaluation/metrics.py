"""The benchmark's metrics, in plain numpy (plus scikit-learn for precision/recall/AUC).

Exact match (docs/benchmark.md, "The metric: exact match"): a QA sample is correct only when, over its
``valid_classes``, the set of classes with sigmoid > 0.5 equals the set of true classes (``none`` = the empty set).
Classes outside ``valid_classes`` never count, whatever the model scores them: a verify question can
only be answered yes/no, so a confident "lead V2" on it is not an error of that question.

Everything here takes arrays, so ``ecgqa evaluate``, the LLM harness and the tests share one
definition. Scores are probabilities (already through the sigmoid), never logits.

One definition each, imported by every consumer (predictor, evaluate, report, llm_eval, serve):

- the decision rule :func:`decide` / :data:`THRESHOLD`: a class is predicted when its score is
  strictly greater than 0.5, as the reference implementation thresholds (fairseq-signals'
  ``binary_cross_entropy_with_logits`` criterion: ``probs > 0.5``); a score of exactly 0.5 is "no";
- exact match on answer *sets* (:func:`exact_match_sets`);
- the "known names first" ordering of groups (:func:`ordered`);
- the paper's table columns (:data:`PAPER_COLUMNS`) and its headline, the macro EM over the three
  single-ECG question types (``em_macro_single``); ``em_macro_all`` averages every type present
  (``em_macro_question_type`` is the old name of that number, still written for old readers).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ecgqa.data.constants import ATTRIBUTE_TYPES, QUESTION_TYPES

#: A class is predicted when its score is strictly above this (the reference code's ``> 0.5``).
THRESHOLD = 0.5

#: The paper's EM table columns (Oh et al. 2023, Tables 3-4), in its order, and the question type each is.
PAPER_COLUMNS: dict[str, str] = {
    "S-Verify": "single-verify",
    "S-Choose": "single-choose",
    "S-Query": "single-query",
    "CC-Verify": "comparison_consecutive-verify",
    "CC-Query": "comparison_consecutive-query",
    "CI-Verify": "comparison_irrelevant-verify",
    "CI-Query": "comparison_irrelevant-query",
}
#: The single-ECG question types: the macro over these is the paper's headline number.
SINGLE_TYPES: tuple[str, ...] = ("single-verify", "single-choose", "single-query")


def decide(probs: Any, threshold: float = THRESHOLD) -> np.ndarray:
    """The decision rule, as a bool array of ``probs``' shape: ``score > threshold`` (strictly)."""
    return np.asarray(probs, dtype=np.float64) > threshold


def _as_bool(a: Any, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    a = np.asarray(a)
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
    return a.astype(bool)


def predict(probs: np.ndarray, valid_mask: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Predicted multi-hot (N, C): :func:`decide` among the valid classes, False elsewhere."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"scores must be (samples, classes), got shape {probs.shape}")
    valid = _as_bool(valid_mask, "valid_mask", probs.shape)
    return decide(probs, threshold) & valid


def exact_match(
    probs: np.ndarray, labels: np.ndarray, valid_mask: np.ndarray, threshold: float = THRESHOLD
) -> np.ndarray:
    """Per-sample exact match (N,) bool over the valid classes only.

    ``labels`` is the multi-hot true answer (all zeros for ``none``); true classes outside the
    valid set are ignored, as the reference criterion compares the two vectors restricted to it.
    """
    pred = predict(probs, valid_mask, threshold)
    valid = np.asarray(valid_mask, dtype=bool)
    true = _as_bool(labels, "labels", pred.shape) & valid
    return (pred == true).all(axis=1)


def exact_match_sets(predicted: Iterable[Iterable[str]], true: Iterable[Iterable[str]]) -> np.ndarray:
    """Per-sample exact match of answer *sets* (names); ``none`` and [] both mean the empty set.

    For predictions that are already sets (an LLM reply parsed to options, a predictions.jsonl).
    """

    def norm(xs: Iterable[str]) -> frozenset[str]:
        return frozenset(x for x in xs if x != "none")

    return np.array([norm(p) == norm(t) for p, t in zip(predicted, true, strict=True)], dtype=bool)


def ordered(keys: Iterable[str], known: Sequence[str]) -> list[str]:
    """Known names in their canonical order first, then anything unexpected, sorted (tables, reports)."""
    keys = set(keys)
    return [k for k in known if k in keys] + sorted(keys - set(known))


def group_em(correct: np.ndarray, groups: Sequence[str], known: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """{group: {"n", "em"}} for each group present, canonical order first."""
    correct = np.asarray(correct, dtype=bool)
    groups = np.asarray(list(groups), dtype=object)
    if len(groups) != len(correct):
        raise ValueError(f"{len(groups)} group names for {len(correct)} samples")
    out = {}
    for g in ordered(groups.tolist(), known):
        hit = correct[groups == g]
        out[g] = {"n": int(hit.size), "em": float(hit.mean())}
    return out


def em_summary(correct: np.ndarray, question_types: Sequence[str], attribute_types: Sequence[str]) -> dict[str, Any]:
    """The report's EM block: overall, the two macros, per question / attribute type.

    ``em_macro_single`` is the paper's headline: the mean of the single-verify, single-choose and
    single-query EMs (each type weighted equally; the split is dominated by a few types, so the
    micro EM hides the hard ones), over those of the three present (None when none is).
    ``em_macro_all`` is the mean over every question type present; ``em_macro_question_type``
    repeats it under its old name so reports written before the split stay readable.
    """
    correct = np.asarray(correct, dtype=bool)
    per_qt = group_em(correct, question_types, QUESTION_TYPES)
    per_at = group_em(correct, attribute_types, ATTRIBUTE_TYPES)
    macros = macro_em(per_qt)
    return {
        "n": int(correct.size),
        "em": float(correct.mean()) if correct.size else float("nan"),
        **macros,
        "em_macro_question_type": macros["em_macro_all"],
        "per_question_type": per_qt,
        "per_attribute_type": per_at,
    }


def macro_em(per_question_type: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """``em_macro_single`` and ``em_macro_all`` of a ``{question type: {"n", "em"}}`` block (None if empty)."""

    def mean(keys: Iterable[str]) -> float | None:
        values = [
            per_question_type[k]["em"]
            for k in keys
            if k in per_question_type and per_question_type[k].get("em") is not None
        ]
        return float(np.mean(values)) if values else None

    return {"em_macro_single": mean(SINGLE_TYPES), "em_macro_all": mean(per_question_type)}


def paper_row(report: dict[str, Any]) -> dict[str, float | None]:
    """A report's EMs in the paper's columns (:data:`PAPER_COLUMNS`), then both macros; None = not measured.

    Reads old reports too: the macros are recomputed from ``per_question_type`` when absent.
    """
    per_qt = report.get("per_question_type") or {}
    row: dict[str, float | None] = {col: (per_qt.get(qt) or {}).get("em") for col, qt in PAPER_COLUMNS.items()}
    macros = macro_em(per_qt)
    for key in ("em_macro_single", "em_macro_all"):
        row[key] = report[key] if report.get(key) is not None else macros[key]
    if report.get("em_macro_all") is None and report.get("em_macro_question_type") is not None:
        row["em_macro_all"] = report["em_macro_question_type"]
    return row


def _safe_auc(y_true: np.ndarray, y_score: np.ndarray) -> float | None:
    """ROC AUC, or None where it is undefined (only one label value present)."""
    from sklearn.metrics import roc_auc_score

    if y_true.size == 0 or y_true.min() == y_true.max():
        return None
    return float(roc_auc_score(y_true, y_score))


def label_metrics(
    probs: np.ndarray, labels: np.ndarray, valid_mask: np.ndarray, threshold: float = THRESHOLD
) -> dict[str, Any]:
    """Label-level precision / recall / AUC over the (sample, valid class) decisions.

    Micro: every valid (sample, class) pair is one binary decision. Macro AUC: the mean over classes
    whose valid pairs contain both a positive and a negative (others have no AUC).
    """
    from sklearn.metrics import precision_score, recall_score

    probs = np.asarray(probs, dtype=np.float64)
    valid = _as_bool(valid_mask, "valid_mask", probs.shape)
    true = _as_bool(labels, "labels", probs.shape)
    y_true = true[valid].astype(int)
    y_score = probs[valid]
    y_pred = decide(y_score, threshold).astype(int)
    per_class_auc = [_safe_auc(true[valid[:, c], c].astype(int), probs[valid[:, c], c]) for c in range(probs.shape[1])]
    defined = [a for a in per_class_auc if a is not None]
    return {
        "n_decisions": int(y_true.size),
        "precision": float(precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(recall_score(y_true, y_pred, zero_division=0)),
        "auc_micro": _safe_auc(y_true, y_score),
        "auc_macro": float(np.mean(defined)) if defined else None,
        "n_classes_with_auc": len(defined),
    }


def upperbound_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    label_mask: np.ndarray,
    classes: Sequence[str],
    threshold: float = THRESHOLD,
) -> dict[str, Any]:
    """Per-class AUC and accuracy of an attribute (upperbound) classifier over its labelled entries.

    A sample labels only a few grounding classes (``label_mask``); the rest are unknown, not
    negative, so each class is scored on the samples that label it.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(f"scores have shape {probs.shape}, expected (samples, {len(classes)} classes)")
    mask = _as_bool(label_mask, "label_mask", probs.shape)
    true = _as_bool(labels, "labels", probs.shape)
    pred = decide(probs, threshold)
    per_class = {}
    for c, name in enumerate(classes):
        m = mask[:, c]
        if not m.any():
            continue
        y = true[m, c]
        per_class[name] = {
            "n": int(m.sum()),
            "n_positive": int(y.sum()),
            "accuracy": float((pred[m, c] == y).mean()),
            "auc": _safe_auc(y.astype(int), probs[m, c]),
        }
    aucs = [v["auc"] for v in per_class.values() if v["auc"] is not None]
    return {
        "per_class": per_class,
        "auc_macro": float(np.mean(aucs)) if aucs else None,
        "accuracy_macro": float(np.mean([v["accuracy"] for v in per_class.values()])) if per_class else None,
        "accuracy_micro": float((pred == true)[mask].mean()) if mask.any() else None,
        "auc_micro": _safe_auc(true[mask].astype(int), probs[mask]),
    }


def upperbound_correct(
    probs: np.ndarray, labels: np.ndarray, label_mask: np.ndarray, threshold: float = THRESHOLD
) -> np.ndarray:
    """Per-sample (N,) bool: every labelled class classified right (the upperbound's exact match).

    Lets upperbound reports carry an ``em`` and tabulate beside QA ones in ``ecgqa report``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    mask = _as_bool(label_mask, "label_mask", probs.shape)
    true = _as_bool(labels, "labels", probs.shape)
    return ((decide(probs, threshold) == true) | ~mask).all(axis=1)
