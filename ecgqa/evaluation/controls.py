"""Controls beside every number: does the model use the ECG, or only the question?

Under ECG-QA's sampling caps a verify question is at most one-third "yes", so answering "no" to every
verify question scores well in exact match (EM) without looking at any ECG. A number alone cannot show
that a model reads the signal; a number beside its controls can:

- **shuffled-ECG**: the same model and the same questions, but every ECG of the split replaced by another
  ECG of the split (:func:`shuffled_ecg_map`: one seeded permutation of the split's ECGs with no fixed
  point, so every question sees a different ECG and all questions of one ECG see the same other one). A
  model that ignores the signal scores the same; a model that uses it drops.
- **question-only**: no ECG at all: the majority answer per question text learned from the training split
  (:class:`MajorityAnswers`), a blind checkpoint, or an LLM asked with ``--input none``.

For the model and each control (paired by ``sample_id``) :func:`compare` reports EM overall and per
question type, and **balanced accuracy** per verify question text (the mean, over the answers that occur
for that text, of the fraction of its questions answered right), macro-averaged over the verify texts on
which at least two answers occur: constant "no" scores 0.5 there whatever the class balance. The
difference model − control comes with a **paired bootstrap 95 % CI over ECGs**: each resample draws the
split's ECGs (for a comparison question its ECG pair) with replacement and keeps all their questions, so
the many questions asked about one ECG are not counted as independent evidence. The verdict sentence is
derived from those intervals (:func:`verdict`), never written by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ecgqa.data.constants import QUESTION_TYPES
from ecgqa.evaluation.metrics import ordered

SHUFFLED_ECG = "shuffled-ecg"
QUESTION_ONLY = "question-only"
#: What each control is, in one line (report.md, ``ecgqa report``).
CONTROL_HOW = {
    SHUFFLED_ECG: "same model, same questions, each ECG replaced by another ECG of the split (seeded permutation)",
    QUESTION_ONLY: "no ECG: the question alone",
}
N_BOOTSTRAP = 1000
SEED = 0
CI_LEVEL = 0.95
#: The metrics the verdict may rest on, in order of preference: the first one defined on the paired samples.
PRIMARY = ("balanced_accuracy_macro", "em")
METRIC_NAMES = {
    "em": "exact match",
    "em_macro": "exact match, macro over question types",
    "balanced_accuracy_macro": "balanced accuracy, macro over verify question texts",
}


# ------------------------------------------------------------------------------------ building the controls


def shuffled_ecg_map(ecg_ids: Iterable[int], seed: int = SEED) -> dict[int, int]:
    """A permutation of the distinct ``ecg_ids`` with no fixed point: ECG → the ECG shown in its place.

    The ids are put in a seeded random order and each is mapped to the next one (the last to the first),
    so no ECG is shown as itself and the mapping is the same for every question of an ECG.
    """
    unique = sorted({int(e) for e in ecg_ids})
    if len(unique) < 2:
        raise ValueError(f"a shuffled-ECG control needs at least 2 distinct ECGs; the questions use {len(unique)}")
    order = np.random.default_rng(seed).permutation(unique)
    return {int(order[i]): int(order[(i + 1) % len(order)]) for i in range(len(order))}


class MajorityAnswers:
    """The question-only reference learned from training questions: the most frequent answer set per
    question text; for a text never seen in training, per template id, then per question type.

    Ties go to the answer set that sorts first, so the baseline is deterministic.
    """

    def __init__(self, rows: Iterable[Mapping[str, Any]]) -> None:
        from collections import Counter

        by: dict[tuple[str, Any], Counter] = {}
        self.n_train = 0
        for r in rows:
            answer = tuple(sorted(r["answer"]))
            self.n_train += 1
            for key in (("question", r["question"]), ("template", r.get("template_id")), ("type", r["question_type"])):
                by.setdefault(key, Counter())[answer] += 1
        self._best = {k: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for k, c in by.items()}
        self.fallbacks = {"question": 0, "template": 0, "type": 0, "none": 0}

    def answer(self, question: str, template_id: Any, question_type: str) -> tuple:
        """The majority answer set (as stored: class indices or names) and counts which key gave it."""
        for key in (("question", question), ("template", template_id), ("type", question_type)):
            if key in self._best:
                self.fallbacks[key[0]] += 1
                return self._best[key]
        self.fallbacks["none"] += 1
        return ()


# ------------------------------------------------------------------------------------ statistics


def _verify_key(row: Mapping[str, Any]) -> tuple[str, str] | None:
    if not str(row["question_type"]).endswith("verify"):
        return None
    return str(row["question"]), "|".join(sorted(row["true"])) or "none"


class _Layout:
    """Which samples fall into which cells (question types; verify text × true answer), and their ECG clusters."""

    def __init__(self, rows: Sequence[Mapping[str, Any]]) -> None:
        from scipy import sparse

        n = len(rows)
        clusters: dict[tuple[int, ...], int] = {}
        self.cluster = np.array([clusters.setdefault(tuple(int(e) for e in r["ecg_id"]), len(clusters)) for r in rows])
        self.n_clusters = len(clusters)
        self.qtypes = ordered({r["question_type"] for r in rows}, QUESTION_TYPES)
        qt_index = {q: i for i, q in enumerate(self.qtypes)}
        qt = np.array([qt_index[r["question_type"]] for r in rows])
        # verify cells: (text, true answer); only texts with at least two distinct answers count
        keys = [_verify_key(r) for r in rows]
        answers_of: dict[str, set[str]] = {}
        for k in keys:
            if k is not None:
                answers_of.setdefault(k[0], set()).add(k[1])
        texts = sorted(t for t, a in answers_of.items() if len(a) >= 2)
        text_index = {t: i for i, t in enumerate(texts)}
        cells: dict[tuple[str, str], int] = {}
        cell_of = np.full(n, -1)
        for i, k in enumerate(keys):
            if k is not None and k[0] in text_index:
                cell_of[i] = cells.setdefault(k, len(cells))
        self.n_texts = len(texts)
        text_type = {}
        for r in rows:
            k = _verify_key(r)
            if k is not None and k[0] in text_index:
                text_type[text_index[k[0]]] = r["question_type"]
        self.verify_types = [q for q in self.qtypes if q in set(text_type.values())]
        # cell → text (K × T) and text → verify type (T × V) indicator matrices
        self.cell_text = np.zeros((len(cells), len(texts)))
        for (t, _), c in cells.items():
            self.cell_text[c, text_index[t]] = 1.0
        self.text_type = np.zeros((len(texts), len(self.verify_types)))
        for t, q in text_type.items():
            self.text_type[t, self.verify_types.index(q)] = 1.0

        def agg(cols: np.ndarray, n_cols: int, values: np.ndarray):
            m = cols >= 0
            return sparse.csr_array(
                (values[m].astype(float), (self.cluster[m], cols[m])), shape=(self.n_clusters, n_cols)
            )

        self._agg = agg
        self.qt, self.cell_of, self.n_cells = qt, cell_of, len(cells)
        self.den_qt = agg(qt, len(self.qtypes), np.ones(n))
        self.den_cell = agg(cell_of, self.n_cells, np.ones(n))

    def metrics(self, correct: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric, one value per row of ``weights`` (resamples × clusters: how often each ECG is drawn)."""
        num_qt = weights @ self._agg(self.qt, len(self.qtypes), correct)
        den_qt = weights @ self.den_qt
        out: dict[str, np.ndarray] = {}
        with np.errstate(invalid="ignore", divide="ignore"):
            out["em"] = num_qt.sum(1) / den_qt.sum(1)
            per_qt = num_qt / den_qt
            for i, q in enumerate(self.qtypes):
                out[f"em[{q}]"] = per_qt[:, i]
            out["em_macro"] = _nanmean(per_qt)
            if self.n_texts:
                num = weights @ self._agg(self.cell_of, self.n_cells, correct)
                den = weights @ self.den_cell
                present = den > 0
                recall = np.where(present, num / np.where(present, den, 1), 0.0)
                per_text = (recall @ self.cell_text) / (present @ self.cell_text)  # nan: no answer drawn
                out["balanced_accuracy_macro"] = _nanmean(per_text)
                for j, q in enumerate(self.verify_types):
                    cols = self.text_type[:, j] > 0
                    out[f"balanced_accuracy_macro[{q}]"] = _nanmean(per_text[:, cols])
        return out


