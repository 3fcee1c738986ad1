"""The report folder: the third contract, written by ``ecgqa evaluate``, ``ecgqa score`` and ``ecgqa llm-eval``,
read by ``ecgqa report``.

A report folder holds

- ``predictions.jsonl`` (:data:`PREDICTIONS`): one :class:`PredictionLine` per question (:func:`prediction_line`),
  so every number of the report can be recomputed;
- ``report.json`` (:data:`REPORT_JSON`): a :class:`Report` (the typed schema below: every key with its meaning);
- ``report.md`` (:data:`REPORT_MD`): the same for people (:func:`render_markdown` plus the writer's own section);
- ``charts/*.png``: EM per question type (model beside its controls), per attribute type within each type;
- ``controls/*.jsonl``: the prediction lines of each control (``ecgqa.evaluation.controls``), where the writer
  ran them itself.

:func:`write_report` writes all of it, each file atomically (``ecgqa.files``), so a crash leaves the previous
report or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from ecgqa.data.constants import ATTRIBUTE_TYPES, QUESTION_TYPES
from ecgqa.evaluation.metrics import group_em, ordered
from ecgqa.files import AtomicLines, atomic_write, atomic_write_json, claim_output_dir

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PREDICTIONS = "predictions.jsonl"
CHARTS = "charts"
CONTROLS_DIR = "controls"
#: everything ``ecgqa evaluate`` writes into --out (a folder holding only these is ours to replace)
OUTPUTS = (PREDICTIONS, REPORT_JSON, REPORT_MD, CHARTS, CONTROLS_DIR)
#: The scorer's version, in every protocol card: bumped whenever a rule that changes a number changes
#: (the EM definition, the reply rules of ``ecgqa.evaluation.replies``, the control statistics).
SCORER_VERSION = "ecgqa-em-2"


class PredictionLine(TypedDict, total=False):
    """One line of ``predictions.jsonl``: one question, as the model answered it."""

    sample_id: int  # the release's sample_id (the same in template/ and paraphrased/)
    question_type: str  # one of the seven ECG-QA question types
    attribute_type: str  # scp_code, noise, stage_of_infarction, extra_systole, heart_axis, numeric_feature
    question: str  # the question text as asked
    ecg_id: list[int]  # the question's own ECG id(s) (PTB-XL ecg_id / MIMIC study_id)
    shown_ecg_id: list[int]  # shuffled-ECG control only: the ECG(s) the model was shown instead
    predicted: list[str]  # the predicted answer set over the valid classes ([] = none)
    true: list[str]  # the true answer set over the valid classes ([] = none)
    valid: list[str]  # the question's valid classes (what exact match compares over)
    scores: dict[str, float]  # per valid class, the model's probability ({} for text answers)
    correct: bool | None  # exact match; None: not scored (a failed request)
    status: str  # "ok", "no-match" (a reply naming no option: wrong), "failed", "missing"
    reply: str | None  # the free-text reply, for LLMs and scored replies


class SampleCard(TypedDict, total=False):
    """Which questions of the split were scored."""

    kind: str  # "full" (every question of the split), "paper" (the ECG-QA paper's 8,154 LLM ids), "draw"
    # (seeded stratified draw), "ids-file", "first-n" (--limit: the first N of the split)
    n: int  # questions scored
    n_in_split: int  # questions in the split of the prepared data
    sha256: str  # sha256 of the scored sample ids, one per line (the paper's list hashes to its published value)
    seed: int  # kind "draw": the sampling seed
    fraction: float  # kind "draw": the fraction per qt3 stratum


class ProtocolCard(TypedDict, total=False):
    """What was measured, stated on the report's face (``ecgqa.evaluation.protocol.card``)."""

    dataset: str  # "ECG-QA"
    version: str  # the ECG-QA version: "ptbxl" or "mimic-iv-ecg"
    data_content_hash: str  # the prepared folder's content hash (release files + records + options)
    variant: str  # "template" or "paraphrased" questions
    split: str  # train / valid / test
    sample: SampleCard  # which questions
    n_per_question_type: dict[str, int]  # questions scored per question type
    metrics: dict[str, str]  # the definition of every metric reported
    scorer_version: str  # SCORER_VERSION of the code that scored
    reply_rule: str | None  # free-text replies: the rule of ecgqa.evaluation.replies; None for class scores
    prompt_style: str | None  # LLMs: the prompt style (paper, paper-as-published, ecgqa-v2)
    model: str  # what answered
    input: str  # what the model was given about the ECG(s)
    control: str | None  # this run IS a control ("shuffled-ecg", "question-only"), else None
    training_split_scored: bool  # True when the split scored is the checkpoint's own training split
    comparable_with_published: list[dict[str, Any]]  # per row of ecgqa/paper_results.json: comparable, why


