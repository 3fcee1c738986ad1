"""The ECG-QA paper's prompt (``--prompt paper`` and ``--prompt paper-as-published``).

The paper's LLM harness (ECG-QA ``llm_modeling/llm_modeling.py``, the version published with the
sample list) sends one user message per question::

    These are the interpretations of each ECG along with their scores. Higher score means more certainty ⏎
    about the interpretation.                   (one line in the prompt; wrapped here at ⏎)

    Interpretation of the ECG:
    <grounding class>: <score, 3 decimals>      (every class scored > 0.5, in class-index order)

    Question: <question>
    Options: <valid classes in class order, ", "-separated>[, None]

    Only answer based on the given Options without any explanation.

with one block per lead ("Interpretation of the ECG in lead I:" … "lead V6") for a "which leads"
question (its options are the twelve lead classes), one block on a lead subset ("… in lead V2:",
"… in inferior leads:") for a question naming a lead or a lead group, and "first"/"previous" and
"second"/"recent" blocks for comparison questions. ``, None`` is appended for non-verify questions;
a block with no finding is its heading followed by an empty line. Temperature 0.

Two styles share that wording (docs/benchmark.md lists each defect with its effect):

``paper-as-published``
    The harness's behaviour, defects included: (1) lead-name options never match a reply (a reply
    rule in :mod:`ecgqa.evaluation.replies`); (2) the per-lead readings of a "which leads" question zero the
    question's ECG in place, so only the first lead computed is read from the signal and every later
    lead from an all-zero ECG, and these readings are cached per (ECG, lead) for every later question
    of the run; (3) only the first lead phrase of a question is grounded, from a pattern knowing ten
    lead groups (so "anteroseptal leads" grounds on the whole ECG and "frontal and horizontal leads"
    on the chest leads); (4) the lead branches of a comparison question read its first ECG only,
    headed like a single ECG. The cache makes a prompt depend on the questions before it: they are
    planned in the order given (``ecgqa llm-eval``: the harness's manifest order where the seeded draw
    reproduces the questions, else ascending sample id; ``llm_eval.sampling.harness_order``).
``paper``
    The same wording and rules with those defects fixed: options matched case-insensitively (and
    longest first, whole phrases); each lead read from its own copy of the signal; every lead or lead
    group the question names grounded (every group the upperbound conversion knows, whole words); each
    ECG of a comparison question read on the named leads, headed "the first ECG in lead V2".

The harness's attribute exclusions ("myocardial infarction in" + match + " leads") never fire (the
match already ends in " leads"), so "… myocardial infarction in inferior leads?" is read on the
inferior leads. Both styles keep that: the upperbound classifier was trained with such locations moved
into the lead subset (docs/benchmark.md), so the subset reading is the one it was trained for.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ecgqa.data.constants import LEAD_GROUPS, LEADS
from ecgqa.data.leads import canonical_subset
from llm_eval.grounding import BLANK, LEAD_CLASSES, Reading
from llm_eval.sampling import Question

PAPER_STYLES = ("paper", "paper-as-published")
#: What each report calls the wording of each style (``--prompt``).
PROMPT_VERSIONS = {
    "paper": "ecg-qa-paper-fixed-v1",
    "paper-as-published": "ecg-qa-llm_modeling@3eabbce",
}

PAPER_PREFACE = (
    "These are the interpretations of each ECG along with their scores. "
    "Higher score means more certainty about the interpretation.\n\n"
)
PAPER_INSTRUCTION = "Only answer based on the given Options without any explanation."
PAPER_OPTION_SEPARATOR = ", "

# The harness's lead pattern: the first match only, case-sensitive, ten groups each after a space.
_UPSTREAM_GROUPS = (
    "limb",
    "chest",
    "anterior",
    "inferior",
    "septal",
    "lateral",
    "posterior",
    "frontal",
    "horizontal",
    "diffuse",
)
_UPSTREAM_LEAD_PATTERN = re.compile(
    r"(lead (III|II|I|aVR|aVL|aVF|V1|V2|V3|V4|V5|V6))|"
    r"( (" + "|".join(_UPSTREAM_GROUPS) + r") leads)"
)
_EXCLUDED_ATTRIBUTES = (
    "myocardial infarction in",
    "ischemic st-t changes in",
    "ischemic in",
    "subendocardial injury in",
)

# The fixed pattern: every lead group of the upperbound conversion, longest first, whole words.
_LEAD_ALT = "|".join(sorted((re.escape(x) for x in LEADS), key=len, reverse=True))
_GROUP_ALT = "|".join(
    sorted((re.escape(g) for g in LEAD_GROUPS if g not in LEADS and g != "entire"), key=len, reverse=True)
)
_FIXED_LEAD_PATTERN = re.compile(rf"\blead ({_LEAD_ALT})(?![A-Za-z0-9])|\b({_GROUP_ALT}) leads\b")


@dataclass(frozen=True)
class PaperBlock:
    """One interpretation section of a paper prompt: its heading and the reading shown under it."""

    heading: str
    reading: Reading


def is_paper_which_leads(q: Question) -> bool:
    """The harness's test: the question's valid classes are exactly the twelve lead classes."""
    return sorted(q.options) == sorted(LEAD_CLASSES)


def comparison_labels(q: Question) -> tuple[str, ...]:
    """The harness's names for a question's ECGs: "first ECG" in the question → first/…, else previous/…."""
    if len(q.ecg_ids) == 1:
        return ("ECG",)
    first = "first ECG" if "first ECG" in q.question else "previous ECG"
    second = "second ECG" if "second ECG" in q.question else "recent ECG"
    return (first, second)


def upstream_lead_phrase(question: str) -> tuple[str, str] | None:
    """(phrase as written, canonical subset) of the harness's first lead match, or None.

    Its exclusions are evaluated as written (and never fire: see the module docstring).
    """
    m = _UPSTREAM_LEAD_PATTERN.search(question)
    if m is None:
        return None
    lowered = question.lower()
    if any(prefix + m.group() + " leads" in lowered for prefix in _EXCLUDED_ATTRIBUTES):
        return None  # pragma: no cover - unreachable, kept as the harness wrote it
    phrase = m.group().strip()
    if m.group(2):
        return phrase, m.group(2)
    return phrase, canonical_subset(m.group(4))


def fixed_lead_phrases(question: str) -> list[tuple[str, str]]:
    """Every (phrase, canonical subset) a question names, in order, each subset once."""
    out: list[tuple[str, str]] = []
    for m in _FIXED_LEAD_PATTERN.finditer(question):
        subset = m.group(1) or canonical_subset(m.group(2).lower())
        if subset not in {s for _, s in out}:
            out.append((m.group(0), subset))
    return out


def _reading(q: Question, i: int, subset: str, label: str) -> Reading:
    row = q.ecg_rows[i] if q.ecg_rows is not None else None
    return Reading(i, q.ecg_ids[i], row, subset, label)


def _whole(q: Question) -> list[PaperBlock]:
    labels = comparison_labels(q)
    return [
        PaperBlock(f"Interpretation of the {labels[i]}:", _reading(q, i, "entire", labels[i]))
        for i in range(len(q.ecg_ids))
    ]


def plan_paper(q: Question) -> list[PaperBlock]:
    """The blocks of ``--prompt paper`` (defects fixed; no state shared between questions)."""
    labels = comparison_labels(q)
    if is_paper_which_leads(q):
        phrases = [(f"lead {lead}", lead) for lead in LEADS]
    else:
        phrases = fixed_lead_phrases(q.question)
    if not phrases:
        return _whole(q)
    return [
        PaperBlock(f"Interpretation of the {labels[i]} in {phrase}:", _reading(q, i, subset, labels[i]))
        for i in range(len(q.ecg_ids))
        for phrase, subset in phrases
    ]


class AsPublishedPlanner:
    """``--prompt paper-as-published``: the harness's blocks, with its run-wide reading buffer.

    The buffer maps the harness's keys (``"<ecg>_<lead index>"`` for a single lead, ``"<ecg>_<group>
    leads"`` for a group, the ECG id for the whole ECG) to the reading it holds. Plan questions in
    evaluation order: a reading cached by an earlier question is what a later one shows.
    """

    def __init__(self) -> None:
        self.buffer: dict[str, Reading] = {}

    def plan(self, q: Question) -> list[PaperBlock]:
        if is_paper_which_leads(q):
            blocks, zeroed = [], False
            for j, lead in enumerate(LEADS):
                key = f"{q.ecg_ids[0]}_{j}"
                if key not in self.buffer:
                    # The first lead computed reads its own lead; its in-place zeroing leaves every
                    # later one of this question an all-zero ECG.
                    self.buffer[key] = _reading(q, 0, BLANK if zeroed else lead, "ECG")
                    zeroed = True
                blocks.append(PaperBlock(f"Interpretation of the ECG in lead {lead}:", self.buffer[key]))
            return blocks
        found = upstream_lead_phrase(q.question)
        if found is not None:
            phrase, subset = found
            key = f"{q.ecg_ids[0]}_{LEADS.index(subset) if subset in LEADS else phrase}"
            if key not in self.buffer:
                self.buffer[key] = _reading(q, 0, subset, "ECG")
            return [PaperBlock(f"Interpretation of the ECG in {phrase}:", self.buffer[key])]
        return _whole(q)  # whole-ECG readings are never altered: the buffer would return the same


def plan_all(questions: Sequence[Question], style: str) -> dict[int, list[PaperBlock]]:
    """sample id → its blocks, planned in the order given."""
    if style == "paper":
        return {q.sample_id: plan_paper(q) for q in questions}
    if style == "paper-as-published":
        planner = AsPublishedPlanner()
        return {q.sample_id: planner.plan(q) for q in questions}
    raise ValueError(f"not a paper prompt style: {style!r}")


def block_text(heading: str, findings: Sequence[tuple[str, float]]) -> str:
    """A heading, its ``class: score`` lines (as given: class order) and the empty line after them."""
    return heading + "\n" + "\n".join(f"{c}: {s:.3f}" for c, s in findings) + "\n\n"


def paper_options(q: Question) -> str:
    return PAPER_OPTION_SEPARATOR.join(q.options) + ("" if q.is_verify else ", None")


def build_paper_prompt(q: Question, blocks: Sequence[tuple[str, Sequence[tuple[str, float]]]]) -> list[dict]:
    """The single user message: preface, blocks (heading, findings in class order), question, options."""
    text = PAPER_PREFACE + "".join(block_text(h, f) for h, f in blocks)
    text += f"Question: {q.question}\nOptions: {paper_options(q)}\n\n{PAPER_INSTRUCTION}"
    return [{"role": "user", "content": text}]