def _nanmean(a: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(a)
    n = ok.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(ok, a, 0).sum(1) / np.maximum(n, 1), np.nan)


def _num(x: Any) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def _arm_block(values: dict[str, np.ndarray], layout: _Layout, counts: dict[str, int]) -> dict[str, Any]:
    block: dict[str, Any] = {
        "em": _num(values["em"][0]),
        "em_macro": _num(values["em_macro"][0]),
        "balanced_accuracy_macro": _num(values["balanced_accuracy_macro"][0])
        if "balanced_accuracy_macro" in values
        else None,
        "per_question_type": {},
    }
    for q in layout.qtypes:
        entry: dict[str, Any] = {"n": counts[q], "em": _num(values[f"em[{q}]"][0])}
        if f"balanced_accuracy_macro[{q}]" in values:
            entry["balanced_accuracy_macro"] = _num(values[f"balanced_accuracy_macro[{q}]"][0])
        block["per_question_type"][q] = entry
    return block


def _interval(diffs: np.ndarray, point: float, level: float) -> dict[str, Any]:
    d = diffs[~np.isnan(diffs)]
    if np.isnan(point) or d.size < 2:
        return {"diff": _num(point), "ci": None}
    lo, hi = np.quantile(d, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"diff": float(point), "ci": [float(lo), float(hi)]}