class ControlArm(TypedDict, total=False):
    """The model or one control, on the paired samples."""

    em: float | None  # exact match
    em_macro: float | None  # mean EM over the question types present
    balanced_accuracy_macro: float | None  # per verify text, mean per-answer accuracy; macro over texts
    per_question_type: dict[str, dict[str, Any]]  # {type: {n, em, balanced_accuracy_macro (verify types)}}


class Controls(TypedDict, total=False):
    """``ecgqa.evaluation.controls.compare``: the model beside its controls, with paired bootstrap CIs."""

    paired_on: str  # "sample_id"
    n_paired: int  # samples answered by the model and every control
    n_ecg_clusters: int  # resampling units (an ECG, or a comparison question's ECG pair)
    n_verify_texts: int  # verify question texts with at least two answers (balanced accuracy's texts)
    bootstrap: dict[str, Any]  # n, seed, level, what is resampled
    metrics: dict[str, str]  # definitions
    primary_metric: str  # what the verdict rests on
    arms: dict[str, ControlArm]  # "model" and each control
    how: dict[str, str]  # how each control was made
    differences: dict[str, dict[str, Any]]  # control → metric → {diff: model − control, ci: [lo, hi]}
    verdict: dict[str, Any]  # per_control: above / below / indistinguishable; above_all; sentence


class Report(TypedDict, total=False):
    """``report.json``. The EM block has the same keys whoever wrote it; the rest depends on the writer."""

    kind: str  # "qa" / "upperbound" (evaluate), "answers" (score), "llm" (llm-eval)
    model: str  # the column title ecgqa report uses
    checkpoint: str  # evaluate: the checkpoint folder
    answers: str  # score: the answers file
    llm: str  # llm-eval: the model name sent to the endpoint
    data: str  # the prepared folder
    split: str  # the split scored
    n: int  # questions scored
    em: float | None  # exact match over all scored questions
    em_macro_single: float | None  # mean EM of the three single-ECG types (the paper's headline)
    em_macro_all: float | None  # mean EM of every question type present
    em_macro_question_type: float | None  # old name of em_macro_all, kept for old readers
    per_question_type: dict[str, dict[str, Any]]  # {type: {n, em}}
    per_attribute_type: dict[str, dict[str, Any]]  # {attribute type: {n, em}}
    per_question_attribute_type: dict[str, dict[str, dict[str, Any]]]  # {type: {attribute type: {n, em}}}
    label_metrics: dict[str, Any]  # evaluate (qa): label-level precision / recall / AUC
    per_class: dict[str, dict[str, Any]]  # evaluate (upperbound): per grounding class n, accuracy, AUC
    sampling: dict[str, Any]  # score / llm-eval: which questions (sample, sha256, n_listed, ...)
    controls: Controls | None  # the model beside its controls (None: not run, see controls_note)
    controls_note: str  # a control that could not be made (or why none were), in words
    protocol: ProtocolCard  # what was measured
    charts: list[str]  # chart files, relative to the folder
    note: str  # a warning the writer wants on the report's face (e.g. a training-split score)


# ------------------------------------------------------------------------------------ claiming --out


def _is_our_report(marker: Path) -> bool:
    try:
        return json.loads(marker.read_text()).get("kind") in ("qa", "upperbound")
    except (OSError, ValueError, AttributeError):
        return False


def claim_report_dir(out: Path) -> None:
    """Refuse an ``--out`` that ``ecgqa evaluate`` did not write (see ``ecgqa.files.claim_output_dir``)."""
    out = Path(out)
    if (
        out.is_dir()
        and not out.is_symlink()
        and all(p.name in OUTPUTS or p.name.startswith(".") for p in out.iterdir())
    ):
        return  # only our own outputs (perhaps of an interrupted run)
    claim_output_dir(out, marker=REPORT_JSON, what="evaluation report", is_ours=_is_our_report)


# ------------------------------------------------------------------------------------ lines


