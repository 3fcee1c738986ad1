"""One LLM evaluation, end to end: sample → gather the inputs → prompt → ask → store → score → report.

Outputs in ``OUT`` (the folder is claimed with ``ecgqa.files.claim_output_dir``: it must be new, empty,
or one this command wrote, marked by ``llm_eval_run.json``; re-using it resumes):

- ``prompts.jsonl``: every prompt with its hash, size and token estimate. Images appear as
  ``sha256:<hex>`` of the cached PNG; with ``--dry-run`` every message is written exactly as it would be
  sent, images as their base64 data URLs (and ``dry_run.json`` sums the estimate);
- ``responses.sqlite``: the durable response store (or ``--store``), keyed by (model, prompt hash);
- ``transcripts/<sample_id>.json``: input, prompt, reply, parsed answer, truth, score, usage, per question;
- ``predictions.jsonl``, ``report.json``, ``report.md``, ``charts/``: the same shape and charts as
  ``ecgqa evaluate``'s and ``ecgqa score``'s (``ecgqa.evaluation.report_folder.make_charts``), so
  ``ecgqa report`` tabulates LLMs (one column per model and input) next to trained models;
- ``run_log.json``: what this particular run did (requests sent, ECGs rendered and measured, wall time)
  — kept out of the report so that a resumed run and an uninterrupted one write identical reports.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecgqa.evaluation.report_folder import (
    CONTROLS_DIR,
    PREDICTIONS,
    nested_em,
    prediction_line,
    read_lines,
    write_report,
)
from ecgqa.files import AtomicLines, atomic_write, atomic_write_json, claim_output_dir
from llm_eval.client import FatalEndpointError, check_request_options, parse_base_url, resolve_base_url
from llm_eval.grounding import Grounder, ecg_labels, fingerprint, prepared_signal_of
from llm_eval.inputs import FeatureCache, ImageCache, image_tokens, input_name, parse_inputs
from llm_eval.paper import PAPER_STYLES, paper_option_list
from llm_eval.prompts import (
    build_prompt,
    check_prompt_style,
    default_prompt_style,
    message_text,
    options_for,
    prompt_hash,
    prompt_version,
)
from llm_eval.sampling import (
    DEFAULT_FRACTION,
    DEFAULT_SEED,
    Question,
    harness_order,
    questions_from_prepared,
    read_ids_file,
    resolve_sample,
    select_sample,
    template_classes_of,
)
from llm_eval.scoring import Scored, parse_reply_detail, parsed_correct, summarize

#: Written first into every llm-eval output folder: proof that the folder is ours to resume and rewrite.
MARKER = "llm_eval_run.json"
CHARS_PER_TOKEN = 4  # English text, for planning estimates only


def claim_out(out: Path) -> None:
    """Refuse an --out holding someone else's files; mark the folder ours before writing anything else."""
    claim_output_dir(out, marker=MARKER, what="llm-eval output")
    if not (out / MARKER).is_file():
        atomic_write_json(out / MARKER, {"tool": "ecgqa llm-eval"})


