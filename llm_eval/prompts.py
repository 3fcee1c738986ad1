"""The one place a prompt is built (ECGQA.md, "The LLM evaluation protocol", step 3).

A prompt is: a short preface (these are a classifier's interpretations with scores; a higher score
means more certainty), one block per (ECG, lead subset) reading, ``Question: …``, ``Options: …``
(the valid classes, plus ``None`` unless the question is a verify type), and an instruction to answer
only from the options without explanation. Options are separated by ``"; "`` because some class
names contain commas ("bigeminal pattern (unknown origin, supraventricular, or ventricular)").

Change :data:`PROMPT_VERSION` whenever the wording changes: it is part of every report.
"""

from __future__ import annotations

import hashlib
import json

from ecgqa.constants import LEADS
from llm_eval.grounding import Interpretation
from llm_eval.sampling import Question

PROMPT_VERSION = "ecgqa-llm-v1"
NONE_OPTION = "None"
OPTION_SEPARATOR = "; "

PREFACE = (
    "You are given automatic interpretations of {what}, produced by an ECG classifier. Each finding is "
    "listed as 'finding: score', where the score (0 to 1) is the classifier's confidence: the higher the "
    "score, the more certain the finding. Only findings scored above 0.5 are listed."
)
INSTRUCTION = (
    "Answer the question using only the options above. Reply with the matching option(s) exactly as written, "
    "separated by '; ' if more than one applies, and nothing else: no explanation."
)


def options_for(q: Question) -> list[str]:
    """What the model may answer: the valid classes, plus ``None`` for non-verify questions."""
    return list(q.options) if q.is_verify else [*q.options, NONE_OPTION]


def _leads_phrase(leads: tuple[str, ...]) -> str:
    if len(leads) == len(LEADS):
        return "all 12 leads"
    if len(leads) == 1:
        return f"lead {leads[0]} only"
    return f"leads {', '.join(leads)} only"


def block_text(interp: Interpretation) -> str:
    """``Interpretation of the first ECG (leads II, III, aVF only):`` and its findings, one per line."""
    b = interp.reading
    head = f"Interpretation of the {b.ecg_label} ({_leads_phrase(b.leads)}):"
    if not interp.findings:
        return f"{head}\n- no finding scored above 0.5"
    return "\n".join([head, *(f"- {c}: {s:.3f}" for c, s in interp.findings)])


def build_prompt(q: Question, interpretations: list[Interpretation]) -> list[dict[str, str]]:
    """The chat messages sent for one question (a single user message)."""
    what = "two ECGs" if len(q.ecg_ids) == 2 else "an ECG"
    parts = [
        PREFACE.format(what=what),
        "\n\n".join(block_text(i) for i in interpretations),
        f"Question: {q.question}",
        f"Options: {OPTION_SEPARATOR.join(options_for(q))}",
        INSTRUCTION,
    ]
    return [{"role": "user", "content": "\n\n".join(parts)}]


def prompt_hash(messages: list[dict[str, str]]) -> str:
    """Stable identity of a prompt: the store key (with the model name)."""
    blob = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