def prediction_line(
    sample_id: int,
    question_type: str,
    attribute_type: str,
    predicted: Sequence[str],
    true: Sequence[str],
    valid: Sequence[str],
    correct: bool | None,
    *,
    question: str | None = None,
    ecg_id: Sequence[int] | None = None,
    scores: Mapping[str, float] | None = None,
    status: str | None = None,
    reply: str | None = None,
    **extra: Any,
) -> PredictionLine:
    """One :class:`PredictionLine` (keys in one order whoever writes it; optional keys only when given)."""
    line: dict[str, Any] = {
        "sample_id": int(sample_id),
        "question_type": question_type,
        "attribute_type": attribute_type,
    }
    if question is not None:
        line["question"] = question
    if ecg_id is not None:
        line["ecg_id"] = [int(e) for e in ecg_id]
    line.update(
        predicted=list(predicted),
        true=list(true),
        valid=list(valid),
        scores={k: float(v) for k, v in (scores or {}).items()},
        correct=None if correct is None else bool(correct),
    )
    if status is not None:
        line["status"] = status
    if status is not None or reply is not None:
        line["reply"] = reply
    line.update(extra)
    return line  # type: ignore[return-value]


def write_lines(path: Path, lines: Iterable[Mapping[str, Any]]) -> int:
    """Write prediction lines as JSON Lines, atomically; returns how many."""
    n = 0
    with AtomicLines(path) as write:
        for line in lines:
            write.write_line(json.dumps(line, ensure_ascii=False))
            n += 1
    return n


def read_lines(path: Path) -> list[dict[str, Any]]:
    """A predictions file's lines (blank lines skipped); a bad line is an error naming the file and line."""
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            if raw.strip():
                try:
                    out.append(json.loads(raw))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    return out


def nested_em(correct: np.ndarray, qtypes: list[str], atypes: list[str]) -> dict[str, dict[str, dict]]:
    """{question type: {attribute type: {n, em}}}."""
    q = np.asarray(qtypes, dtype=object)
    a = np.asarray(atypes, dtype=object)
    correct = np.asarray(correct, dtype=bool)
    return {
        qt: group_em(correct[q == qt], a[q == qt].tolist(), ATTRIBUTE_TYPES) for qt in ordered(qtypes, QUESTION_TYPES)
    }


# ------------------------------------------------------------------------------------ writing


def write_report(
    out: str | Path,
    report: dict[str, Any],
    lines: Iterable[Mapping[str, Any]] | None = None,
    extra_md: str = "",
    *,
    charts: bool = True,
) -> dict[str, Any]:
    """Write the report folder ``out``: ``predictions.jsonl`` (when ``lines`` is given; else it is already
    there), ``charts/``, ``report.json`` and ``report.md`` (:func:`render_markdown` + ``extra_md``).

    Returns ``report`` with ``charts`` filled in. The caller has claimed ``out``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if lines is not None:
        write_lines(out / PREDICTIONS, lines)
    if charts:
        report["charts"] = make_charts(report, out)
    atomic_write_json(out / REPORT_JSON, report, indent=2)
    md = render_markdown(report)
    if extra_md:
        md = md.rstrip("\n") + "\n\n" + extra_md
    atomic_write(out / REPORT_MD, md if md.endswith("\n") else md + "\n")
    return report


def make_charts(report: Mapping[str, Any], out: Path) -> list[str]:
    """Bar charts (PNG, Agg backend): EM per question type (grouped with the controls' when there are
    controls), EM per attribute type within each type, and per-class AUC for upperbound reports.
    Returns paths relative to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = out / CHARTS
    folder.mkdir(exist_ok=True)
    written: list[str] = []

    def save(fig: Any, name: str) -> None:
        path = folder / f"{name}.png"
        tmp = folder / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, path)
        written.append(str(path.relative_to(out)))

    def bars(name: str, title: str, blocks: Mapping[str, Mapping], value: str = "em", ylabel: str = "exact match (%)"):
        keys = [k for k, b in blocks.items() if b.get(value) is not None]
        if not keys:
            return
        values = [100 * blocks[k][value] for k in keys]
        fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(keys) + 2), 4.2))
        rects = ax.bar(range(len(keys)), values, width=0.6, color="#4C72B0")
        ax.set_xlim(-0.7, len(keys) - 0.3)
        ax.bar_label(
            rects, labels=[f"{v:.0f}\nn={blocks[k]['n']}" for k, v in zip(keys, values, strict=True)], fontsize=7
        )
        ax.set_xticks(range(len(keys)), keys, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(0, 115)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        save(fig, name)

    label = f"{report.get('model', '?')} on {report.get('split', '?')}"
    bars("question_types", f"{label}: EM per question type", report.get("per_question_type") or {})
    controls = report.get("controls")
    if controls:
        arms = controls["arms"]
        types = list(arms["model"]["per_question_type"])
        for metric, name, ylabel in (
            ("em", "controls_em", "exact match (%)"),
            ("balanced_accuracy_macro", "controls_balanced_accuracy", "balanced accuracy, macro over texts (%)"),
        ):
            keys = [t for t in types if arms["model"]["per_question_type"][t].get(metric) is not None]
            if not keys:
                continue
            fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(keys) + 2), 4.4))
            width = 0.8 / len(arms)
            for j, (arm, block) in enumerate(arms.items()):
                vals = [100 * (block["per_question_type"][t].get(metric) or 0) for t in keys]
                rects = ax.bar(np.arange(len(keys)) + j * width, vals, width=width, label=arm)
                ax.bar_label(rects, labels=[f"{v:.0f}" for v in vals], fontsize=6)
            ax.set_xticks(np.arange(len(keys)) + width * (len(arms) - 1) / 2, keys, rotation=30, ha="right", fontsize=8)
            ax.set_ylim(0, 115)
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7, loc="upper right")
            ax.set_title(f"{label}: model vs controls per question type", fontsize=10)
            fig.tight_layout()
            save(fig, name)
    for qt, blocks in (report.get("per_question_attribute_type") or {}).items():
        bars(qt, f"{label}: {qt}, EM per attribute type", blocks)
    if report.get("per_class"):
        bars("per_class_auc", f"{label}: AUC per grounding class", report["per_class"], "auc", "AUC (%)")
    return written


