"""``ecgqa evaluate --checkpoint CKPT --data PREPARED --split test --out REPORT``.

Runs a trained checkpoint over one split of a prepared dataset through the public predictor
(``ecgqa.load``), so what is measured is exactly what the demo and the LLM harness get, and writes

- ``predictions.jsonl``: one line per sample (sample_id, question_type, attribute_type, predicted,
  true, valid, scores over the valid classes, correct), so any number here can be recomputed;
- ``report.json`` / ``report.md``: exact match overall, per question type, per attribute type and the
  macro average over question types (``ecgqa.evaluation.metrics``), plus label-level precision/recall/AUC;
  for an upperbound checkpoint, per-grounding-class AUC and accuracy;
- ``charts/*.png``: bar charts of EM per question type (and per attribute type inside each one).

Exact match uses ``ecgqa.evaluation.metrics.decide`` (score > 0.5) over each sample's valid classes only.
The checkpoint and the data are matched by ``ecgqa.checkpoint.check_compatible`` (task, classes,
rate, signal length). ``--out`` is replaced only when it is absent, empty, or a report folder this
command wrote (``ecgqa.files.claim_output_dir``).
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ecgqa.data.constants import ATTRIBUTE_TYPES, LEAD_GROUPS, QUESTION_TYPES
from ecgqa.data.leads import group_mask
from ecgqa.evaluation.metrics import THRESHOLD, decide
from ecgqa.evaluation.report import render_markdown
from ecgqa.files import AtomicLines, atomic_write, claim_output_dir

REPORT_JSON = "report.json"
#: everything an evaluation writes into --out (a folder holding only these is ours to replace)
OUTPUTS = ("predictions.jsonl", REPORT_JSON, "report.md", "charts")

CHUNK = 256  # samples read from the store per step: bounds memory on the full test split


def _is_our_report(marker: Path) -> bool:
    try:
        return json.loads(marker.read_text()).get("kind") in ("qa", "upperbound")
    except (OSError, ValueError, AttributeError):
        return False


def claim_report_dir(out: Path) -> None:
    """Refuse an ``--out`` this command did not write (see ``ecgqa.files.claim_output_dir``)."""
    if (
        out.is_dir()
        and not out.is_symlink()
        and all(p.name in OUTPUTS or p.name.startswith(".") for p in out.iterdir())
    ):
        return  # only our own outputs (perhaps of an interrupted run)
    claim_output_dir(out, marker=REPORT_JSON, what="evaluation report", is_ours=_is_our_report)


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    split: str = "test",
    out: str | Path = "report",
    *,
    batch_size: int = 32,
    device: str | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``data``/``split`` and write the report folder ``out``; returns report.json."""
    import ecgqa
    from ecgqa.checkpoint import check_compatible
    from ecgqa.data.prepared import PreparedData

    checkpoint, data_path, out = Path(checkpoint), Path(data), Path(out)
    claim_report_dir(out)
    predictor = ecgqa.load(checkpoint, device=device)
    prepared = PreparedData(data_path)
    check_compatible(predictor, prepared)
    if split not in prepared.splits:
        raise ValueError(f"{data_path} has no split {split!r}; it holds {prepared.splits}")
    table = prepared.split(split)
    if limit is not None:
        table = table.select(range(min(limit, len(table))))
    if len(table) == 0:
        raise ValueError(f"{data_path}: split {split!r} is empty; nothing to evaluate")

    out.mkdir(parents=True, exist_ok=True)
    base = {
        "kind": predictor.task,
        "model": predictor.model_name,
        "checkpoint": str(checkpoint),
        "data": str(data_path),
        "split": split,
        "threshold": THRESHOLD,
    }
    seen = _trained_on(checkpoint, predictor, prepared, split)
    if seen:
        base["note"] = seen
        print(f"warning: {seen}", file=sys.stderr)
    run_split = _evaluate_qa if predictor.task == "qa" else _evaluate_upperbound
    with AtomicLines(out / "predictions.jsonl") as write_line:
        extra = run_split(predictor, prepared, table, write_line, batch_size=batch_size, progress=progress)
    report = {**base, **extra}
    report["charts"] = _charts(report, out)
    atomic_write(out / REPORT_JSON, json.dumps(report, indent=2) + "\n")
    atomic_write(out / "report.md", render_markdown(report))
    return report


