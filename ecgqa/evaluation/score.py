"""``ecgqa score --data PREPARED --split test --answers FILE --out REPORT``: score any model's answers.

For a model this toolkit cannot run (an ECG-LLM behind its own code, a vision model, a signal model in
another framework): run it on the questions yourself, write one JSON line per question, and get the
same report folder as ``ecgqa evaluate`` and ``ecgqa llm-eval`` write (``report.json``, ``report.md``,
``predictions.jsonl``, ``charts/``), so ``ecgqa report`` puts it next to them and the paper's rows.

An answers file is JSON Lines; blank lines are skipped. Each line is one of

- ``{"sample_id": 123, "reply": "free text"}``: the model's reply, parsed with the ``paper`` rule of
  ``ecgqa.evaluation.replies`` (the rule of ``ecgqa llm-eval --prompt paper``) against the question's options (its
  valid classes, plus ``None`` unless it is a verify question). A reply that matches no option is wrong,
  also when the true answer is ``none``, and is counted in ``n_no_match``; "none" next to an option is wrong;
- ``{"sample_id": 123, "answer": ["lead I", "lead II"]}``: the class names the model chose (a single
  string is one class; ``[]``, ``"none"`` or ``["none"]`` mean none). A name must be an answer class of the
  prepared data (exactly, or case-insensitively when that is unambiguous); an unknown name is an error.
  Classes that are answer classes but not among this question's options are ignored, as exact match
  ignores every class outside a question's valid classes (``ecgqa.evaluation.metrics``); the report counts the
  lines that named one (``n_outside_options``). ``none`` together with a class is an error (it
  contradicts itself);
- a line of ``predictions.jsonl`` as ``ecgqa evaluate`` / ``ecgqa llm-eval`` / this command write it
  (``"predicted": [...]``): scored as written (its ``true`` and ``scores`` are not read). A line its run
  marked wrong (``"correct": false``) stays wrong whatever its set, because the set alone does not show why
  (a reply that named no option, or "none" next to an option); ``"correct": true`` is never taken on trust.
  ``"status": "failed"`` / ``"missing"`` lines are unanswered.

Unknown sample ids, duplicates, malformed JSON and lines of another shape are one-line errors naming the
file and line. Questions with no answer line are an error by default, naming how many and which;
``--missing skip`` scores the answered ones only, ``--missing wrong`` counts each unanswered one as wrong
(what a comparison with a published figure needs): either way the report gives ``n_missing`` and their ids.

``--sample paper`` scores the ECG-QA paper's LLM sample only (``ecgqa.evaluation.paper_sample``: PTB-XL test); answer
lines for other questions of the split are then ignored and counted (``n_ignored_outside_sample``), and
ids of the list that the prepared data lacks are reported by count (``sampling.n_missing``). The report's
``sampling`` block has the same keys as ``ecgqa llm-eval``'s (``sample``, ``sha256``, ``n_listed``, ...).
Lines for questions that ``ecgqa prepare --drop-bad`` left out (their records were missing) are ignored
and counted (``n_ignored_dropped_by_prepare``), not refused: answers of a model run on the full release
score on the questions the prepared data holds.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecgqa.evaluation.replies import NONE_OPTION, valid_text
from ecgqa.evaluation.report_folder import (
    CONTROLS_DIR,
    REPORT_JSON,
    nested_em,
    prediction_line,
    write_lines,
    write_report,
)
from ecgqa.files import atomic_write_json, claim_output_dir, sha256_file

#: Written first into every score output folder: proof that the folder is ours to replace.
MARKER = "score_run.json"
__all__ = ["MARKER", "REPORT_JSON", "read_answers", "score"]
REPLY_RULE = "paper"
SAMPLES = ("all", "paper")
MISSING = ("error", "skip", "wrong")
UNANSWERED = ("failed", "missing")  # statuses of a predictions.jsonl line that carry no answer
SHOW_IDS = 20  # sample ids named in one error message


@dataclass(frozen=True)
class Answer:
    """One answer line: a free-text ``reply`` or the chosen ``classes`` (names; () = none)."""

    line: int
    reply: str | None = None
    classes: tuple[str, ...] | None = None
    status: str = "ok"  # "ok", or a predictions.jsonl status: "no-match", "failed", "missing"
    marked_wrong: bool = False  # a predictions.jsonl line its run scored wrong ("correct": false)


@dataclass(frozen=True)
class _Question:
    sample_id: int
    question: str
    question_type: str
    attribute_type: str
    ecg_id: list[int]
    true: tuple[str, ...]
    valid: tuple[str, ...]  # answer-space order

    @property
    def options(self) -> list[str]:
        """What a model is offered: the valid classes, plus ``None`` for non-verify questions."""
        return list(self.valid) if self.question_type.endswith("verify") else [*self.valid, NONE_OPTION]


# ------------------------------------------------------------------------------------ reading


class _ClassNames:
    """Answer-class lookup: exact names, then case-insensitive where that names one class only."""

    def __init__(self, classes: list[str]) -> None:
        self.classes = classes
        self.exact = set(classes)
        lower: dict[str, list[str]] = {}
        for c in classes:
            lower.setdefault(c.lower(), []).append(c)
        self.lower = {k: v[0] for k, v in lower.items() if len(v) == 1}

    def resolve(self, name: str, where: str, data: str) -> str | None:
        """The class ``name`` means (None for "none"); a ValueError naming ``where`` when there is none."""
        if name in self.exact and name != "none":
            return name
        if name.strip().lower() == "none":
            return None
        if name.strip().lower() in self.lower:
            return self.lower[name.strip().lower()]
        by_lower = {c.lower(): c for c in self.classes}
        close = [by_lower[c] for c in difflib.get_close_matches(name.lower(), list(by_lower), n=3)]
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"{where}: unknown class {name!r}: not one of the {len(self.classes)} answer classes of {data}{hint}"
        )


#: Longer than any id; also under Python's 4,300-digit limit on int(), whose error names no line.
MAX_ID_DIGITS = 30


def _sample_id(obj: dict[str, Any], where: str) -> int:
    if "sample_id" not in obj:
        raise ValueError(
            f'{where}: no "sample_id"; each line is {{"sample_id": N, "reply": "..."}} or '
            '{"sample_id": N, "answer": ["class", ...]}'
        )
    sid = obj["sample_id"]
    # ASCII digits only: str.isdigit() also takes "١٢٣" (Arabic-Indic, which int() reads as 123) and "²"
    # (which int() refuses); ids are written by programs, and a reader must not guess what another meant.
    if isinstance(sid, str) and sid.strip().isascii() and sid.strip().isdigit() and len(sid.strip()) <= MAX_ID_DIGITS:
        return int(sid)
    if isinstance(sid, str) and sid.strip().isdigit():
        raise ValueError(f"{where}: sample_id {sid[:40]!r} is not written in ASCII digits 0-9 (or is too long)")
    if not isinstance(sid, int) or isinstance(sid, bool):
        raise ValueError(f"{where}: sample_id must be an integer, not {sid!r}")  # noqa: TRY004 - a data error
    return sid


def _parse_line(obj: Any, line: int, where: str, names: _ClassNames, data: str) -> tuple[int, Answer]:
    if not isinstance(obj, dict):  # a data error: the CLI shows ValueErrors as one line
        shape = f'expected a JSON object such as {{"sample_id": 123, "reply": "yes"}}, not {type(obj).__name__}'
        if isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
            shape += " (a JSON array of answers: write one object per line instead)"
        raise ValueError(f"{where}: {shape}")  # noqa: TRY004
    sid = _sample_id(obj, where)
    if "answer" in obj and "reply" in obj:
        raise ValueError(f'{where}: both "answer" and "reply"; give one (class names, or the free-text reply)')
    if "answer" in obj or "predicted" in obj:
        key = "answer" if "answer" in obj else "predicted"
        status = "ok" if key == "answer" else str(obj.get("status") or "ok")
        if status in UNANSWERED:
            return sid, Answer(line, status=status)
        value = obj[key]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f'{where}: "{key}" must be a list of class names (strings), not {value!r}')
        resolved = [names.resolve(v, where, data) for v in value]
        chosen = tuple(dict.fromkeys(c for c in resolved if c is not None))
        if chosen and len(chosen) < len(resolved):
            raise ValueError(f'{where}: "{key}" names none together with {list(chosen)}; none means no class')
        return sid, Answer(
            line,
            classes=chosen,
            status="no-match" if status == "no-match" else "ok",
            marked_wrong=key == "predicted" and (obj.get("correct") is False or status == "no-match"),
        )
    if "reply" in obj:
        reply = obj["reply"]
        if not isinstance(reply, str):
            raise ValueError(f'{where}: "reply" must be the model\'s text (a string), not {reply!r}')
        # A lone surrogate escape ("\\ud83d": an emoji cut in half by a truncating writer) is no character and
        # cannot be written as UTF-8: it becomes U+FFFD, as an undecodable byte does.
        return sid, Answer(line, reply=valid_text(reply))
    raise ValueError(f'{where}: no answer: expected "reply" (free text) or "answer" (a list of class names)')


def read_answers(
    answers: str | Path | Iterable[Mapping[str, Any]],
    known_ids: set[int],
    classes: list[str],
    *,
    data: str = "the prepared data",
    split: str = "test",
    dropped: set[int] | frozenset[int] = frozenset(),
) -> dict[int, Answer]:
    """sample id → Answer, every line checked (JSON, shape, id in ``known_ids``, no duplicate, class names).

    ``answers`` is a JSONL file, or (Python) an iterable of dicts, numbered from 1 as lines are. A line for
    an id in ``dropped`` (a question ``ecgqa prepare`` left out: its records were missing) is kept with
    status ``"dropped"``, so that it is counted, not refused.
    """
    names = _ClassNames(classes)
    if isinstance(answers, (str, Path)):
        path = Path(answers)
        if path.is_dir():
            raise ValueError(
                f"--answers {path} is a folder; pass the answers file itself (JSON Lines), e.g. "
                f"{path / 'predictions.jsonl'} for a folder written by evaluate / llm-eval / score"
            )
        if not path.is_file():
            raise FileNotFoundError(f"--answers {path} not found")
        label = str(path)

        def objects() -> Iterable[tuple[int, Any]]:
            with path.open("rb") as f:
                for n, raw in enumerate(f, 1):
                    if n == 1 and raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
                        raise ValueError(
                            f"{path}: UTF-16 text (e.g. PowerShell's `>`); answers are UTF-8 JSON Lines: "
                            "re-save the file as UTF-8"
                        )
                    try:
                        # utf-8-sig on the first line: a UTF-8 byte-order mark (Windows editors write one) is dropped
                        text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
                    except UnicodeDecodeError as e:
                        raise ValueError(
                            f"{path}:{n}: not UTF-8 text ({e.reason} at byte {e.start} of the line); "
                            "answers are JSON Lines"
                        ) from None
                    if not text.strip():
                        continue
                    try:
                        yield n, json.loads(text)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{n}: not valid JSON ({e.msg}, column {e.colno})") from None
                    except ValueError:  # a number of over 4,300 digits: json gives no line of its own
                        raise ValueError(f"{path}:{n}: not an answer line (a number of thousands of digits)") from None
                    except RecursionError:
                        raise ValueError(f"{path}:{n}: not an answer line (JSON nested too deeply)") from None
    else:
        label = "answers"
        items = list(answers)

        def objects() -> Iterable[tuple[int, Any]]:
            yield from enumerate(items, 1)

    out: dict[int, Answer] = {}
    for n, obj in objects():
        where = f"{label}:{n}"
        sid, answer = _parse_line(obj, n, where, names, data)
        if sid not in known_ids and sid not in dropped:
            raise ValueError(f"{where}: sample_id {sid} is not a question of split {split!r} of {data}")
        if sid in out:
            raise ValueError(f"{where}: sample_id {sid} again (first answered on line {out[sid].line})")
        out[sid] = answer if sid in known_ids else Answer(n, status="dropped")
    return out


# ------------------------------------------------------------------------------------ scoring


def _questions(prepared: Any, split: str, classes: list[str]) -> list[_Question]:
    table = prepared.split(split)
    cols = table.select_columns(
        ["sample_id", "question", "question_type", "attribute_type", "ecg_id", "answer", "valid_classes"]
    ).to_dict()
    out = []
    for i, sid in enumerate(cols["sample_id"]):
        valid = sorted({int(c) for c in cols["valid_classes"][i]})
        true = sorted({int(c) for c in cols["answer"][i]} & set(valid))
        out.append(
            _Question(
                int(sid),
                cols["question"][i],
                cols["question_type"][i],
                cols["attribute_type"][i],
                [int(e) for e in cols["ecg_id"][i]],
                tuple(classes[c] for c in true),
                tuple(classes[c] for c in valid),
            )
        )
    return out


def _select(
    questions: list[_Question], sample: str, version: str, split: str, data: str
) -> tuple[list[_Question], dict[str, Any]]:
    from ecgqa.evaluation.paper_sample import PAPER_SAMPLE_SHA256, applies, ids_sha256, paper_sample_ids

    if sample not in SAMPLES:
        raise ValueError(f"--sample {sample!r}: expected one of {', '.join(SAMPLES)}")
    if sample == "all":
        return questions, {
            "sample": "all",
            "sha256": ids_sha256(sorted(q.sample_id for q in questions)),
            "n_selected": len(questions),
            "n_in_split": len(questions),
        }
    if not applies(version, split):
        raise ValueError(
            f"--sample paper: the paper's LLM sample covers PTB-XL test questions only; {data} is "
            f"{version} split {split!r}. Use --sample all"
        )
    ids = set(paper_sample_ids())
    chosen = [q for q in questions if q.sample_id in ids]
    if not chosen:
        raise ValueError(
            f"--sample paper: none of the {len(ids)} ids of the paper's LLM sample is a question of {data} "
            f"(split {split!r}); use --sample all"
        )
    have = {q.sample_id for q in questions}
    return chosen, {
        "sample": "paper",
        "sha256": PAPER_SAMPLE_SHA256,
        "n_listed": len(ids),
        "n_missing": len(ids - have),
        "n_selected": len(chosen),
        "n_in_split": len(questions),
        "source": "ECG-QA authors, llm_modeling/examples/sampled_ecgqa_ids.txt (ecgqa/published/)",
    }


def _score_one(q: _Question, a: Answer) -> dict[str, Any]:
    from ecgqa.evaluation.metrics import exact_match_sets
    from ecgqa.evaluation.replies import parse_reply_detail, parsed_correct

    row: dict[str, Any] = {"reply": None, "outside_options": []}
    if a.reply is not None:
        parsed = parse_reply_detail(a.reply, q.options, REPLY_RULE)
        row.update(
            predicted=list(parsed.options),
            correct=parsed_correct(parsed, q.options, q.true, REPLY_RULE),
            status="ok" if parsed.matched else "no-match",
            reply=a.reply,
            source="reply",
        )
        return row
    chosen = set(a.classes or ())
    valid = set(q.valid)
    predicted = [c for c in q.valid if c in chosen]
    correct = not a.marked_wrong and bool(exact_match_sets([predicted], [q.true])[0])
    row.update(
        predicted=predicted, correct=correct, status=a.status, source="answer", outside_options=sorted(chosen - valid)
    )
    return row


def score(
    data: str | Path,
    split: str,
    answers: str | Path | Iterable[Mapping[str, Any]],
    out: str | Path | None = None,
    *,
    sample: str = "all",
    missing: str = "error",
    name: str | None = None,
    controls: Mapping[str, str | Path | Iterable[Mapping[str, Any]]] | None = None,
    control_seed: int | None = None,
) -> dict[str, Any]:
    """Score ``answers`` on ``data``/``split``; returns report.json's content, and writes the report folder
    ``out`` when given (claimed first: absent, empty, or one this command wrote).

    ``controls``: name → a control's answers (same formats: e.g. the model's replies with each question asked
    about another ECG, or a question-only model's), scored the same way and compared with the model's by
    ``sample_id`` (``ecgqa.evaluation.controls.compare``: EM, balanced accuracy, paired bootstrap CI over ECGs).
    """
    from ecgqa.data.prepared import PreparedData
    from ecgqa.evaluation.controls import SEED, compare
    from ecgqa.evaluation.metrics import em_summary
    from ecgqa.evaluation.paper_sample import ids_sha256
    from ecgqa.evaluation.protocol import card, sample_card

    if missing not in MISSING:
        raise ValueError(f"--missing {missing!r}: expected one of {', '.join(MISSING)}")
    if out is not None:
        claim_output_dir(out, marker=MARKER, what="score report")
    data_path = Path(data)
    prepared = PreparedData(data_path)
    if prepared.task != "qa":
        raise ValueError(
            f"{data_path}: `ecgqa score` needs a prepared QA directory (meta.json task 'qa'), not task "
            f"{prepared.task!r}"
        )
    if split not in prepared.splits:
        raise ValueError(f"{data_path} has no split {split!r}; it holds {prepared.splits}")
    classes = list(prepared.meta.get("answer_classes") or prepared.classes)
    questions = _questions(prepared, split, classes)
    chosen, sampling = _select(questions, sample, prepared.meta["version"], split, str(data_path))
    dropped = _dropped_ids(data_path, split)
    known = {q.sample_id for q in questions}
    given = read_answers(answers, known, classes, data=str(data_path), split=split, dropped=dropped)
    n_dropped = sum(a.status == "dropped" for a in given.values())
    given = {s: a for s, a in given.items() if a.status != "dropped"}
    label = str(answers) if isinstance(answers, (str, Path)) else "answers"

    if not given and n_dropped == 0:
        raise ValueError(
            f"{label}: no answer lines (the file is empty or blank); each line is "
            '{"sample_id": N, "reply": "..."} or {"sample_id": N, "answer": ["class", ...]}'
        )
    in_sample = {q.sample_id for q in chosen}
    unanswered = [q.sample_id for q in chosen if q.sample_id not in given or given[q.sample_id].status in UNANSWERED]
    if unanswered and missing == "error":
        hint = ""
        if sample == "all" and given:
            from ecgqa.evaluation.paper_sample import applies, paper_sample_ids

            answered = {s for s, a in given.items() if a.status not in UNANSWERED}
            if applies(prepared.meta["version"], split) and answered <= set(paper_sample_ids()):
                hint = "; every answered id is in the paper's LLM sample: score that sample with --sample paper"
        raise ValueError(
            f"{label}: {len(unanswered)} of the {len(chosen)} questions scored ({sampling['sample']} of "
            f"split {split!r}) have no answer, e.g. sample ids {unanswered[:SHOW_IDS]}; answer them, or "
            f"pass --missing skip (score the answered ones) or --missing wrong (count them as wrong){hint}"
        )
    lost = set(unanswered)
    rows: list[tuple[_Question, dict[str, Any]]] = []
    for q in chosen:
        if q.sample_id in lost:
            if missing == "wrong":
                rows.append(
                    (
                        q,
                        {
                            "predicted": [],
                            "correct": False,
                            "status": "missing",
                            "reply": None,
                            "source": None,
                            "outside_options": [],
                        },
                    )
                )
            continue
        rows.append((q, _score_one(q, given[q.sample_id])))
    if not rows:
        raise ValueError(f"{label}: none of the {len(chosen)} questions scored has an answer; nothing to score")

    import numpy as np

    correct = np.asarray([r["correct"] for _, r in rows], dtype=bool)
    qtypes = [q.question_type for q, _ in rows]
    atypes = [q.attribute_type for q, _ in rows]

    model = name or _default_name(answers)
    report: dict[str, Any] = {
        "kind": "answers",
        "model": model,
        "answers": label,
        "answers_sha256": sha256_file(answers) if isinstance(answers, (str, Path)) else None,
        "data": str(data_path),
        "version": prepared.meta["version"],
        "variant": prepared.meta.get("variant"),
        "data_content_hash": prepared.meta.get("content_hash"),
        "split": split,
        "reply_rule": REPLY_RULE,
        "sampling": sampling,
        "missing_policy": missing,
        **em_summary(correct, qtypes, atypes),
        "per_question_attribute_type": nested_em(correct, qtypes, atypes),
        "n_questions": len(chosen),
        "n_answered": len(chosen) - len(lost),
        "n_missing": len(lost),
        "missing_sample_ids": sorted(lost),
        "n_replies": sum(r["source"] == "reply" for _, r in rows),
        "n_answers": sum(r["source"] == "answer" for _, r in rows),
        "n_no_match": sum(r["status"] == "no-match" for _, r in rows),
        "n_outside_options": sum(bool(r["outside_options"]) for _, r in rows),
        "n_ignored_outside_sample": sum(1 for s in given if s not in in_sample),
        "n_ignored_dropped_by_prepare": n_dropped,
        "scored_ids_sha256": ids_sha256(sorted(q.sample_id for q, _ in rows)),
    }
    lines = [_line(q, r) for q, r in rows]
    control_lines: dict[str, list[dict[str, Any]]] = {}
    for cname, cfile in (controls or {}).items():
        cgiven = read_answers(cfile, known, classes, data=str(data_path), split=split, dropped=dropped)
        control_lines[cname] = [
            _line(q, _score_one(q, cgiven[q.sample_id]))
            for q in chosen
            if q.sample_id in cgiven and cgiven[q.sample_id].status not in (*UNANSWERED, "dropped")
        ]
        if not control_lines[cname]:
            raise ValueError(f"--control {cname}={cfile}: answers none of the questions scored")
    if control_lines:
        how = {c: f"answers of {f}" for c, f in (controls or {}).items()}
        report["controls"] = compare(lines, control_lines, how=how, seed=SEED if control_seed is None else control_seed)
    else:
        report["controls"] = None
        report["controls_note"] = (
            "none given: pass --control NAME=FILE (e.g. the same model with shuffled ECGs, or a question-only model)"
        )
    kind = {"all": "full", "paper": "paper"}[sampling["sample"]]
    if len(rows) < len(chosen) and sampling["sample"] == "all":
        kind = "subset"
    report["protocol"] = card(
        version=str(prepared.meta["version"]),
        variant=prepared.meta.get("variant"),
        data_content_hash=prepared.meta.get("content_hash"),
        split=split,
        sample=sample_card(kind, [q.sample_id for q, _ in rows], len(questions)),
        per_question_type=report["per_question_type"],
        model=model,
        input=f"unknown to ecgqa score (answers file {label})",
        reply_rule=REPLY_RULE if report["n_replies"] else None,
    )
    if out is None:
        return report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MARKER).is_file():
        atomic_write_json(out / MARKER, {"tool": "ecgqa score"})
    if control_lines:
        (out / CONTROLS_DIR).mkdir(exist_ok=True)
        for cname, clines in control_lines.items():
            write_lines(out / CONTROLS_DIR / f"{cname}.jsonl", clines)
    return write_report(out, report, lines, render_report_md(report))


def _line(q: _Question, r: dict[str, Any]) -> dict[str, Any]:
    extra = {"outside_options": r["outside_options"]} if r["outside_options"] else {}
    return dict(
        prediction_line(
            q.sample_id,
            q.question_type,
            q.attribute_type,
            r["predicted"],
            q.true,
            q.valid,
            bool(r["correct"]),
            question=q.question,
            ecg_id=q.ecg_id,
            scores={},
            status=r["status"],
            reply=r["reply"],
            **extra,
        )
    )


def _dropped_ids(data: Path, split: str) -> set[int]:
    """Sample ids of ``split`` that ``ecgqa prepare --drop-bad`` left out (their records were missing or bad)."""
    from ecgqa.data.prepared import DROPPED

    path = data / DROPPED
    if not path.is_file():
        return set()
    try:
        ids = (json.loads(path.read_text()).get("samples") or {}).get(split) or []
        return {int(i) for i in ids}
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not the dropped-samples list `ecgqa prepare` writes ({e})") from None


def _default_name(answers: Any) -> str:
    """The answers file's stem, or its folder's name for a ``predictions.jsonl`` (an evaluate/llm-eval folder)."""
    if not isinstance(answers, (str, Path)):
        return "answers"
    path = Path(answers)
    return path.parent.name if path.stem == "predictions" and path.parent.name else path.stem


def render_report_md(report: dict[str, Any]) -> str:
    """report.md's own section (after the shared page): what was scored and what was not."""
    s = report["sampling"]
    lines = ["## Answers scored", ""]
    lines.append(f"- answers: `{report['answers']}` (sha256 {report['answers_sha256']})")
    if s["sample"] == "paper":
        lines.append(
            f"- sample: the published LLM sample of the ECG-QA paper ({s['n_listed']} ids, sha256 "
            f"`{s['sha256']}`; {s['n_missing']} of them are not in this data)"
        )
    else:
        lines.append(f"- sample: all {s['n_in_split']} questions of the split (ids sha256 `{s['sha256']}`)")
    lines.append(
        f"- questions: {report['n_questions']}; answered {report['n_answered']}; missing "
        f"{report['n_missing']} ({'counted wrong' if report['missing_policy'] == 'wrong' else 'not scored'}"
        f"); scored {report['n']}"
    )
    lines.append(
        f"- free-text replies: {report['n_replies']} (parsed with the `{report['reply_rule']}` rule), "
        f"{report['n_no_match']} matched no option (scored wrong); class-name answers: {report['n_answers']}, "
        f"{report['n_outside_options']} named classes outside the question's options (ignored)"
    )
    if report["n_ignored_outside_sample"]:
        lines.append(f"- {report['n_ignored_outside_sample']} answer lines are outside the sample (ignored)")
    if report["n_ignored_dropped_by_prepare"]:
        lines.append(
            f"- {report['n_ignored_dropped_by_prepare']} answer lines are for questions `ecgqa prepare` "
            "dropped (missing records; ignored)"
        )
    if report["missing_sample_ids"]:
        lines.append(f"- missing sample ids (first 50): {report['missing_sample_ids'][:50]}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ CLI
