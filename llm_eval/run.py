"""One grounded LLM evaluation, end to end: sample → ground → prompt → ask → store → score → report.

Outputs in ``OUT``:

- ``prompts.jsonl``: every prompt (also the whole output of ``--dry-run``), with its hash and size;
- ``responses.sqlite``: the durable response store (or ``--store``), keyed by (model, prompt hash);
- ``transcripts/<sample_id>.json``: prompt, reply, parsed answer, truth, score, usage, per question;
- ``predictions.jsonl``, ``report.json``, ``report.md``: the same shape as ``ecgqa evaluate``'s, so
  ``ecgqa report`` tabulates LLMs next to trained models;
- ``run_log.json``: what this particular run did (requests sent, wall time) — kept out of the report
  so that a resumed run and an uninterrupted one write identical reports.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecgqa.files import atomic_write, atomic_write_json, claim_output_dir
from llm_eval.grounding import Grounder, fingerprint, prepared_signal_of
from llm_eval.prompts import PROMPT_VERSION, build_prompt, options_for, prompt_hash
from llm_eval.sampling import DEFAULT_FRACTION, DEFAULT_SEED, Question, questions_from_prepared, read_ids_file, select
from llm_eval.scoring import Scored, exact_match, parse_reply, summarize

#: Written first into every llm-eval output folder: proof that the folder is ours to resume and rewrite.
MARKER = "llm_eval_run.json"


def claim_out(out: Path) -> None:
    """Refuse an --out holding someone else's files; mark the folder ours before writing anything else."""
    claim_output_dir(out, marker=MARKER, what="llm-eval output")
    if not (out / MARKER).is_file():
        atomic_write_json(out / MARKER, {"tool": "ecgqa llm-eval"})


@dataclass(frozen=True)
class PromptItem:
    question: Question
    messages: list[dict[str, str]]
    hash: str

    @property
    def options(self) -> list[str]:
        return options_for(self.question)


def build_prompts(questions: list[Question], grounder: Grounder) -> list[PromptItem]:
    """Ground every question (each (ECG, subset) classified once) and build its prompt."""
    interpretations = grounder.ground(questions)
    items = []
    for q in questions:
        messages = build_prompt(q, interpretations[q.sample_id])
        items.append(PromptItem(q, messages, prompt_hash(messages)))
    return items