def _trained_on(checkpoint: Path, predictor: Any, prepared: Any, split: str) -> str | None:
    """A warning when ``split`` is the very data the checkpoint was trained on (its EM is not a test score)."""
    from ecgqa.checkpoint import TRAIN_OPTIONS

    options = checkpoint / TRAIN_OPTIONS
    meta = getattr(predictor, "meta", None) or {}
    if not options.is_file() or meta.get("content_hash") != prepared.meta.get("content_hash"):
        return None
    try:
        train_split = json.loads(options.read_text()).get("train_split")
    except json.JSONDecodeError:
        return None
    if train_split != split:
        return None
    return f"{checkpoint} was trained on split {split!r} of this prepared data; this EM is a training score"


def _chunks(table: Any, progress: bool, what: str) -> Iterator[dict[str, list]]:
    from tqdm.auto import tqdm

    with tqdm(total=len(table), disable=not progress, desc=what, unit="sample") as bar:
        for start in range(0, len(table), CHUNK):
            chunk = table[start : start + CHUNK]
            yield chunk
            bar.update(len(chunk["sample_id"]))


def _evaluate_qa(predictor, prepared, table, write_line, *, batch_size: int, progress: bool) -> dict[str, Any]:
    from ecgqa.evaluation.metrics import em_summary, exact_match, label_metrics, predict

    classes = list(predictor.classes)
    index = {c: i for i, c in enumerate(classes)}
    probs, labels, valid, qtypes, atypes = [], [], [], [], []
    for chunk in _chunks(table, progress, "evaluate"):
        items = [
            ([np.asarray(prepared.signals[r], dtype=np.float32) for r in rows], question, list(vc))
            for rows, question, vc in zip(chunk["ecg_rows"], chunk["question"], chunk["valid_classes"], strict=False)
        ]
        answers = predictor.answer_batch(items, batch_size=batch_size)
        p = np.zeros((len(answers), len(classes)))
        v = np.zeros(p.shape, dtype=bool)
        y = np.zeros(p.shape, dtype=bool)
        for i, answer in enumerate(answers):
            v[i, chunk["valid_classes"][i]] = True
            y[i, chunk["answer"][i]] = True
            for name, score in answer.scores.items():
                p[i, index[name]] = score
        # One definition of a prediction: ecgqa.evaluation.metrics, applied to the scores the predictor returned.
        pred = predict(p, v)
        correct = exact_match(p, y, v)
        for i, answer in enumerate(answers):
            write_line(
                {
                    "sample_id": int(chunk["sample_id"][i]),
                    "question_type": chunk["question_type"][i],
                    "attribute_type": chunk["attribute_type"][i],
                    "question": chunk["question"][i],
                    "ecg_id": [int(e) for e in chunk["ecg_id"][i]],
                    "predicted": [classes[c] for c in np.flatnonzero(pred[i])],
                    "true": [classes[c] for c in chunk["answer"][i]],
                    "valid": [classes[c] for c in chunk["valid_classes"][i]],
                    "scores": {name: float(s) for name, s in answer.scores.items()},
                    "correct": bool(correct[i]),
                }
            )
        probs.append(p)
        valid.append(v)
        labels.append(y)
        qtypes += chunk["question_type"]
        atypes += chunk["attribute_type"]
    probs_a, labels_a, valid_a = np.concatenate(probs), np.concatenate(labels), np.concatenate(valid)
    correct = exact_match(probs_a, labels_a, valid_a)
    report = em_summary(correct, qtypes, atypes)
    report["per_question_attribute_type"] = _nested_em(correct, qtypes, atypes)
    report["label_metrics"] = label_metrics(probs_a, labels_a, valid_a)
    return report


def _nested_em(correct: np.ndarray, qtypes: list[str], atypes: list[str]) -> dict[str, dict[str, dict]]:
    from ecgqa.evaluation.metrics import group_em, ordered

    q = np.asarray(qtypes, dtype=object)
    a = np.asarray(atypes, dtype=object)
    out = {}
    for qt in ordered(qtypes, QUESTION_TYPES):
        m = q == qt
        out[qt] = group_em(correct[m], a[m].tolist(), ATTRIBUTE_TYPES)
    return out