@dataclass
class Sources:
    """Where each input's evidence comes from (only those of ``inputs`` are needed)."""

    inputs: tuple[str, ...] = ("classifier",)
    grounder: Grounder | None = None
    images: ImageCache | None = None
    features: FeatureCache | None = None
    image_detail: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)  # recorded in the report
    prompt_style: str | None = None  # None: the input's default (llm_eval.prompts.default_prompt_style)

    def check(self) -> None:
        for name, have in (("classifier", self.grounder), ("image", self.images), ("features", self.features)):
            if name in self.inputs and have is None:
                raise ValueError(f"--input {name} needs its source (for classifier: --grounding CKPT)")
        check_prompt_style(self.style, self.inputs)

    @property
    def style(self) -> str:
        return self.prompt_style or default_prompt_style(self.inputs)

    @property
    def label(self) -> str:
        """The model column's suffix: the input, plus the prompt style where it is not the input's default."""
        if self.style == default_prompt_style(self.inputs):
            return self.name
        return f"{self.name}, {self.style}"

    @property
    def name(self) -> str:
        return input_name(self.inputs)

    def expand(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.images.expand(messages) if self.images is not None else messages


@dataclass(frozen=True)
class PromptItem:
    question: Question
    messages: list[dict[str, Any]]  # images as sha256 references; Sources.expand gives what is sent
    hash: str

    @property
    def options(self) -> list[str]:
        return options_for(self.question)


def build_prompts(questions: list[Question], sources: Sources) -> list[PromptItem]:
    """Gather each question's evidence (each ECG rendered / measured / classified once) and build its prompt."""
    if sources.style != "ecgqa-v2":
        return _build_paper_prompts(questions, sources)
    interpretations = (
        sources.grounder.ground(questions) if sources.grounder and "classifier" in sources.inputs else None
    )
    if "features" in sources.inputs:
        sources.features.measure([e for q in questions for e in q.ecg_ids])
    items = []
    for q in questions:
        labels = ecg_labels(q)
        images = features = None
        if "image" in sources.inputs:
            images = [(label, sources.images.ref(e)) for label, e in zip(labels, q.ecg_ids, strict=False)]
        if "features" in sources.inputs:
            features = [(label, sources.features.text(e)) for label, e in zip(labels, q.ecg_ids, strict=False)]
        messages = build_prompt(
            q,
            interpretations[q.sample_id] if interpretations is not None else None,
            images=images,
            features=features,
            image_detail=sources.image_detail,
        )
        items.append(PromptItem(q, messages, prompt_hash(messages)))
    return items


def _build_paper_prompts(questions: list[Question], sources: Sources) -> list[PromptItem]:
    """``--prompt paper`` / ``paper-as-published``: the paper's blocks, planned in question order."""
    from llm_eval.paper import build_paper_prompt, plan_all

    if sources.grounder is None:
        raise ValueError(
            f"--prompt {sources.style} shows classifier findings: it needs --input classifier and --grounding CKPT"
        )
    plans = plan_all(questions, sources.style)
    sources.grounder.compute(b.reading for blocks in plans.values() for b in blocks)
    items = []
    for q in questions:
        blocks = [(b.heading, sources.grounder.findings_in_class_order(b.reading)) for b in plans[q.sample_id]]
        messages = build_paper_prompt(q, blocks)
        items.append(PromptItem(q, messages, prompt_hash(messages)))
    return items


def estimate(item: PromptItem, sources: Sources) -> dict[str, int]:
    """Characters, images and estimated prompt tokens of one prompt (text / 4 + each image's tile estimate)."""
    chars = len(message_text(item.messages))
    tokens = round(chars / CHARS_PER_TOKEN)
    n_images = 0
    for m in item.messages:
        for part in m["content"] if isinstance(m["content"], list) else []:
            if part.get("type") == "image_url":
                n_images += 1
                w, h = sources.images.sizes[part["image_url"]["url"].removeprefix("sha256:")]
                tokens += image_tokens(w, h, part["image_url"].get("detail", "auto"))
    return {"chars": chars, "images": n_images, "estimated_tokens": tokens}


def write_prompts(items: list[PromptItem], out: Path, sources: Sources, *, exact: bool = False) -> dict[str, Any]:
    """prompts.jsonl (atomic) and its size summary: what a run would send, before spending anything.

    ``exact``: messages exactly as sent (images as data URLs), for ``--dry-run``.
    """
    chars = tokens = images = 0
    with AtomicLines(out / "prompts.jsonl") as write:
        for it in items:
            e = estimate(it, sources)
            chars, tokens, images = chars + e["chars"], tokens + e["estimated_tokens"], images + e["images"]
            messages = sources.expand(it.messages) if exact else it.messages
            write.write_line(
                json.dumps(
                    {
                        "sample_id": it.question.sample_id,
                        "question_type": it.question.question_type,
                        "input": sources.name,
                        "prompt_hash": it.hash,
                        **e,
                        "messages": messages,
                    },
                    ensure_ascii=False,
                )
            )
    return {
        "n_prompts": len(items),
        "n_distinct_prompts": len({it.hash for it in items}),
        "chars": chars,
        "images": images,
        "estimated_prompt_tokens": tokens,
        "estimate_rule": "text characters / 4, plus per image OpenAI's tile rule (low: 85; high/auto: "
        "85 + 170 per 512 px tile after scaling to 2048 and shortest side 768)",
    }


def score_items(
    items: list[PromptItem],
    store: Any,
    model: str,
    errors: dict[str, str],
    input_label: str = "classifier",
    rule: str = "ecgqa-v2",
) -> list[tuple[Scored, dict]]:
    """Score every item from the store (never from memory: what is scored is what was persisted).

    ``rule``: the reply rule of the prompt style (``ecgqa.evaluation.replies``).
    """
    out = []
    for it in items:
        q = it.question
        # The paper styles parse against the options in the order the prompt listed them (the harness's
        # reply pattern tried them in that order); what is recorded as predicted keeps class order.
        offered = paper_option_list(q) if rule in PAPER_STYLES else it.options
        resp = store.get(model, it.hash)
        if resp is None:
            row = Scored(
                q.sample_id, q.question_type, q.attribute_type, [], list(q.answer), list(q.options), None, "failed"
            )
            reply, error = None, errors.get(it.hash, "no response stored (the run was interrupted)")
        else:
            parsed = parse_reply_detail(resp.reply, offered, rule)
            # A reply naming no option is wrong, also when the truth is "none" (as the paper scored it).
            row = Scored(
                q.sample_id,
                q.question_type,
                q.attribute_type,
                sorted(parsed.options, key=list(q.options).index),
                list(q.answer),
                list(q.options),
                parsed_correct(parsed, it.options, q.answer, rule),
                "ok" if parsed.matched else "no-match",
                resp.prompt_tokens,
                resp.completion_tokens,
            )
            reply, error = resp.reply, None
        transcript = {
            "sample_id": q.sample_id,
            "question": q.question,
            "question_type": q.question_type,
            "attribute_type": q.attribute_type,
            "ecg_id": list(q.ecg_ids),
            "model": model,
            "input": input_label,
            "prompt_style": rule,
            "prompt_hash": it.hash,
            "messages": it.messages,
            "options": offered,
            "reply": reply,
            "parsed": row.predicted,
            "true": row.true,
            "valid": row.valid,
            "correct": row.correct,
            "status": row.status,
            "error": error,
            "usage": {"prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens},
        }
        out.append((row, transcript))
    return out


def dry_run_line(summary: dict[str, Any], price_in: float | None, out: Path) -> str:
    """What ``--dry-run`` prints: prompts, characters, images, the token estimate and its input cost."""
    cost = (
        f"; input cost ~{summary['estimated_input_cost']:.4f} at {price_in:g} per 1M tokens"
        if price_in is not None
        else " (give --price-in for a cost estimate)"
    )
    return (
        f"dry run ({summary['input']}): {summary['n_prompts']} prompts ({summary['n_distinct_prompts']} distinct), "
        f"{summary['chars']} characters, {summary['images']} images, ~{summary['estimated_prompt_tokens']} prompt "
        f"tokens{cost}; no model was called. Every message as it would be sent: {out / 'prompts.jsonl'}; "
        f"the estimate: {out / 'dry_run.json'}"
    )


def _card(report: dict[str, Any], lines: list[dict[str, Any]], sources: Sources) -> dict[str, Any]:
    """The protocol card of an LLM run (``ecgqa.evaluation.protocol``)."""
    from ecgqa.evaluation.protocol import card, sample_card

    s = report.get("sampling") or {}
    kind = str(s.get("sample"))  # paper / draw / ids-file: the sampling names are the card's kinds
    extra = {k: s[k] for k in ("seed", "fraction") if k in s}
    scored = [int(x["sample_id"]) for x in lines if x["correct"] is not None]
    return card(
        version=str(report["version"]),
        variant=report.get("variant"),
        data_content_hash=report.get("data_content_hash"),
        split=str(report.get("split")),
        sample=sample_card(kind, scored, int(s.get("n_in_split") or len(lines)), **extra),
        per_question_type=report["per_question_type"],
        model=str(report["llm"]),
        input=sources.name,
        reply_rule=sources.style,
        prompt_style=sources.style,
        control=report.get("control"),
    )


def paper_columns(report: dict[str, Any]) -> str:
    """One line of EM in the paper's columns (``ecgqa.evaluation.metrics.paper_row``): S-Verify ... the macros."""
    from ecgqa.evaluation.metrics import paper_row

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f}"

    names = {"em_macro_single": "macro single-ECG (paper headline)", "em_macro_all": "macro all types"}
    return "EM % " + " | ".join(f"{names.get(k, k)} {pct(v)}" for k, v in paper_row(report).items())


def render_report_md(report: dict[str, Any]) -> str:
    """report.md's own section of an LLM run (after the shared page of ``ecgqa.evaluation.report_folder``)."""
    lines = ["## LLM run", ""]
    lines.append(
        f"- input: {report['input']}; prompt: {report.get('prompt_style', 'ecgqa-v2')} "
        f"(version {report['prompt_version']}); grounding: `{report['grounding']}`"
    )
    s = report.get("sampling") or {}
    if s.get("sample"):
        what = {
            "paper": "the published LLM sample of the ECG-QA paper",
            "draw": "the seeded stratified draw",
            "ids-file": "--ids-file",
        }.get(s["sample"], s["sample"])
        line = f"- sample: {what}, sha256 `{s.get('sha256')}`"
        if s["sample"] == "paper":
            line += (
                f"; {s.get('n_listed')} ids listed, {s.get('n_missing')} of them not in the prepared data "
                "(not evaluated)"
            )
        lines.append(line)
    lines.append(f"- request: {json.dumps(report['request'])}")
    lines.append(
        f"- questions: {report['n_questions']} sampled, {report['n']} scored, {report['n_failed']} failed "
        f"(not scored), {report['n_no_match']} replies matched no option (scored wrong)"
    )
    u = report["usage"]
    lines.append(f"- tokens: {u['prompt_tokens']} in, {u['completion_tokens']} out")
    if "cost" in report:
        c = report["cost"]
        lines.append(
            f"- estimated cost: {c['total']:.4f} (input {c['input']:.4f} at {c['price_in_per_1m']}/1M, "
            f"output {c['output']:.4f} at {c['price_out_per_1m']}/1M)"
        )
    if report["failed_sample_ids"]:
        lines.append(f"- failed sample ids (re-run the same command to retry them): {report['failed_sample_ids'][:50]}")
    return "\n".join(lines) + "\n"


#: Threads writing transcripts: each file is fsync'd, and fsyncs of different files overlap (the file system
#: commits them together): the run around 8,154 requests took ~5 s instead of 19-83 s (docs/scale.md).
TRANSCRIPT_THREADS = 16


def write_transcripts(out: Path, scored: list[tuple[Scored, dict]]) -> None:
    """``transcripts/<sample_id>.json``, each written atomically, by a pool of threads."""
    from concurrent.futures import ThreadPoolExecutor

    folder = out / "transcripts"
    folder.mkdir(parents=True, exist_ok=True)

    def write(pair: tuple[Scored, dict]) -> None:
        row, transcript = pair
        atomic_write(folder / f"{row.sample_id}.json", json.dumps(transcript, indent=1, ensure_ascii=False))

    with ThreadPoolExecutor(TRANSCRIPT_THREADS, thread_name_prefix="llm-eval-transcripts") as pool:
        for _ in pool.map(write, scored):  # re-raises the first failure (e.g. a full disk)
            pass


def evaluate(
    questions: list[Question],
    sources: Sources | Grounder,
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
    max_completion_tokens: int | None = None,
    omit_temperature: bool = False,
    price_in: float | None = None,
    price_out: float | None = None,
    store_path: str | Path | None = None,
    dry_run: bool = False,
    report_meta: dict[str, Any] | None = None,
    progress: bool = True,
    original_ecg_ids: dict[int, list[int]] | None = None,
) -> dict[str, Any]:
    """Evaluate already-selected questions; returns report.json's content (or the dry-run summary).

    ``sources`` may be a bare Grounder: the classifier input alone (the paper's protocol).
    ``original_ecg_ids`` (the shuffled-ECG control): sample id → the question's own ECG ids, written as
    ``ecg_id`` of each prediction line while the ECGs the model was shown go to ``shown_ecg_id``.
    """
    from llm_eval.client import ChatClient, api_key_from_env, ask_all, safe_url
    from llm_eval.store import ResponseStore

    check_request_options(
        concurrency=concurrency,
        timeout=timeout,
        max_retries=max_retries,
        max_tokens=max_tokens,
        max_completion_tokens=max_completion_tokens,
        price_in=price_in,
        price_out=price_out,
    )
    base_url = resolve_base_url(base_url)  # --base-url, else OPENAI_BASE_URL: recorded as used
    parse_base_url(base_url)  # credentials in the URL are refused before anything is written
    if isinstance(sources, Grounder):
        sources = Sources(("classifier",), grounder=sources)
    sources.check()
    out = Path(out)
    claim_out(out)
    t0 = time.time()
    items = build_prompts(questions, sources)
    summary = write_prompts(items, out, sources, exact=dry_run)
    work = {
        "grounding_forward_rows": sources.grounder.n_forward if sources.grounder else 0,
        "images_rendered": sources.images.n_rendered if sources.images else 0,
        "render_s": round(sources.images.render_s, 3) if sources.images else 0.0,
        "ecgs_measured": sources.features.n_measured if sources.features else 0,
        "measure_s": round(sources.features.measure_s, 3) if sources.features else 0.0,
    }

    def log(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr)

    if dry_run:
        summary.update({"dry_run": True, "input": sources.name, **work, "prompts": str(out / "prompts.jsonl")})
        if price_in is not None:
            summary["estimated_input_cost"] = round(summary["estimated_prompt_tokens"] * price_in / 1e6, 6)
        atomic_write_json(out / "dry_run.json", summary, indent=2)
        # The estimate is this command's result: printed (stdout, also under -q), not only written.
        print(dry_run_line(summary, price_in, out))
        return summary

    key = api_key if api_key is not None else api_key_from_env(api_key_env, base_url)
    store = ResponseStore(store_path or out / "responses.sqlite")
    stopped: FatalEndpointError | None = None
    try:
        distinct = {it.hash: it.messages for it in items}
        cached = sum(1 for h in distinct if store.has(model, h))
        log(
            f"{len(items)} questions, {len(distinct)} distinct prompts ({sources.name}): {cached} already answered "
            f"in {store.path}, {len(distinct) - cached} to ask {model}"
        )
        client = ChatClient(
            model,
            store,
            base_url=base_url,
            api_key=key,
            concurrency=concurrency,
            timeout=timeout,
            max_retries=max_retries,
            backoff_base=backoff_base,
            max_tokens=max_tokens,
            max_completion_tokens=max_completion_tokens,
            omit_temperature=omit_temperature,
            input_name=sources.name,
            expand=sources.expand,
        )
        try:
            outcomes = ask_all(client, distinct, progress=progress)
        except FatalEndpointError as e:
            # Record what was done (every committed reply is scored, the rest is failed), then stop.
            stopped, outcomes = e, {}
        errors = {h: o.error for h, o in outcomes.items() if not o.ok and o.error}
        if stopped is not None:
            errors = {h: str(stopped) for h in distinct}
        scored = score_items(items, store, model, errors, sources.name, sources.style)
    finally:
        store.close()

    write_transcripts(out, scored)
    lines = []
    for row, transcript in scored:
        real = (original_ecg_ids or {}).get(row.sample_id)
        extra = {"shown_ecg_id": transcript["ecg_id"]} if real is not None else {}
        lines.append(
            prediction_line(
                row.sample_id,
                row.question_type,
                row.attribute_type,
                row.predicted,
                row.true,
                row.valid,
                row.correct,
                question=transcript["question"],
                ecg_id=real if real is not None else transcript["ecg_id"],
                scores={},
                status=row.status,
                reply=transcript["reply"],
                **extra,
            )
        )

    request = {
        "temperature": None if omit_temperature else 0,
        "max_completion_tokens" if max_completion_tokens else "max_tokens": max_completion_tokens or max_tokens,
    }
    report: dict[str, Any] = {
        "kind": "llm",
        "model": f"{model} ({sources.label})",
        "llm": model,
        "input": sources.name,
        "base_url": safe_url(base_url),
    }
    report.update(report_meta or {})
    report.update(summarize([r for r, _ in scored], price_in, price_out))
    report.update(
        {
            "prompt_style": sources.style,
            "prompt_version": prompt_version(sources.style),
            "n_distinct_prompts": len(distinct),
            "request": request,
            "input_options": sources.options,
        }
    )
    report.setdefault("grounding", None)
    # The same nested EM block and charts as `ecgqa evaluate` and `ecgqa score` write (one writer).
    answered = [r for r, _ in scored if r.correct is not None]
    report["per_question_attribute_type"] = nested_em(
        np.array([bool(r.correct) for r in answered], dtype=bool),
        [r.question_type for r in answered],
        [r.attribute_type for r in answered],
    )
    report.setdefault("controls", None)
    if report.get("version"):
        report["protocol"] = _card(report, lines, sources)
    report["charts"] = []  # none without an answered question
    write_report(out, report, lines, render_report_md(report), charts=bool(answered))
    run_log = {
        "requests_sent": client.requests_sent,
        "prompts_answered_before": cached,
        **work,
        "replies_without_usable_usage": client.usage_unknown,
        "wall_s": round(time.time() - t0, 3),
    }
    if client.usage_unknown:
        print(
            f"note: {client.usage_unknown} replies from {client.endpoint} had a missing or malformed usage "
            "field; their tokens are unknown and counted as 0",
            file=sys.stderr,
        )
    atomic_write_json(out / "run_log.json", run_log, indent=2)
    if stopped is not None:
        raise stopped
    if not report["n"]:
        # An EM over no question is no result: say what happened instead (on stderr, also under -q).
        print(
            f"no question was answered: {report['n_failed']} of {report['n_questions']} failed "
            f"({client.requests_sent} requests sent); no EM. Re-run the same command to retry them "
            f"(details: {out / 'report.md'})",
            file=sys.stderr,
        )
        return report
    log(
        f"EM {100 * (report['em'] or 0):.1f} % on {report['n']} questions, "
        f"{report['n_failed']} failed; {client.requests_sent} requests sent; written: {out / 'report.md'}"
    )
    log(paper_columns(report))
    return report


def run_llm_eval(
    data: str | Path,
    grounding: str | Path | None,
    model: str,
    out: str | Path,
    *,
    inputs: str | tuple[str, ...] = ("classifier",),
    split: str = "test",
    fraction: float = DEFAULT_FRACTION,
    seed: int = DEFAULT_SEED,
    ids_file: str | Path | None = None,
    sample: str | None = None,
    prompt: str | None = None,
    device: str | None = None,
    batch_size: int = 64,
    grounding_cache: str | Path | None = None,
    image_detail: str = "auto",
    layout: str = "3x4",
    dpi: int = 100,
    progress: bool = True,
    controls: tuple[str, ...] = (),
    control_seed: int = 0,
    **kwargs: Any,
) -> dict[str, Any]:
    """The ``ecgqa llm-eval`` job on a prepared QA directory (and an upperbound checkpoint for ``classifier``).

    ``sample``: ``paper`` (the published list; the default on PTB-XL test) or ``draw`` (the seeded
    stratified draw; the default elsewhere). ``prompt``: a style of ``ecgqa.evaluation.replies.PROMPT_STYLES``
    (default: ``paper`` for ``--input classifier``, ``ecgqa-v2`` for other inputs). Without
    ``max_tokens``, ``paper-as-published`` sends no cap (as the paper's harness) and the others 256.
    """
    from ecgqa.data.prepared import PreparedData

    inputs = parse_inputs(inputs) if isinstance(inputs, str) else parse_inputs(",".join(inputs))
    style = prompt or default_prompt_style(inputs)
    check_prompt_style(style, inputs)  # before anything is read or written
    options = ("concurrency", "timeout", "max_retries", "max_tokens", "max_completion_tokens", "price_in", "price_out")
    check_request_options(**{k: kwargs[k] for k in options if k in kwargs})
    parse_base_url(resolve_base_url(kwargs.get("base_url")))
    kwargs.setdefault("max_tokens", None if style == "paper-as-published" else 256)
    out = Path(out)
    claim_output_dir(out, marker=MARKER, what="llm-eval output")  # refuse early; nothing is written before evaluate
    prepared = PreparedData(data)
    version = str(prepared.meta.get("version", ""))
    which = resolve_sample(sample, version, split, ids_file=ids_file is not None)
    questions = questions_from_prepared(prepared, split)
    ids = read_ids_file(ids_file) if ids_file else None
    selection = select_sample(questions, which, fraction, seed, ids, where=f"{data} ({split}): ")
    chosen = selection.questions
    if which == "paper" and not chosen:
        raise ValueError(
            f"none of the {selection.n_listed} ids of the published LLM sample is a question of {data} "
            f"({split}); use --sample draw (the seeded stratified draw) or --ids-file"
        )
    dropped = (prepared.meta.get("dropped") or {}).get(split) or []
    if selection.missing:
        # Never silently: the run evaluates the listed questions present, and says how many are not.
        print(
            f"note: {len(selection.missing)} of the {selection.n_listed} ids of the published LLM sample are not "
            f"in {data} ({split}) and are not evaluated (e.g. {list(selection.missing[:5])}); "
            "the report records them",
            file=sys.stderr,
        )
    if progress:
        print(f"{len(chosen)} of {len(questions)} {split} questions selected: {selection.describe()}", file=sys.stderr)
        if dropped and which == "draw":
            print(
                f"note: prepare dropped {len(dropped)} {split} samples (missing records), so this draw differs from "
                "the paper's sample ids",
                file=sys.stderr,
            )
    data_hash = str(prepared.meta.get("content_hash", ""))
    cache_root = Path(grounding_cache).parent if grounding_cache else out / "grounding_cache"
    rate = float(prepared.rate)

    def signal_by_id(ecg_id: int) -> Any:
        return prepared.signals[prepared.row_of(ecg_id)]

    sources = Sources(inputs, image_detail=image_detail, prompt_style=style)
    sampling: dict[str, Any] = {"sample": which, "sha256": selection.sha256}
    if which == "paper":
        sampling.update(
            {
                "n_listed": selection.n_listed,
                "n_missing": len(selection.missing),
                "missing_sample_ids": list(selection.missing),
            }
        )
    else:
        sampling.update({"fraction": fraction, "seed": seed} if which == "draw" else {"ids_file": str(ids_file)})
    sampling.update({"n_selected": len(chosen), "n_in_split": len(questions), "n_dropped_by_prepare": len(dropped)})
    if style == "paper-as-published":  # its readings depend on the questions asked before (defect D2)
        chosen, sampling["plan_order"] = harness_order(questions, selection, fraction, seed)
    meta: dict[str, Any] = {
        "grounding": None,
        "data": str(data),
        "version": version,
        "variant": prepared.meta.get("variant"),
        "data_content_hash": data_hash,
        "split": split,
        "sampling": sampling,
    }
    if style != "ecgqa-v2":
        known = template_classes_of(prepared.meta) is not None
        meta["option_order"] = "harness (template lists)" if known else "class index (template lists unknown)"
        if not known:
            print(
                f"note: {data} was not built from the answers_for_each_template.csv bundled with ecgqa (its sha256 "
                "differs or is not recorded), so the harness's option order is unknown: the options of "
                f"--prompt {style} are listed in class order (on PTB-XL, templates 6, 11, 18, 47-49, 61-63 differ)",
                file=sys.stderr,
            )
    if "classifier" in inputs:
        if grounding is None:
            raise ValueError("--input classifier needs --grounding CKPT (an upperbound checkpoint from `ecgqa train`)")
        sources.grounder, fp = _grounder(
            grounding, prepared, data_hash, grounding_cache, out, device, batch_size, progress
        )
        meta.update({"grounding": str(grounding), "grounding_fingerprint": fp})
    if "image" in inputs:
        if image_detail not in ("auto", "low", "high"):
            raise ValueError(f"--image-detail {image_detail!r}: expected auto, low or high")
        sources.images = ImageCache(cache_root, signal_by_id, rate, data_hash, layout=layout, dpi=dpi)
        sources.options.update({"layout": layout, "dpi": dpi, "image_detail": image_detail})
    if "features" in inputs:
        sources.features = FeatureCache(cache_root, signal_by_id, rate, data_hash)
    report = evaluate(chosen, sources, model, out, report_meta=meta, progress=progress, **kwargs)
    if controls and not kwargs.get("dry_run"):
        report = _run_controls(
            report, chosen, sources, model, out, prepared, meta, controls, control_seed, progress, kwargs
        )
    return report


def _run_controls(
    report: dict[str, Any],
    chosen: list[Question],
    sources: Sources,
    model: str,
    out: Path,
    prepared: Any,
    meta: dict[str, Any],
    controls: tuple[str, ...],
    seed: int,
    progress: bool,
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    """Ask the same questions again as controls (``OUT/controls/<name>/``: full llm-eval folders, resumable)
    and put the model beside them (``ecgqa.evaluation.controls.compare``), paired by sample."""
    from dataclasses import replace

    from ecgqa.evaluation.controls import CONTROL_HOW, QUESTION_ONLY, SHUFFLED_ECG, compare, shuffled_ecg_map

    unknown = sorted(set(controls) - {SHUFFLED_ECG, QUESTION_ONLY})
    if unknown:
        raise ValueError(f"--control {unknown}: expected {SHUFFLED_ECG} or {QUESTION_ONLY}")
    lines: dict[str, list[dict[str, Any]]] = {}
    how: dict[str, str] = {}
    for name in dict.fromkeys(controls):
        cmeta = {**meta, "control": name}
        if name == SHUFFLED_ECG:
            shown = shuffled_ecg_map([e for q in chosen for e in q.ecg_ids], seed)
            questions = [
                replace(
                    q,
                    ecg_ids=tuple(shown[e] for e in q.ecg_ids),
                    ecg_rows=None if q.ecg_rows is None else tuple(prepared.row_of(shown[e]) for e in q.ecg_ids),
                )
                for q in chosen
            ]
            csources, original = sources, {q.sample_id: list(q.ecg_ids) for q in chosen}
            how[name] = (
                f"the same model and input ({sources.name}), each question asked about another ECG (seed {seed})"
            )
        else:
            questions, original = chosen, None
            csources = Sources(("none",))
            how[name] = f"the same model given the question and its options only ({CONTROL_HOW[name]})"
        evaluate(
            questions,
            csources,
            model,
            out / CONTROLS_DIR / name,
            report_meta=cmeta,
            progress=progress,
            original_ecg_ids=original,
            **kwargs,
        )
        lines[name] = read_lines(out / CONTROLS_DIR / name / PREDICTIONS)
    report["controls"] = compare(read_lines(out / PREDICTIONS), lines, how=how, seed=seed)
    write_report(out, report, None, render_report_md(report))
    if progress:
        print(report["controls"]["verdict"]["sentence"], file=sys.stderr)
    return report


def _grounder(
    grounding: str | Path,
    prepared: Any,
    data_hash: str,
    grounding_cache: str | Path | None,
    out: Path,
    device: str | None,
    batch_size: int,
    progress: bool,
) -> tuple[Grounder, str]:
    """The classifier input: an upperbound checkpoint checked against the prepared data, with its score cache."""
    from ecgqa.checkpoint import check_compatible
    from ecgqa.predictor import load

    predictor = load(grounding, device=device)
    if predictor.task != "upperbound":
        raise ValueError(
            f"--grounding {grounding} is a {predictor.task!r} checkpoint; it must be an upperbound one "
            "(trained on a prepared upperbound directory)"
        )
    # The one rate/length policy (ecgqa/checkpoint.py): the QA data's signals must be what the classifier was
    # trained on; the task and classes differ by design (a grounding classifier read on QA questions).
    check_compatible(predictor, prepared, signal_only=True)
    fp = fingerprint(grounding, data_hash)
    cache = Path(grounding_cache) if grounding_cache else out / "grounding_cache" / f"{fp}.jsonl"
    return Grounder(
        predictor, prepared_signal_of(prepared), cache, fingerprint=fp, batch_size=batch_size, progress=progress
    ), fp