# ------------------------------------------------------------------------------------ report.md


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{100 * float(value):.1f}"


def _diff(d: Mapping[str, Any] | None) -> str:
    if not d or d.get("diff") is None:
        return "–"
    ci = d.get("ci")
    band = f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else ""
    return f"{100 * d['diff']:+.1f}{band}"


def controls_markdown(controls: Mapping[str, Any]) -> str:
    """The model beside its controls: one table per metric family, then the verdict."""
    arms = controls["arms"]
    names = list(arms)
    ctrl = [n for n in names if n != "model"]
    level = round(100 * controls["bootstrap"]["level"])
    lines = [
        "## Controls: does the model use the ECG?",
        "",
        f"**{controls['verdict']['sentence']}**",
        "",
        f"Paired on {controls['n_paired']} questions over {controls['n_ecg_clusters']} ECGs (or ECG pairs); "
        f"difference model − control in points with its {level} % paired bootstrap CI "
        f"({controls['bootstrap']['n']} resamples of ECGs, seed {controls['bootstrap']['seed']}).",
        "",
    ]
    for name in ctrl:
        lines.append(f"- {name}: {controls['how'].get(name, '')}")
    lines += ["", "| metric | " + " | ".join(names) + " | " + " | ".join(f"model − {c}" for c in ctrl) + " |"]
    lines.append("|---|" + "---:|" * (len(names) + len(ctrl)))

    def row(label: str, values: list[Any], diffs: list[Any]) -> None:
        lines.append(
            f"| {label} | " + " | ".join(_pct(v) for v in values) + " | " + " | ".join(map(_diff, diffs)) + " |"
        )

    for metric, title in (
        ("em", "EM"),
        ("em_macro", "EM, macro over types"),
        ("balanced_accuracy_macro", "balanced accuracy (verify texts, macro)"),
    ):
        row(
            f"**{title}**", [arms[n].get(metric) for n in names], [controls["differences"][c].get(metric) for c in ctrl]
        )
    for qt in arms["model"]["per_question_type"]:
        n = arms["model"]["per_question_type"][qt]["n"]
        row(
            f"{qt} EM (n={n})",
            [arms[a]["per_question_type"][qt].get("em") for a in names],
            [controls["differences"][c]["per_question_type"][qt].get("em") for c in ctrl],
        )
        if arms["model"]["per_question_type"][qt].get("balanced_accuracy_macro") is not None:
            row(
                f"{qt} balanced accuracy",
                [arms[a]["per_question_type"][qt].get("balanced_accuracy_macro") for a in names],
                [controls["differences"][c]["per_question_type"][qt].get("balanced_accuracy_macro") for c in ctrl],
            )
    lines += [
        "",
        f"Verdict metric: {controls['primary_metric']} ({controls['metrics'].get(controls['primary_metric'])}).",
        "",
    ]
    return "\n".join(lines) + "\n"


