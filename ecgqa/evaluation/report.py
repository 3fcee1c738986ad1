"""``ecgqa report A B ...``: exact-match reports side by side, as one Markdown table.

Any ``report.json`` of the shared shape works (``ecgqa evaluate`` for QA and upperbound models,
``llm_eval`` for grounded LLMs), given as the file or the folder that holds it. Rows are the overall
EM, the counts of replies that matched no option and of questions failed or missing (LLM runs and
``ecgqa score``), the macro average over question types, then each question type and attribute type present in
any of them; a cell shows EM in percent and the number of samples it was measured on, because
reports over different splits or subsamples are only comparable when those counts agree.

:func:`paper_table` prints the same reports as the ECG-QA paper lays out its tables: one row per
model, EM per question type in the paper's columns (S-Verify … CI-Query, ``ecgqa.evaluation.metrics.PAPER_COLUMNS``),
then ``em_macro_single`` (the macro over the three single-ECG types: the paper's headline) and
``em_macro_all`` (over every type present). ``--paper`` adds the published numbers on the benchmark's
own split and metric from ``ecgqa/paper_results.json`` as reference rows, each with the test questions
it was measured on (the paper's 10 % LLM sample or the full test) and its source, then, apart, the
figures measured on other splits or metrics ("Other splits — not comparable").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ecgqa.data.constants import ATTRIBUTE_TYPES, QUESTION_TYPES
from ecgqa.evaluation.metrics import PAPER_COLUMNS, ordered, paper_row
from ecgqa.evaluation.report_folder import REPORT_JSON, _pct

REQUIRED = ("em", "per_question_type")


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a report.json (or the folder holding one) and check it has the shared shape."""
    path = Path(path)
    file = path / REPORT_JSON if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: give a report.json or a folder written by `ecgqa evaluate`")
    try:
        report = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from e
    missing = [k for k in REQUIRED if not isinstance(report, dict) or k not in report]
    if missing:
        raise ValueError(f"{file}: not an ECG-QA report (lacks {missing}); expected the output of `ecgqa evaluate`")
    _check_shape(report, file)
    report.setdefault("_path", str(file))
    return report


def _check_shape(report: dict[str, Any], file: Path) -> None:
    """EM values are numbers in [0, 1] (or null), groups map names to {"em", "n"}: else one error naming the field."""

    def em_ok(value: Any) -> bool:
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1)

    if not em_ok(report["em"]):
        raise ValueError(f"{file}: em must be a number between 0 and 1, not {report['em']!r}")
    for key in ("per_question_type", "per_attribute_type"):
        groups = report.get(key, {})
        if not isinstance(groups, dict):  # a data error: the CLI shows ValueErrors as one line
            shape = f'{key} must map names to {{"em": ..., "n": ...}}, not {type(groups).__name__}'
            raise ValueError(f"{file}: {shape}")  # noqa: TRY004
        for name, block in groups.items():
            if not (isinstance(block, dict) and em_ok(block.get("em"))):
                raise ValueError(f'{file}: {key}[{name!r}] must be {{"em": number 0-1, "n": count}}, not {block!r}')


def report_name(report: dict[str, Any]) -> str:
    """A column title: the report folder's name (or the file's stem when it is not report.json)."""
    file = Path(report.get("_path", "report"))
    return file.parent.name if file.name == REPORT_JSON and file.parent.name else file.stem


def _cell(block: dict[str, Any] | None) -> str:
    if not block:
        return "–"
    return f"{_pct(block.get('em'))} (n={block.get('n', '?')})"


#: Report keys of the counts ``compare_table`` shows per run: replies that named no option (``llm-eval``,
#: ``score``), and questions with no scored answer (``llm-eval``: failed requests; ``score``: missing answers).
NO_MATCH = ("n_no_match",)
NOT_SCORED = ("n_failed", "n_missing")


