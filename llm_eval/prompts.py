"""The one place a prompt is built (docs/benchmark.md, "The LLM evaluation protocol", step 3).

Three styles (``--prompt``, :data:`ecgqa.evaluation.replies.PROMPT_STYLES`): ``paper`` and ``paper-as-published``,
the ECG-QA paper's own wording for the classifier input (built in :mod:`llm_eval.paper`; ``paper`` is
the default for ``--input classifier``), and ``ecgqa-v2``, this toolkit's wording, built here and the
default (and only style) for every other input. Each style parses replies by its own rule.

An ``ecgqa-v2`` ``classifier`` prompt is: a short preface (these are a classifier's
interpretations with scores; a higher score means more certainty), one block per (ECG, lead subset)
reading, ``Question: …``, ``Options: …`` (the valid classes, plus ``None`` unless the question is a
verify type), and an instruction to answer only from the options without explanation. Options are
separated by ``"; "`` because some class names contain commas ("bigeminal pattern (unknown origin,
supraventricular, or ventricular)").

Other inputs (:mod:`llm_eval.inputs`) put their evidence before the question, in the order image,
features, classifier: each ECG's picture as an ``image_url`` part after a line naming it as the
question does ("The first ECG:", "The previous ECG:"), each ECG's measurements under the same name.
``none`` sends the question and the options only. A prompt with images is a list of content parts;
every other prompt is one string, and a classifier-only prompt is byte-identical to ``ecgqa-llm-v1``'s.

Change :data:`PROMPT_VERSION` whenever the wording changes: it is part of every report.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ecgqa.data.constants import LEADS
from ecgqa.evaluation.metrics import THRESHOLD
from ecgqa.evaluation.replies import NONE_OPTION, PROMPT_STYLES
from llm_eval.grounding import Interpretation
from llm_eval.sampling import Question

PROMPT_VERSION = "ecgqa-llm-v2"  # v2 added the image / features / none inputs; classifier text as in v1
OPTION_SEPARATOR = "; "

PREFACE = (
    "You are given automatic interpretations of {what}, produced by an ECG classifier. Each finding is "
    "listed as 'finding: score', where the score (0 to 1) is the classifier's confidence: the higher the "
    f"score, the more certain the finding. Only findings scored above {THRESHOLD} are listed."
)
IMAGE_PREFACE = (
    "You are given {what} as a standard 12-lead paper printout (25 mm/s, 10 mm/mV, 1 mV calibration "
    "pulse at the start of each row)."
)
FEATURES_PREFACE = (
    "Measurements computed automatically from {what} (times in ms, amplitudes in mV; 'not measurable' "
    "or 'n/a' where the method could not measure a value):"
)
NONE_PREFACE = "Answer the following question about {what}. No recording is available to you."
INSTRUCTION = (
    "Answer the question using only the options above. Reply with the matching option(s) exactly as written, "
    "separated by '; ' if more than one applies, and nothing else: no explanation."
)


#: The reply rule and wording of each ``--prompt`` style (:mod:`llm_eval.paper` for the paper's two).
DEFAULT_STYLE_CLASSIFIER = "paper"
DEFAULT_STYLE_OTHER = "ecgqa-v2"


def default_prompt_style(inputs: tuple[str, ...]) -> str:
    """``paper`` for the classifier input alone (the paper's protocol), ``ecgqa-v2`` for every other input."""
    return DEFAULT_STYLE_CLASSIFIER if tuple(inputs) == ("classifier",) else DEFAULT_STYLE_OTHER


def check_prompt_style(style: str, inputs: tuple[str, ...]) -> None:
    """The paper's wording is defined for classifier findings alone; other inputs use ``ecgqa-v2``."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"--prompt {style!r}: expected one of {', '.join(PROMPT_STYLES)}")
    if style != "ecgqa-v2" and tuple(inputs) != ("classifier",):
        raise ValueError(
            f"--prompt {style}: the paper's prompt shows classifier findings only, so it needs --input classifier "
            f"alone (this run: --input {','.join(inputs)}); use --prompt ecgqa-v2 for other inputs"
        )


def prompt_version(style: str) -> str:
    """What a report names the wording by (``PROMPT_VERSION`` for ``ecgqa-v2``)."""
    from llm_eval.paper import PROMPT_VERSIONS

    return PROMPT_VERSION if style == "ecgqa-v2" else PROMPT_VERSIONS[style]


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
        return f"{head}\n- no finding scored above {THRESHOLD}"
    return "\n".join([head, *(f"- {c}: {s:.3f}" for c, s in interp.findings)])


def build_prompt(
    q: Question,
    interpretations: list[Interpretation] | None = None,
    *,
    images: list[tuple[str, str]] | None = None,
    features: list[tuple[str, str]] | None = None,
    image_detail: str = "auto",
) -> list[dict[str, Any]]:
    """The chat messages sent for one question (a single user message).

    ``interpretations`` for the classifier input; ``images`` / ``features``: (ECG label, PNG data URL /
    measurement text) per ECG of the question, in question order. All None: the blind (``none``) prompt.
    """
    what = "two ECGs" if len(q.ecg_ids) == 2 else "an ECG"
    tail = [
        f"Question: {q.question}",
        f"Options: {OPTION_SEPARATOR.join(options_for(q))}",
        INSTRUCTION,
    ]
    evidence: list[str] = []
    if features is not None:
        evidence.append(FEATURES_PREFACE.format(what=what))
        evidence += [f"Measurements of the {label}:\n{text}" for label, text in features]
    if interpretations is not None:
        evidence += [PREFACE.format(what=what), "\n\n".join(block_text(i) for i in interpretations)]
    if images is None and features is None and interpretations is None:
        evidence.append(NONE_PREFACE.format(what=what))
    if images is None:
        return [{"role": "user", "content": "\n\n".join([*evidence, *tail])}]
    parts: list[dict[str, Any]] = [{"type": "text", "text": IMAGE_PREFACE.format(what=what)}]
    for label, url in images:
        parts.append({"type": "text", "text": f"The {label}:"})
        parts.append({"type": "image_url", "image_url": {"url": url, "detail": image_detail}})
    parts.append({"type": "text", "text": "\n\n".join([*evidence, *tail])})
    return [{"role": "user", "content": parts}]


def compact_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with each image's data URL replaced by ``sha256:<hex of the PNG bytes>``.

    What transcripts and the response store keep (a picture is ~100 kB; the hash names the cached PNG
    exactly). :func:`prompt_hash` is always taken over the full messages.
    """
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = [_compact_part(p) for p in content]
        out.append({**m, "content": content})
    return out


def _compact_part(part: dict[str, Any]) -> dict[str, Any]:
    if part.get("type") != "image_url":
        return part
    url = part["image_url"]["url"]
    if url.startswith("data:"):
        import base64

        png = base64.b64decode(url.split(",", 1)[1])
        url = "sha256:" + hashlib.sha256(png).hexdigest()
    return {**part, "image_url": {**part["image_url"], "url": url}}


def message_text(messages: list[dict[str, Any]]) -> str:
    """All the text of the messages (parts joined), for sizes and estimates."""
    texts = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            texts.append(content)
        else:
            texts += [p["text"] for p in content or [] if p.get("type") == "text"]
    return "\n".join(texts)


def prompt_hash(messages: list[dict[str, Any]]) -> str:
    """Stable identity of a prompt: the store key (with the model name)."""
    blob = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