def protocol_markdown(card: Mapping[str, Any]) -> str:
    """The protocol card as a list."""
    s = card.get("sample") or {}
    sample = {
        "full": f"all {s.get('n')} questions of the split",
        "paper": f"the ECG-QA paper's LLM sample ({s.get('n')} of its 8,154 ids present)",
        "draw": f"seeded stratified draw (fraction {s.get('fraction')}, seed {s.get('seed')}): {s.get('n')} questions",
        "first-n": f"the first {s.get('n')} questions of the split (--limit): not a benchmark sample",
        "ids-file": f"an ids file: {s.get('n')} questions",
    }.get(s.get("kind"), f"{s.get('kind')}: {s.get('n')} questions")
    lines = [
        "## Protocol card",
        "",
        f"- dataset: {card.get('dataset')} {card.get('version')}, {card.get('variant')} questions, split "
        f"{card.get('split')} (prepared data {str(card.get('data_content_hash'))[:12]}…)",
        f"- sample: {sample}; ids sha256 `{s.get('sha256')}`",
        "- n per question type: " + ", ".join(f"{k} {v}" for k, v in (card.get("n_per_question_type") or {}).items()),
        f"- model: {card.get('model')}; input: {card.get('input')}"
        + (f"; prompt style: {card['prompt_style']}" if card.get("prompt_style") else ""),
        f"- scorer: {card.get('scorer_version')}"
        + (f", reply rule `{card['reply_rule']}`" if card.get("reply_rule") else ", class scores > 0.5"),
    ]
    if card.get("control"):
        lines.append(f"- this run is a control: {card['control']}")
    if card.get("training_split_scored"):
        lines.append("- **the split scored is the checkpoint's own training split: a training score**")
    for k, v in (card.get("metrics") or {}).items():
        lines.append(f"- metric {k}: {v}")
    comp = card.get("comparable_with_published") or []
    if comp:
        lines.append("- comparable with the published rows of ecgqa/paper_results.json:")
        for c in comp:
            lines.append(f"  - {c['model']}: {'**yes**' if c['comparable'] else 'no'} — {c['reason']}")
    return "\n".join(lines) + "\n"


def render_markdown(report: Mapping[str, Any]) -> str:
    """report.md of one report: where it came from, its controls, the EM table, its protocol card, extras."""
    from ecgqa.evaluation.report import compare_table, paper_table

    what = next((k for k in ("checkpoint", "llm", "answers") if report.get(k)), "llm")
    source = report.get(what) or "?"
    lines = [
        f"# ECG-QA evaluation: {report.get('model', '?')} on {report.get('split', '?')}",
        "",
        f"- kind: {report.get('kind', '?')}",
        f"- {what}: `{source}`",
        f"- data: `{report.get('data', '?')}`",
        f"- samples: {report.get('n', '?')}",
    ]
    if report.get("note"):
        lines.append(f"- **note: {report['note']}**")
    lines.append("")
    if report.get("controls"):
        lines.append(controls_markdown(report["controls"]))
    if report.get("controls_note"):
        lines += [f"Controls: {report['controls_note']}.", ""]
    lines += [
        "Exact match (EM): a sample counts only when its predicted set equals its true set over its valid classes.",
        "",
        compare_table([report], [report.get("model", "EM")]),
        "## As the paper tabulates (EM %)",
        "",
        paper_table([report], [report.get("model", "EM")]),
    ]
    if report.get("protocol"):
        lines.append(protocol_markdown(report["protocol"]))
    labels = report.get("label_metrics")
    if labels:
        lines += [
            "## Label-level (every valid class of every sample is one decision)",
            "",
            "| precision | recall | AUC (micro) | AUC (macro over classes) |",
            "|---:|---:|---:|---:|",
            "| " + " | ".join(_pct(labels.get(k)) for k in ("precision", "recall", "auc_micro", "auc_macro")) + " |",
            "",
        ]
    per_class = report.get("per_class")
    if per_class:
        lines += [
            "## Per grounding class (on the samples that label it)",
            "",
            (
                f"AUC macro {_pct(report.get('auc_macro'))}, accuracy macro {_pct(report.get('accuracy_macro'))}, "
                f"accuracy micro {_pct(report.get('accuracy_micro'))}."
            ),
            "",
            "| class | n | positives | accuracy | AUC |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, c in per_class.items():
            lines.append(f"| {name} | {c['n']} | {c['n_positive']} | {_pct(c['accuracy'])} | {_pct(c['auc'])} |")
        lines.append("")
    charts = report.get("charts")
    if charts:
        lines += ["## Charts", ""] + [f"![{Path(c).stem}]({c})" for c in charts] + [""]
    return "\n".join(lines)