def compare(
    model: Sequence[Mapping[str, Any]],
    controls: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    how: Mapping[str, str] | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = SEED,
    level: float = CI_LEVEL,
) -> dict[str, Any]:
    """The ``controls`` block of report.json: the model and each control on the samples both answered.

    ``model`` / each control: prediction lines (``sample_id``, ``question_type``, ``question``, ``true``,
    ``ecg_id``, ``correct``; lines with ``correct`` None, a failed request, are left out). The model's lines
    give the question, the truth and the real ECG ids (the bootstrap's clusters); a control is matched to them
    by ``sample_id``.
    """
    if not controls:
        raise ValueError("compare() needs at least one control")
    by_id = {int(r["sample_id"]): r for r in model if r.get("correct") is not None}
    ctrl_by = {
        name: {int(r["sample_id"]): bool(r["correct"]) for r in rows if r.get("correct") is not None}
        for name, rows in controls.items()
    }
    ids = sorted(set(by_id).intersection(*[set(c) for c in ctrl_by.values()]))
    if not ids:
        raise ValueError("the model and its controls share no answered sample: nothing to compare")
    rows = [by_id[i] for i in ids]
    layout = _Layout(rows)
    correct = {"model": np.array([bool(r["correct"]) for r in rows])}
    for name, c in ctrl_by.items():
        correct[name] = np.array([c[i] for i in ids])
    counts = {q: int((layout.qt == k).sum()) for k, q in enumerate(layout.qtypes)}

    ones = np.ones((1, layout.n_clusters))
    point = {name: layout.metrics(c, ones) for name, c in correct.items()}
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(layout.n_clusters, np.full(layout.n_clusters, 1 / layout.n_clusters), size=n_bootstrap)
    boot = {name: {} for name in correct}
    for start in range(0, n_bootstrap, 200):  # bounded memory on the full test split
        w = draws[start : start + 200].astype(float)
        for name, c in correct.items():
            for k, v in layout.metrics(c, w).items():
                boot[name].setdefault(k, []).append(v)
    boot = {name: {k: np.concatenate(v) for k, v in m.items()} for name, m in boot.items()}

    differences: dict[str, Any] = {}
    for name in controls:
        entry: dict[str, Any] = {}
        for metric in ("em", "em_macro", "balanced_accuracy_macro"):
            if metric in point["model"]:
                entry[metric] = _interval(
                    boot["model"][metric] - boot[name][metric],
                    point["model"][metric][0] - point[name][metric][0],
                    level,
                )
        per_qt = {}
        for q in layout.qtypes:
            per_qt[q] = {
                "em": _interval(
                    boot["model"][f"em[{q}]"] - boot[name][f"em[{q}]"],
                    point["model"][f"em[{q}]"][0] - point[name][f"em[{q}]"][0],
                    level,
                )
            }
            key = f"balanced_accuracy_macro[{q}]"
            if key in point["model"]:
                per_qt[q]["balanced_accuracy_macro"] = _interval(
                    boot["model"][key] - boot[name][key], point["model"][key][0] - point[name][key][0], level
                )
        entry["per_question_type"] = per_qt
        differences[name] = entry

    primary = next(m for m in PRIMARY if (point["model"].get(m) is not None and not np.isnan(point["model"][m][0])))
    block: dict[str, Any] = {
        "paired_on": "sample_id",
        "n_paired": len(ids),
        "n_model_only": len(by_id) - len(ids),
        "n_ecg_clusters": layout.n_clusters,
        "n_verify_texts": layout.n_texts,
        "bootstrap": {
            "n": n_bootstrap,
            "seed": seed,
            "level": level,
            "resampled": "ECGs (a comparison question's ECG pair is one unit), with all their questions; not questions",
        },
        "metrics": {
            "em": "exact match: the predicted set equals the true set over the question's valid classes",
            "em_macro": "mean of the EM of each question type present",
            "balanced_accuracy_macro": (
                "per verify question text, the mean over the answers that occur of the fraction of questions with "
                "that answer answered right; macro over the verify texts with at least two answers"
            ),
        },
        "primary_metric": primary,
        "arms": {name: _arm_block(point[name], layout, counts) for name in correct},
        "how": {name: (how or {}).get(name, CONTROL_HOW.get(name, "")) for name in controls},
        "differences": differences,
    }
    block["verdict"] = verdict(block)
    return block


