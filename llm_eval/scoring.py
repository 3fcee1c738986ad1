"""Exact match, usage and cost of an LLM run (docs/benchmark.md, "The LLM evaluation protocol", steps 4–5).

Reply parsing lives in :mod:`ecgqa.evaluation.replies` (shared with ``ecgqa score``) and is re-exported here: one
rule per prompt style. A reply that matches no option is scored wrong, also when the true answer is
``none`` (the paper's harness compared it with ``{"none"}``), and is counted in ``n_no_match``. Exact
match compares the parsed set with the true set over the question's options, as for the trained models.
Failed requests are not scored: they are counted and listed separately.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ecgqa.evaluation.replies import (
    PROMPT_STYLES,
    ParsedReply,
    parse_reply,
    parse_reply_detail,
    parsed_correct,
    reply_correct,
)

__all__ = [
    "PROMPT_STYLES",
    "ParsedReply",
    "Scored",
    "cost",
    "parse_reply",
    "parse_reply_detail",
    "parsed_correct",
    "reply_correct",
    "summarize",
]


@dataclass
class Scored:
    """One evaluated question, as written to its transcript and to predictions.jsonl."""

    sample_id: int
    question_type: str
    attribute_type: str
    predicted: list[str]
    true: list[str]
    valid: list[str]
    correct: bool | None  # None: the request failed, not scored
    status: str  # "ok", "no-match" or "failed"
    prompt_tokens: int = 0
    completion_tokens: int = 0


def cost(prompt_tokens: int, completion_tokens: int, price_in: float | None, price_out: float | None) -> dict | None:
    """Estimated cost in the price's currency from per-1M-token prices; None when no price is given."""
    if price_in is None and price_out is None:
        return None
    c_in = prompt_tokens * (price_in or 0.0) / 1e6
    c_out = completion_tokens * (price_out or 0.0) / 1e6
    return {
        "input": round(c_in, 6),
        "output": round(c_out, 6),
        "total": round(c_in + c_out, 6),
        "price_in_per_1m": price_in,
        "price_out_per_1m": price_out,
    }


def summarize(rows: list[Scored], price_in: float | None = None, price_out: float | None = None) -> dict[str, Any]:
    """The metric part of report.json: EM overall, per type, macro over question types, usage, cost."""
    from ecgqa.evaluation.metrics import em_summary

    scored = [r for r in rows if r.correct is not None]
    failed = [r for r in rows if r.correct is None]
    prompt_tokens = sum(r.prompt_tokens for r in rows)
    completion_tokens = sum(r.completion_tokens for r in rows)
    # The same EM block as `ecgqa evaluate` (one definition of overall / macro / per-type EM).
    out: dict[str, Any] = em_summary(
        [bool(r.correct) for r in scored], [r.question_type for r in scored], [r.attribute_type for r in scored]
    )
    if not scored:  # nothing answered yet: NaN is not JSON
        out["em"] = out["em_macro_question_type"] = None
    out.update(
        {
            "n_questions": len(rows),
            "n_failed": len(failed),
            "failed_sample_ids": sorted(r.sample_id for r in failed),
            "n_no_match": sum(r.status == "no-match" for r in scored),
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )
    c = cost(prompt_tokens, completion_tokens, price_in, price_out)
    if c is not None:
        out["cost"] = c
    return out