def _evaluate_upperbound(predictor, prepared, table, write_line, *, batch_size: int, progress: bool) -> dict:
    from ecgqa.evaluation.metrics import em_summary, upperbound_correct, upperbound_metrics

    classes = list(predictor.classes)
    n_classes = len(classes)
    probs, labels, masks, qtypes, atypes = [], [], [], [], []
    for chunk in _chunks(table, progress, "evaluate"):
        ecgs = np.stack([np.asarray(prepared.signals[rows[0]], dtype=np.float32) for rows in chunk["ecg_rows"]])
        groups = chunk["lead_group"]
        unknown = sorted({g for g in groups if g not in LEAD_GROUPS})
        if unknown:
            raise ValueError(f"{prepared.path}: unknown lead groups {unknown}; expected keys of constants.LEAD_GROUPS")
        leads = np.array([group_mask(g) for g in groups], dtype=bool)
        p = predictor.classify(ecgs, leads, batch_size=batch_size)
        y = np.zeros((len(groups), n_classes), dtype=bool)
        m = np.zeros((len(groups), n_classes), dtype=bool)
        for i, (cls, vals) in enumerate(zip(chunk["label_classes"], chunk["label_values"], strict=False)):
            m[i, cls] = True
            y[i, cls] = np.asarray(vals, dtype=bool)
        correct = upperbound_correct(p, y, m)
        chosen = decide(p)
        for i in range(len(groups)):
            labelled = np.flatnonzero(m[i])
            write_line(
                {
                    "sample_id": int(chunk["sample_id"][i]),
                    "question_type": chunk["question_type"][i],
                    "attribute_type": chunk["attribute_type"][i],
                    "ecg_id": [int(e) for e in chunk["ecg_id"][i]],
                    "lead_group": groups[i],
                    "predicted": [classes[c] for c in labelled if chosen[i, c]],
                    "true": [classes[c] for c in labelled if y[i, c]],
                    "valid": [classes[c] for c in labelled],
                    "scores": {classes[c]: float(p[i, c]) for c in labelled},
                    "correct": bool(correct[i]),
                }
            )
        probs.append(p)
        labels.append(y)
        masks.append(m)
        qtypes += chunk["question_type"]
        atypes += chunk["attribute_type"]
    probs_a, labels_a, masks_a = np.concatenate(probs), np.concatenate(labels), np.concatenate(masks)
    correct = upperbound_correct(probs_a, labels_a, masks_a)
    report = em_summary(correct, qtypes, atypes)
    report.update(upperbound_metrics(probs_a, labels_a, masks_a, classes))
    return report


def _charts(report: dict[str, Any], out: Path) -> list[str]:
    """Bar charts (PNG, Agg backend): EM per question type, EM per attribute type within each one,
    and per-class AUC for upperbound reports. Returns paths relative to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = out / "charts"
    folder.mkdir(exist_ok=True)
    written = []

    def bars(name: str, title: str, blocks: dict[str, dict], value: str = "em", ylabel: str = "exact match (%)"):
        keys = [k for k, b in blocks.items() if b.get(value) is not None]
        if not keys:
            return
        values = [100 * blocks[k][value] for k in keys]
        width = max(4.0, 0.55 * len(keys) + 2)
        fig, ax = plt.subplots(figsize=(width, 4.2))
        rects = ax.bar(range(len(keys)), values, width=0.6, color="#4C72B0")
        ax.set_xlim(-0.7, len(keys) - 0.3)
        ax.bar_label(
            rects, labels=[f"{v:.0f}\nn={blocks[k]['n']}" for k, v in zip(keys, values, strict=False)], fontsize=7
        )
        ax.set_xticks(range(len(keys)), keys, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(0, 115)
        ax.set_ylabel(ylabel)
        # Wrapped to the figure (~10 characters per inch at 10 pt): a long model name is never cut off.
        ax.set_title("\n".join(textwrap.wrap(title, int(width * 10))), fontsize=10)
        fig.tight_layout()
        path = folder / f"{name}.png"
        tmp = folder / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, path)
        written.append(str(path.relative_to(out)))

    label = f"{report['model']} on {report['split']}" if report.get("split") else str(report["model"])
    bars("question_types", f"{label}: EM per question type", report["per_question_type"])
    for qt, blocks in report.get("per_question_attribute_type", {}).items():
        bars(qt, f"{label}: {qt}, EM per attribute type", blocks)
    if report.get("per_class"):
        bars("per_class_auc", f"{label}: AUC per grounding class", report["per_class"], "auc", "AUC (%)")
    return written
