"""Lead subsets: the keep-masks of lead groups, and finding lead names / lead groups in text.

One definition for everything that turns words into leads, used by the upperbound label conversion
(``ecgqa/data/upperbound_labels.py``), the training loaders (``ecgqa/data/torch_datasets.py``), ``ecgqa evaluate`` and
the LLM grounding (``llm_eval/grounding.py``), so that a classifier is trained and read on the same
leads. The names themselves (``LEADS``, ``LEAD_GROUPS``) stay in ``ecgqa/data/constants.py``.

Three readings of text, for three questions:

- :func:`lead_subsets_in`: every lead subset a question mentions, in order ("… in lead V2",
  "… in inferior leads", "Is the V5 lead noisy?"), as canonical names (grounding plans its blocks);
- :func:`question_lead_group`: the one subset a single-ECG template question is *about*
  ("… in lead aVL", "… in limb leads"), as the label conversion needs it;
- :func:`split_lead_location` / :func:`trailing_lead_group`: an attribute or class name that ends in
  "in (the) G leads" ("myocardial infarction in anterior leads", "Broad R wave in lateral leads").

Lead names are case-sensitive ("I" is a lead, "i" is not); the words around them are not.
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np

from ecgqa.data.constants import LEAD_GROUPS, LEADS


def lead_mask(leads: tuple[str, ...] | list[str]) -> list[bool]:
    """A 12-element keep-mask in LEADS order for a list of lead names."""
    unknown = set(leads) - set(LEADS)
    if unknown:
        raise ValueError(f"unknown lead names {sorted(unknown)}; expected names from {LEADS}")
    return [lead in leads for lead in LEADS]


@cache
def _group_mask(group: str) -> tuple[bool, ...]:
    if group not in LEAD_GROUPS:
        raise KeyError(f"unknown lead group {group!r}; expected one of {list(LEAD_GROUPS)}")
    return tuple(lead_mask(LEAD_GROUPS[group]))


def group_mask(group: str) -> np.ndarray:
    """Keep-mask (12,) bool in LEADS order for a key of LEAD_GROUPS (a fresh array each call)."""
    return np.array(_group_mask(group), dtype=bool)


def group_leads(group: str) -> tuple[str, ...]:
    """The leads of a LEAD_GROUPS key, in LEADS order."""
    keep = _group_mask(group)
    return tuple(lead for lead, k in zip(LEADS, keep, strict=False) if k)


def _canonical_subsets() -> dict[tuple[str, ...], str]:
    # Several group names cover the same leads (frontal = limb, diffuse = entire): the first name wins.
    out: dict[tuple[str, ...], str] = {}
    for name in LEAD_GROUPS:
        out.setdefault(group_leads(name), name)
    return out


def canonical_subset(name: str) -> str:
    """The first LEAD_GROUPS name covering the same leads as ``name`` ("diffuse" → "entire")."""
    if name not in LEAD_GROUPS:
        raise ValueError(f"unknown lead subset {name!r}; expected a key of ecgqa.data.constants.LEAD_GROUPS")
    return _canonical_subsets()[group_leads(name)]


_LEAD_ALT = "|".join(sorted((re.escape(lead) for lead in LEADS), key=len, reverse=True))
_GROUP_ALT = "|".join(
    sorted((re.escape(g) for g in LEAD_GROUPS if g not in LEADS and g != "entire"), key=len, reverse=True)
)
# "lead V2", "leads V1 and V2", "V2 lead"; lead names are case-sensitive ("I" is not "i").
_SINGLE = re.compile(rf"(?i:\bleads?\s+)({_LEAD_ALT})\b|\b({_LEAD_ALT})(?i:\s+leads?\b)")
_GROUP = re.compile(rf"\b({_GROUP_ALT})\s+leads?\b", re.IGNORECASE)
#: "... in lead aVL", "... in limb leads": the subset a template question is about.
_QUESTION_LEAD = re.compile(rf"\bin (?:lead ({_LEAD_ALT})\b|(limb|chest) leads\b)")
#: "X in (the) G leads" at the end of an attribute or class name.
_LOCATED = re.compile(r"^(.+?) in (?:the )?(.+?) leads$", re.IGNORECASE)


def lead_subsets_in(text: str) -> list[str]:
    """Canonical lead subsets a text names, in order of first mention ([] = none named)."""
    found: list[tuple[int, str]] = []
    for m in _GROUP.finditer(text):
        found.append((m.start(), canonical_subset(m.group(1).lower())))
    for m in _SINGLE.finditer(text):
        found.append((m.start(), m.group(1) or m.group(2)))
    out: list[str] = []
    for _, name in sorted(found):
        if name not in out:
            out.append(name)
    return out


def question_lead_group(question: str) -> str | None:
    """The lead subset a template question is about ("… in lead V2" → "V2", "… in limb leads" → "limb"), or None."""
    m = _QUESTION_LEAD.search(question)
    if m is None:
        return None
    return m.group(1) or m.group(2)


def split_lead_location(name: str) -> tuple[str, str] | None:
    """("myocardial infarction in anterior leads") → ("myocardial infarction", "anterior"); None without "in … leads".

    The location is returned as written (it may not be a LEAD_GROUPS key; the caller decides).
    """
    m = _LOCATED.match(name)
    return None if m is None else (m.group(1), m.group(2))


def trailing_lead_group(name: str) -> str:
    """The lead subset a class name carries in itself, as upstream's conversion reads it; "entire" if none.

    "Broad R wave in lateral leads" → "lateral", "QRS changes in anteroseptal leads" → "anteroseptal".
    A group covering all twelve leads ("frontal and horizontal", "diffuse") is "entire", as upstream
    maps it (fairseq-signals ``preprocess_ecgqa_for_classification.parse_lead_position``).
    """
    got = split_lead_location(name)
    if got is None or got[1].lower() not in LEAD_GROUPS:
        return "entire"
    group = got[1].lower()
    return "entire" if all(_group_mask(group)) else group