def verdict(block: Mapping[str, Any]) -> dict[str, Any]:
    """Whether the model is above each control on the primary metric, read off the CIs, and one sentence."""
    metric = block["primary_metric"]
    level = round(100 * block["bootstrap"]["level"])
    per: dict[str, str] = {}
    parts = []
    for name, diff in block["differences"].items():
        d = diff[metric]
        if d["ci"] is None:
            per[name] = "undetermined"
            parts.append(f"{name}: {_pt(d['diff'])} (no CI: too few ECGs)")
            continue
        lo, hi = d["ci"]
        per[name] = "above" if lo > 0 else "below" if hi < 0 else "indistinguishable"
        parts.append(f"{_pt(d['diff'])} over {name} ({level} % CI {_pt(lo)} to {_pt(hi)})")
    what = METRIC_NAMES.get(metric, metric)
    if all(v == "above" for v in per.values()):
        sentence = (
            f"The model is above all its controls on {what}: {'; '.join(parts)}. "
            "Its answers depend on the ECG beyond what the question alone gives."
        )
    else:
        not_above = [n for n, v in per.items() if v != "above"]
        sentence = (
            f"The model is NOT shown to be above {', '.join(not_above)} on {what}: {'; '.join(parts)}. "
            "These numbers do not show that it uses the ECG."
        )
    return {
        "metric": metric,
        "per_control": per,
        "above_all": all(v == "above" for v in per.values()),
        "sentence": sentence,
    }


def _pt(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f} pt"
