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
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ecgqa.data.constants import LEAD_GROUPS
from ecgqa.data.leads import group_mask
from ecgqa.evaluation.controls import (
    N_BOOTSTRAP,
    QUESTION_ONLY,
    SEED,
    SHUFFLED_ECG,
    MajorityAnswers,
    compare,
    shuffled_ecg_map,
)
from ecgqa.evaluation.metrics import THRESHOLD, decide
from ecgqa.evaluation.protocol import card, sample_card
from ecgqa.evaluation.report_folder import (
    CONTROLS_DIR,
    OUTPUTS,
    PREDICTIONS,
    REPORT_JSON,
    claim_report_dir,
    nested_em,
    prediction_line,
    write_report,
)
from ecgqa.files import AtomicLines

__all__ = ["OUTPUTS", "REPORT_JSON", "claim_report_dir", "evaluate"]

CHUNK = 256  # samples read from the store per step: bounds memory on the full test split


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
    controls: bool = True,
    blind: str | Path | None = None,
    control_seed: int = SEED,
    n_bootstrap: int = N_BOOTSTRAP,
    questions: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``data``/``split`` and write the report folder ``out``; returns report.json.

    For a QA checkpoint, ``controls`` (the default) also scores the shuffled-ECG control (the same checkpoint,
    each ECG of the split replaced by another: ``ecgqa.evaluation.controls.shuffled_ecg_map`` seeded by
    ``control_seed``) and a question-only reference: the ``blind`` checkpoint when given, else the majority
    answer per question text of the prepared data's ``train`` split. Their lines go to ``controls/*.jsonl``.
    ``questions``: say in the protocol card where the questions come from when not from the ECG-QA release.
    """
    from ecgqa.checkpoint import check_compatible
    from ecgqa.data.prepared import PreparedData
    from ecgqa.predictor import load

    checkpoint, data_path, out = Path(checkpoint), Path(data), Path(out)
    claim_report_dir(out)
    predictor = load(checkpoint, device=device)
    prepared = PreparedData(data_path)
    check_compatible(predictor, prepared)
    if split not in prepared.splits:
        raise ValueError(f"{data_path} has no split {split!r}; it holds {prepared.splits}")
    blind_predictor = None
    if blind is not None and predictor.task == "qa" and controls:
        blind_predictor = load(blind, device=device)
        check_compatible(blind_predictor, prepared)
    table = prepared.split(split)
    n_in_split = len(table)
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
    records: list[dict[str, Any]] = []
    with AtomicLines(out / PREDICTIONS) as write_line:
        extra = run_split(
            predictor, prepared, table, write_line, batch_size=batch_size, progress=progress, records=records
        )
    report = {**base, **extra}
    if predictor.task == "qa" and controls:
        report["controls"], note = _controls(
            predictor,
            blind_predictor,
            blind,
            prepared,
            table,
            split,
            out,
            records,
            batch_size=batch_size,
            progress=progress,
            seed=control_seed,
            n_bootstrap=n_bootstrap,
        )
        if note:
            report["controls_note"] = note
            print(f"note: {note}", file=sys.stderr)
    elif predictor.task == "qa":
        report["controls"] = None
        report["controls_note"] = "not run (--no-controls)"
    else:
        report["controls"] = None
        report["controls_note"] = (
            "an upperbound classifier answers attribute labels, not questions: question-only and shuffled-ECG "
            "controls apply to QA models"
        )
    ids = [r["sample_id"] for r in records]
    report["protocol"] = card(
        version=str(prepared.meta.get("version")),
        variant=prepared.meta.get("variant"),
        data_content_hash=prepared.meta.get("content_hash"),
        split=split,
        sample=sample_card("full" if len(ids) == n_in_split else "first-n", ids, n_in_split),
        per_question_type=report["per_question_type"],
        model=f"{predictor.model_name} ({checkpoint})",
        input=f"the ECG signal(s), {prepared.rate} Hz, {prepared.signal_length} samples x 12 leads",
        training_split_scored=bool(seen),
        questions=questions,
    )
    return write_report(out, report)


def _controls(
    predictor, blind_predictor, blind, prepared, table, split, out, records, *, batch_size, progress, seed, n_bootstrap
) -> tuple[dict[str, Any] | None, str | None]:
    """Score the shuffled-ECG control and the question-only reference and compare them with the model;
    returns (the controls block, a note on any control that could not be made)."""
    folder = out / CONTROLS_DIR
    folder.mkdir(exist_ok=True)
    lines: dict[str, list[dict[str, Any]]] = {}
    how: dict[str, str] = {}
    notes: list[str] = []

    def score(name: str, answerer: Any, desc: str, remap: dict[int, int] | None = None) -> None:
        lines[name] = []
        with AtomicLines(folder / f"{name}.jsonl") as write_line:
            _evaluate_qa(
                answerer,
                prepared,
                table,
                write_line,
                batch_size=batch_size,
                progress=progress,
                records=lines[name],
                remap=remap,
                desc=desc,
            )

    rows = sorted({int(r) for rs in table["ecg_rows"] for r in rs})
    if len(rows) >= 2:
        score(SHUFFLED_ECG, predictor, "shuffled-ECG control", remap=shuffled_ecg_map(rows, seed))
        how[SHUFFLED_ECG] = f"same checkpoint, each ECG of the split replaced by another ECG of it (seed {seed})"
    else:
        notes.append(f"no shuffled-ECG control: the questions scored use {len(rows)} ECG")
    if blind_predictor is not None:
        score(QUESTION_ONLY, blind_predictor, "question-only (blind)")
        how[QUESTION_ONLY] = f"blind checkpoint {blind} ({blind_predictor.model_name}): the question alone"
    elif "train" in prepared.splits:
        lines[QUESTION_ONLY] = []
        with AtomicLines(folder / f"{QUESTION_ONLY}.jsonl") as write_line:
            how[QUESTION_ONLY] = _majority(prepared, table, split, write_line, lines[QUESTION_ONLY])
    else:
        notes.append(
            f"no question-only reference: {prepared.path} has no train split to learn the majority answers from "
            "(give a blind checkpoint with --blind CKPT)"
        )
    note = "; ".join(notes) or None
    if not lines:
        return None, note
    return compare(records, lines, how=how, n_bootstrap=n_bootstrap, seed=seed), note


def _majority(prepared, table, split, write_line, records) -> str:
    """The question-only reference from the prepared data's train split (the caller checked it is there): the
    majority answer per question text."""
    train = prepared.split("train").select_columns(["question", "template_id", "question_type", "answer"]).to_dict()
    baseline = MajorityAnswers(
        {"question": q, "template_id": t, "question_type": qt, "answer": a}
        for q, t, qt, a in zip(
            train["question"], train["template_id"], train["question_type"], train["answer"], strict=True
        )
    )
    classes = list(prepared.classes)
    cols = table.select_columns(
        ["sample_id", "template_id", "question", "question_type", "attribute_type", "ecg_id", "answer", "valid_classes"]
    ).to_dict()
    for i, sid in enumerate(cols["sample_id"]):
        valid = [int(c) for c in cols["valid_classes"][i]]
        chosen = set(baseline.answer(cols["question"][i], cols["template_id"][i], cols["question_type"][i]))
        pred = [c for c in valid if c in chosen]
        true = [c for c in valid if c in set(cols["answer"][i])]
        line = prediction_line(
            sid,
            cols["question_type"][i],
            cols["attribute_type"][i],
            [classes[c] for c in pred],
            [classes[c] for c in true],
            [classes[c] for c in valid],
            set(pred) == set(true),
            question=cols["question"][i],
            ecg_id=cols["ecg_id"][i],
        )
        write_line(line)
        records.append(_record(line))
    f = baseline.fallbacks
    note = "" if split != "train" else " (the split scored IS the train split: a training-fold reference)"
    return (
        f"majority answer per question text of the train split ({baseline.n_train} questions); "
        f"{f['question']} questions by their text, {f['template']} by template, {f['type']} by question type{note}"
    )


def _record(line: dict[str, Any]) -> dict[str, Any]:
    """What the controls need of a prediction line."""
    return {k: line[k] for k in ("sample_id", "question_type", "question", "true", "ecg_id", "correct")}


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


def _evaluate_qa(
    predictor,
    prepared,
    table,
    write_line,
    *,
    batch_size: int,
    progress: bool,
    records: list[dict[str, Any]],
    remap: dict[int, int] | None = None,
    desc: str = "evaluate",
) -> dict[str, Any]:
    """Answer every question of ``table``; ``remap`` (signal row → row shown instead) makes the shuffled-ECG
    control. Appends each question's :func:`_record` to ``records``."""
    from ecgqa.evaluation.metrics import em_summary, exact_match, label_metrics, predict

    classes = list(predictor.classes)
    index = {c: i for i, c in enumerate(classes)}
    ecg_id_of = prepared.ecg_ids
    probs, labels, valid, corrects, qtypes, atypes = [], [], [], [], [], []
    for chunk in _chunks(table, progress, desc):
        shown = [[remap[int(r)] for r in rows] if remap else list(rows) for rows in chunk["ecg_rows"]]
        items = [
            ([np.asarray(prepared.signals[r], dtype=np.float32) for r in rows], question, list(vc))
            for rows, question, vc in zip(shown, chunk["question"], chunk["valid_classes"], strict=False)
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
            extra = {"shown_ecg_id": [int(ecg_id_of[r]) for r in shown[i]]} if remap else {}
            line = prediction_line(
                chunk["sample_id"][i],
                chunk["question_type"][i],
                chunk["attribute_type"][i],
                [classes[c] for c in np.flatnonzero(pred[i])],
                [classes[c] for c in chunk["answer"][i]],
                [classes[c] for c in chunk["valid_classes"][i]],
                bool(correct[i]),
                question=chunk["question"][i],
                ecg_id=chunk["ecg_id"][i],
                scores=answer.scores,
                **extra,
            )
            write_line(line)
            records.append(_record(line))
        probs.append(p)
        valid.append(v)
        labels.append(y)
        corrects.append(correct)
        qtypes += chunk["question_type"]
        atypes += chunk["attribute_type"]
    probs_a, labels_a, valid_a = np.concatenate(probs), np.concatenate(labels), np.concatenate(valid)
    correct = np.concatenate(corrects)
    report = em_summary(correct, qtypes, atypes)
    report["per_question_attribute_type"] = nested_em(correct, qtypes, atypes)
    report["label_metrics"] = label_metrics(probs_a, labels_a, valid_a)
    return report


def _evaluate_upperbound(
    predictor, prepared, table, write_line, *, batch_size: int, progress: bool, records: list[dict[str, Any]]
) -> dict:
    from ecgqa.evaluation.metrics import em_summary, upperbound_correct, upperbound_metrics

    classes = list(predictor.classes)
    n_classes = len(classes)
    probs, labels, masks, corrects, qtypes, atypes = [], [], [], [], [], []
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
                prediction_line(
                    chunk["sample_id"][i],
                    chunk["question_type"][i],
                    chunk["attribute_type"][i],
                    [classes[c] for c in labelled if chosen[i, c]],
                    [classes[c] for c in labelled if y[i, c]],
                    [classes[c] for c in labelled],
                    bool(correct[i]),
                    ecg_id=chunk["ecg_id"][i],
                    scores={classes[c]: p[i, c] for c in labelled},
                    lead_group=groups[i],
                )
            )
            records.append({"sample_id": int(chunk["sample_id"][i])})
        probs.append(p)
        labels.append(y)
        masks.append(m)
        corrects.append(correct)
        qtypes += chunk["question_type"]
        atypes += chunk["attribute_type"]
    probs_a, labels_a, masks_a = np.concatenate(probs), np.concatenate(labels), np.concatenate(masks)
    correct = np.concatenate(corrects)
    report = em_summary(correct, qtypes, atypes)
    report.update(upperbound_metrics(probs_a, labels_a, masks_a, classes))
    return report