def _count(report: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    values = [report[k] for k in keys if isinstance(report.get(k), int) and not isinstance(report.get(k), bool)]
    return sum(values) if values else None


def _count_cell(report: dict[str, Any], keys: tuple[str, ...]) -> str:
    count = _count(report, keys)
    if count is None:
        return "–"
    of = report.get("n_questions")
    return f"{count} of {of}" if isinstance(of, int) else str(count)


def compare_table(reports: Sequence[dict[str, Any]], names: Sequence[str] | None = None) -> str:
    """The side-by-side Markdown table of several reports (EM in %, n per cell)."""
    names = list(names) if names else [report_name(r) for r in reports]
    if len(names) != len(reports):
        raise ValueError(f"{len(names)} names for {len(reports)} reports")
    head = "| | " + " | ".join(names) + " |"
    rule = "|---|" + "---:|" * len(reports)
    rows = [head, rule]

    def row(label: str, cells: list[str]) -> None:
        rows.append(f"| {label} | " + " | ".join(cells) + " |")

    row("model", [str(r.get("model", "?")) for r in reports])
    row("kind", [str(r.get("kind", "?")) for r in reports])
    row("split", [str(r.get("split", "?")) for r in reports])
    row("**EM**", [f"**{_pct(r.get('em'))}** (n={r.get('n', '?')})" for r in reports])
    if any(_count(r, NO_MATCH) is not None or _count(r, NOT_SCORED) is not None for r in reports):
        # An EM alone hides why answers were wrong or absent: a model answering "no" to everything and one
        # whose replies match no option can score alike. Counts per run; "–" where the kind has none.
        row("replies matching no option (scored wrong)", [_count_cell(r, NO_MATCH) for r in reports])
        row("failed or missing (not scored)", [_count_cell(r, NOT_SCORED) for r in reports])
    if any(r.get("controls") for r in reports):
        row("**above its controls?**", [_verdict_cell(r) for r in reports])
    macros = [paper_row(r) for r in reports]
    row("**EM, macro over single-ECG types** (paper headline)", [f"**{_pct(m['em_macro_single'])}**" for m in macros])
    row("EM, macro over all question types", [_pct(m["em_macro_all"]) for m in macros])
    for key, known, title in (
        ("per_question_type", QUESTION_TYPES, "question type"),
        ("per_attribute_type", ATTRIBUTE_TYPES, "attribute type"),
    ):
        blocks = [r.get(key) or {} for r in reports]
        groups = ordered({k for b in blocks for k in b}, known)
        if groups:
            row(f"*by {title}*", [""] * len(reports))
        for g in groups:
            row(g, [_cell(b.get(g)) for b in blocks])
    return "\n".join(rows) + "\n"


def _verdict_cell(report: dict[str, Any]) -> str:
    c = report.get("controls")
    if not c:
        return "no controls"
    v = c["verdict"]
    metric = {"balanced_accuracy_macro": "bal. acc.", "em": "EM"}.get(v["metric"], v["metric"])
    parts = []
    for name, d in c["differences"].items():
        x = d[v["metric"]]
        ci = f" [{100 * x['ci'][0]:+.1f}, {100 * x['ci'][1]:+.1f}]" if x.get("ci") else ""
        diff = "–" if x.get("diff") is None else f"{100 * x['diff']:+.1f}"
        parts.append(f"{name} {diff}{ci}")
    return f"{'**yes**' if v['above_all'] else 'no'} ({metric} Δ: {'; '.join(parts)})"


def controls_section(reports: Sequence[dict[str, Any]], names: Sequence[str] | None = None) -> str:
    """Each report's model beside its controls (``ecgqa.evaluation.report_folder.controls_markdown``)."""
    from ecgqa.evaluation.report_folder import controls_markdown

    names = list(names) if names else [report_name(r) for r in reports]
    parts = []
    for name, r in zip(names, reports, strict=True):
        if r.get("controls"):
            parts.append(controls_markdown(r["controls"]).replace("## Controls:", f"## {name} — controls:", 1))
        else:
            note = r.get("controls_note") or "the report has no controls (written before controls existed?)"
            parts.append(f"## {name} — controls\n\nNone: {note}.\n")
    return "\n".join(parts)


PAPER_RESULTS = Path(__file__).parent.parent / "paper_results.json"
MACRO_COLUMNS = {"em_macro_single": "Macro (single)", "em_macro_all": "Macro (all)"}


PUBLISHED_COLUMNS = (*PAPER_COLUMNS, *MACRO_COLUMNS.values())


def published(path: str | Path = PAPER_RESULTS) -> dict[str, Any]:
    """``ecgqa/paper_results.json``, checked: every row has a source and a verbatim excerpt, and every
    comparable row its test set and EMs (percent, 0-100) under the paper's column names only."""
    path = Path(path)
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise ValueError(f'{path}: expected {{"results": [...], "not_comparable": [...]}}')  # noqa: TRY004

    def need(row: Any, keys: tuple[str, ...], where: str) -> None:
        for key in keys:
            if not (isinstance(row, dict) and isinstance(row.get(key), str) and row[key].strip()):
                raise ValueError(f"{path}: {where} has no {key}; every published number needs one")

    for i, r in enumerate(doc["results"]):
        where = f"results[{i}] ({r.get('model') if isinstance(r, dict) else repr(r)})"
        need(r, ("model", "dataset", "source", "excerpt", "test_set", "test_set_note"), where)
        em = r.get("em")
        if not isinstance(em, dict) or not em:
            raise ValueError(f"{path}: {where} has no em {{column: percent}}")
        for col, value in em.items():
            if col not in PUBLISHED_COLUMNS:
                raise ValueError(f"{path}: {where}: column {col!r} is not one of {list(PUBLISHED_COLUMNS)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                raise ValueError(f"{path}: {where}: {col} must be a percentage 0-100, not {value!r}")
    for i, r in enumerate(doc.get("not_comparable", [])):
        where = f"not_comparable[{i}] ({r.get('system') if isinstance(r, dict) else repr(r)})"
        need(r, ("system", "dataset", "split", "metric", "why_not_comparable", "source", "excerpt"), where)
        if not isinstance(r.get("figures"), dict) or not r["figures"]:
            raise ValueError(f"{path}: {where} has no figures {{name: value}}")
    return doc


def paper_results(path: str | Path = PAPER_RESULTS) -> list[dict[str, Any]]:
    """The published rows on the benchmark's own split and metric (``results`` of ``ecgqa/paper_results.json``):
    ``model``, ``dataset``, EMs in percent under the paper's column names (absent = not published),
    ``test_set`` (which test questions), ``source`` and a verbatim ``excerpt``."""
    return published(path)["results"]


def _sample_label(report: dict[str, Any]) -> str:
    """Which questions a report was measured on, as the published rows name theirs."""
    sample = (report.get("sampling") or {}).get("sample")
    if sample is None and isinstance(report.get("sample"), dict):
        sample = report["sample"].get("name")
    split = report.get("split", "?")
    return f"{split}, the paper's 10 % LLM sample" if sample == "paper" else str(split)


def paper_table(
    reports: Sequence[dict[str, Any]], names: Sequence[str] | None = None, references: Sequence[dict[str, Any]] = ()
) -> str:
    """Reports (and published reference rows) as the paper's table: EM % per question type column,
    the single-ECG macro and the all-types macro; "–" = not measured / not published. A reference row's
    last cell says which test questions it was measured on (``test_set``) and its source."""
    names = list(names) if names else [report_name(r) for r in reports]
    columns = list(PUBLISHED_COLUMNS)
    lines = ["| model | " + " | ".join(columns) + " | n | source |", "|---|" + "---:|" * (len(columns) + 1) + "---|"]
    for name, r in zip(names, reports, strict=True):
        row = paper_row(r)
        cells = [_pct(row[c]) for c in PAPER_COLUMNS] + [_pct(row[k]) for k in MACRO_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r.get('n', '?')} | this run ({_sample_label(r)}) |")
    for ref in references:
        values = ref.get("em", {})
        cells = [_num(values.get(c)) for c in columns]
        label = f"{ref['model']} ({ref.get('dataset', '?')}, published)"
        n = f"{ref['n']:,}" if ref.get("n") else "–"
        test_set = f"test set: {ref['test_set']}; " if ref.get("test_set") else ""
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {n} | {test_set}{ref['source']} |")
    return "\n".join(lines) + "\n"


def published_notes(references: Sequence[dict[str, Any]]) -> str:
    """What each published row was measured on, in words: the rows are not all on the same questions."""
    lines = ["Published rows, the test questions of each (verbatim excerpts: ecgqa/paper_results.json):", ""]
    for ref in references:
        figures = ", ".join(f"{k} {_num(v)}" for k, v in ref.get("em", {}).items())
        lines.append(f"- {ref['model']} ({figures}): {ref['test_set_note']}.")
    return "\n".join(lines) + "\n"


def not_comparable_table(rows: Sequence[dict[str, Any]]) -> str:
    """Published figures on ECG-QA data but another split, item set or metric: printed apart, never ranked."""
    lines = [
        "## Other splits — not comparable",
        "",
        (
            "Figures on ECG-QA data from other splits, item sets or metrics. They are not exact match on the "
            "benchmark's test questions: do not rank them against the table above."
        ),
        "",
        "| system | data and split | metric | figures | why not comparable | source |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        figures = "; ".join(f"{k} {v}" for k, v in r["figures"].items())
        cells = [
            r["system"],
            f"{r['dataset']}: {r['split']}",
            r["metric"],
            figures,
            r["why_not_comparable"],
            r["source"],
        ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def paper_section(
    reports: Sequence[dict[str, Any]], names: Sequence[str] | None = None, path: str | Path = PAPER_RESULTS
) -> str:
    """``ecgqa report --paper``: the paper's table with each published row placed only beside the runs whose
    protocol card matches it (same dataset, test questions and metric: ``ecgqa.evaluation.protocol.match``);
    for every row placed nowhere, why not. Then the not-comparable figures apart, then what could not be found."""
    from ecgqa.evaluation.protocol import match

    doc = published(path)
    names = list(names) if names else [report_name(r) for r in reports]
    placed, refused = [], []
    for ref in doc["results"]:
        verdicts = [(n, *match(r.get("protocol"), ref)) for n, r in zip(names, reports, strict=True)]
        ok = [n for n, good, _ in verdicts if good]
        if ok:
            placed.append({**ref, "source": f"comparable with {', '.join(ok)}; {ref['source']}"})
        else:
            refused.append((ref, verdicts))
    parts = [paper_table(reports, names, placed)]
    if placed:
        parts.append(published_notes(placed))
    if refused:
        lines = ["Published rows not placed beside these runs (their protocol cards do not match):", ""]
        for ref, verdicts in refused:
            figures = ", ".join(f"{k} {_num(v)}" for k, v in ref.get("em", {}).items())
            lines.append(f"- {ref['model']} ({figures}; test set: {ref['test_set']}):")
            lines += [f"  - {n}: {why}" for n, _, why in verdicts]
        parts.append("\n".join(lines) + "\n")
    if doc.get("not_comparable"):
        parts.append(not_comparable_table(doc["not_comparable"]))
    if doc.get("not_found"):
        parts.append(f"Not found: {doc['not_found']}\n")
    return "\n".join(parts)


def _num(value: Any) -> str:
    return "–" if value is None else f"{float(value):.1f}"