def write_prompts(items: list[PromptItem], out: Path) -> dict[str, Any]:
    """prompts.jsonl (atomic) and its size summary: what a run would send, before spending anything."""
    lines, chars = [], 0
    for it in items:
        n = sum(len(m["content"]) for m in it.messages)
        chars += n
        lines.append(json.dumps({"sample_id": it.question.sample_id, "question_type": it.question.question_type,
                                 "prompt_hash": it.hash, "chars": n, "messages": it.messages}, ensure_ascii=False))
    atomic_write(out / "prompts.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    # ~4 characters per token for English text: a planning estimate, not a bill.
    return {"n_prompts": len(items), "n_distinct_prompts": len({it.hash for it in items}), "chars": chars,
            "estimated_prompt_tokens": round(chars / 4)}


def score_items(items: list[PromptItem], store: Any, model: str, errors: dict[str, str]) -> list[tuple[Scored, dict]]:
    """Score every item from the store (never from memory: what is scored is what was persisted)."""
    out = []
    for it in items:
        q = it.question
        resp = store.get(model, it.hash)
        if resp is None:
            row = Scored(q.sample_id, q.question_type, q.attribute_type, [], list(q.answer), list(q.options),
                         None, "failed")
            reply, error = None, errors.get(it.hash, "no response stored (the run was interrupted)")
        else:
            predicted, matched = parse_reply(resp.reply, it.options)
            # A reply naming no option is wrong, also when the truth is "none" (as the paper scored it).
            row = Scored(q.sample_id, q.question_type, q.attribute_type, predicted, list(q.answer), list(q.options),
                         matched and exact_match(predicted, q.answer, q.options), "ok" if matched else "no-match",
                         resp.prompt_tokens, resp.completion_tokens)
            reply, error = resp.reply, None
        transcript = {
            "sample_id": q.sample_id, "question": q.question, "question_type": q.question_type,
            "attribute_type": q.attribute_type, "ecg_id": list(q.ecg_ids), "model": model,
            "prompt_hash": it.hash, "messages": it.messages, "options": it.options, "reply": reply,
            "parsed": row.predicted, "true": row.true, "valid": row.valid, "correct": row.correct,
            "status": row.status, "error": error,
            "usage": {"prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens},
        }
        out.append((row, transcript))
    return out


def render_report_md(report: dict[str, Any]) -> str:
    from ecgqa.report import render_markdown

    lines = [render_markdown(report), "## LLM run", ""]
    lines.append(f"- prompt version: {report['prompt_version']}, grounding: `{report['grounding']}`")
    lines.append(f"- questions: {report['n_questions']} sampled, {report['n']} scored, {report['n_failed']} failed "
                 f"(not scored), {report['n_no_match']} replies matched no option (scored wrong)")
    u = report["usage"]
    lines.append(f"- tokens: {u['prompt_tokens']} in, {u['completion_tokens']} out")
    if "cost" in report:
        c = report["cost"]
        lines.append(f"- estimated cost: {c['total']:.4f} (input {c['input']:.4f} at {c['price_in_per_1m']}/1M, "
                     f"output {c['output']:.4f} at {c['price_out_per_1m']}/1M)")
    if report["failed_sample_ids"]:
        lines.append(f"- failed sample ids (re-run the same command to retry them): {report['failed_sample_ids'][:50]}")
    return "\n".join(lines) + "\n"


def evaluate(
    questions: list[Question],
    grounder: Grounder,
    model: str,
    out: str | Path,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    concurrency: int = 8,
    timeout: float = 60.0,
    max_retries: int = 6,
    backoff_base: float = 1.0,
    max_tokens: int | None = 256,
    price_in: float | None = None,
    price_out: float | None = None,
    store_path: str | Path | None = None,
    dry_run: bool = False,
    report_meta: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate already-selected questions; returns report.json's content (or the dry-run summary)."""
    from llm_eval.client import ChatClient, api_key_from_env, ask_all, safe_url
    from llm_eval.store import ResponseStore

    out = Path(out)
    claim_out(out)
    t0 = time.time()
    items = build_prompts(questions, grounder)
    summary = write_prompts(items, out)

    def log(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr)

    if dry_run:
        summary.update({"dry_run": True, "n_forward": grounder.n_forward, "prompts": str(out / "prompts.jsonl")})
        atomic_write(out / "dry_run.json", json.dumps(summary, indent=2) + "\n")
        log(f"dry run: {summary['n_prompts']} prompts, {summary['chars']} characters "
            f"(~{summary['estimated_prompt_tokens']} tokens) written to {out / 'prompts.jsonl'}; no model was called")
        return summary

    key = api_key if api_key is not None else api_key_from_env(api_key_env, base_url)
    store = ResponseStore(store_path or out / "responses.sqlite")
    try:
        distinct = {it.hash: it.messages for it in items}
        cached = sum(1 for h in distinct if store.has(model, h))
        log(f"{len(items)} questions, {len(distinct)} distinct prompts: {cached} already answered in {store.path}, "
            f"{len(distinct) - cached} to ask {model}")
        client = ChatClient(model, store, base_url=base_url, api_key=key, concurrency=concurrency, timeout=timeout,
                            max_retries=max_retries, backoff_base=backoff_base, max_tokens=max_tokens)
        outcomes = ask_all(client, distinct, progress=progress)
        errors = {h: o.error for h, o in outcomes.items() if not o.ok and o.error}
        scored = score_items(items, store, model, errors)
    finally:
        store.close()

    for row, transcript in scored:
        atomic_write(out / "transcripts" / f"{row.sample_id}.json", json.dumps(transcript, indent=1, ensure_ascii=False))
    preds = [json.dumps({
        "sample_id": row.sample_id, "question_type": row.question_type, "attribute_type": row.attribute_type,
        "predicted": row.predicted, "true": row.true, "valid": row.valid, "scores": {},
        "correct": row.correct, "status": row.status, "reply": transcript["reply"],
    }, ensure_ascii=False) for row, transcript in scored]
    atomic_write(out / "predictions.jsonl", "\n".join(preds) + ("\n" if preds else ""))

    report: dict[str, Any] = {"kind": "llm", "model": model, "llm": model, "base_url": safe_url(base_url)}
    report.update(report_meta or {})
    report.update(summarize([r for r, _ in scored], price_in, price_out))
    report.update({"prompt_version": PROMPT_VERSION, "n_distinct_prompts": len(distinct)})
    report.setdefault("grounding", None)
    atomic_write(out / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write(out / "report.md", render_report_md(report))
    run_log = {"requests_sent": client.requests_sent, "prompts_answered_before": cached,
               "grounding_forward_rows": grounder.n_forward, "wall_s": round(time.time() - t0, 3)}
    atomic_write(out / "run_log.json", json.dumps(run_log, indent=2) + "\n")
    log(f"EM {100 * (report['em'] or 0):.1f} % on {report['n']} questions "
        f"(macro over question types {100 * (report['em_macro_question_type'] or 0):.1f} %), "
        f"{report['n_failed']} failed; {client.requests_sent} requests sent; written: {out / 'report.md'}")
    return report


def run_llm_eval(
    data: str | Path,
    grounding: str | Path,
    model: str,
    out: str | Path,
    *,
    split: str = "test",
    fraction: float = DEFAULT_FRACTION,
    seed: int = DEFAULT_SEED,
    ids_file: str | Path | None = None,
    device: str | None = None,
    batch_size: int = 64,
    grounding_cache: str | Path | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """The ``ecgqa llm-eval`` job on a prepared QA directory and an upperbound checkpoint."""
    import ecgqa
    from ecgqa.data import PreparedData

    out = Path(out)
    prepared = PreparedData(data)
    questions = questions_from_prepared(prepared, split)
    ids = read_ids_file(ids_file) if ids_file else None
    chosen = select(questions, fraction, seed, ids, where=f"{data} ({split}): ")
    if progress:
        print(f"{len(chosen)} of {len(questions)} {split} questions selected "
              f"({'--ids-file' if ids else f'stratified by qt3, fraction {fraction}, seed {seed}'})", file=sys.stderr)
    predictor = ecgqa.load(grounding, device=device)
    if predictor.task != "upperbound":
        raise ValueError(f"--grounding {grounding} is a {predictor.task!r} checkpoint; it must be an upperbound one "
                         "(trained on a prepared upperbound directory)")
    rate = prepared.meta.get("rate")
    if rate is not None and predictor.rate != rate:
        raise ValueError(f"--grounding {grounding} expects {predictor.rate} Hz signals but {data} holds {rate} Hz")
    fp = fingerprint(grounding, str(prepared.meta.get("content_hash", "")))
    cache = Path(grounding_cache) if grounding_cache else out / "grounding_cache" / f"{fp}.jsonl"
    grounder = Grounder(predictor, prepared_signal_of(prepared), cache, fingerprint=fp, batch_size=batch_size,
                        progress=progress)
    meta = {"grounding": str(grounding), "grounding_fingerprint": fp, "data": str(data),
            "split": split, "sampling": {"fraction": fraction, "seed": seed,
                                         "ids_file": str(ids_file) if ids_file else None,
                                         "n_in_split": len(questions)}}
    return evaluate(chosen, grounder, model, out, report_meta=meta, progress=progress, **kwargs)
