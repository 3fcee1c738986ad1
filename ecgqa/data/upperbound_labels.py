"""Single template questions → upperbound attribute-classification labels.

See docs/benchmark.md, the attribute-classifier section.

A question such as "Does this ECG show static noise in lead aVL?" answered "no" becomes the label
(lead subset ``aVL``, attribute ``static noise``, 0). Attributes that carry a location
("myocardial infarction in anterior leads") collapse to their base attribute and move the location
into the lead subset. Lead subsets are keys of :data:`ecgqa.data.constants.LEAD_GROUPS`; the regexes that
find them in questions and names are ``ecgqa/data/leads.py`` (shared with the LLM grounding).

(This module converts questions into labels; the upperbound *classifiers* are ``ecgqa/models/se_wrn.py``
and ``ecgqa/models/resnet_attn.py``.)

Grounding classes whose name carries a lead group ("Broad R wave in lateral leads", "QRS changes in
anteroseptal leads", both MIMIC-IV-ECG) keep their name and are labelled on that lead subset, as the
reference conversion does (fairseq-signals ``preprocess_ecgqa_for_classification.py``,
``parse_lead_position``), so training and LLM grounding read them on the same leads.

MIMIC located myocardial infarction (a deliberate choice, documented): "myocardial infarction in
anterior leads" collapses to the grounding class named exactly as the collapsed attribute,
"Myocardial infarction" (MIMIC class 12), on the anterior subset. The reference code matches the
capitalised name but writes the lowercase "myocardial infarction" (MIMIC class 105, the name of the
diagnostic *superclass*), so its class-105 labels mix located MI into the superclass. We keep class 12:
the LLM grounding reads the same class on the same subset, so the project is self-consistent, but
per-class numbers for MIMIC classes 12 and 105 are not comparable with upstream checkpoints.

The conversion has two steps, so that it streams over a whole release:

1. :func:`convert` turns one QA sample into labels (pure, no state);
2. :class:`UpperboundBuilder` collects the labels of a split, keeps each (ECG, lead subset,
   attribute) once (a conflicting duplicate resolves to 0, as upstream resolved its
   "myocardial infarction" with/without likelihood clash), and yields one row per
   (source sample, ECG, lead subset) with every class that row labels.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecgqa.data.constants import CHEST, LEAD_GROUPS, LEADS, LIMB
from ecgqa.data.leads import question_lead_group, split_lead_location, trailing_lead_group
from ecgqa.data.release import read_class_csv
from ecgqa.sample import paths as sample_paths

#: Without a grounding class list, these (PTB-XL) attributes lose their lead location to the lead subset.
LOCATED_BASES = ("myocardial infarction", "ischemic", "subendocardial injury")
#: "What leads ..." questions about these voltage attributes are labelled per limb/chest group, not per lead.
VOLTAGE_ATTRIBUTES = (
    "voltage criteria (qrs) for left ventricular hypertrophy",
    "low qrs voltages in the frontal and horizontal leads",
    "high qrs voltage",
)
#: Query options that no verify question asks about, so they have no upperbound class.
UNGROUNDED_OPTIONS = ("unknown stage of myocardial infarction", "none of myocardial infarction")
EXCLUDING = "excluding uncertain symptoms"
INCLUDING = "including uncertain symptoms"


class UpperboundError(ValueError):
    """A sample cannot be converted; the message names it."""


@dataclass(frozen=True)
class Label:
    lead_group: str  # key of LEAD_GROUPS
    attribute: str  # grounding class name
    value: int  # 1 yes, 0 no


def read_grounding_classes(path: str | Path) -> list[str]:
    """The grounding classes (``grounding_class.csv``, as shipped with ECG-QA's LLM experiments), in index order."""
    return read_class_csv(path)


def bundled_grounding_classes(version: str) -> Path:
    """The grounding class list shipped with the bundled sample for ``version`` (83 PTB-XL / 164 MIMIC)."""
    return sample_paths().grounding / version / "grounding_class.csv"


def split_location(attribute: str, classes: Collection[str] | None = None) -> tuple[str, str]:
    """("myocardial infarction in anterior leads") → ("myocardial infarction", "anterior"); else (attribute, "entire").

    With ``classes`` (the grounding classes) an attribute that is itself a class keeps its name, on the
    lead subset its name ends in ("Broad R wave in lateral leads" → lateral; "low qrs voltages in the
    frontal and horizontal leads" → entire, see :func:`ecgqa.data.leads.trailing_lead_group`), and any other
    "X in G leads" whose G is a lead group collapses to X. Without it only :data:`LOCATED_BASES` collapse.
    """
    if classes is not None and attribute in classes:
        return attribute, trailing_lead_group(attribute)
    located = split_lead_location(attribute)
    if located is None:
        return attribute, "entire"
    base, where = located
    if classes is None and base.lower() not in LOCATED_BASES:
        return attribute, "entire"
    if where not in LEAD_GROUPS:
        if classes is None:
            raise UpperboundError(
                f"attribute {attribute!r}: unknown lead location {where!r}; expected one of {list(LEAD_GROUPS)}"
            )
        return attribute, "entire"
    return base, where


def _range_head(name: str) -> str:
    """ "within the normal range of qt interval" → "within the normal range"."""
    return name.split(" of ")[0]


def _feature(name: str) -> str:
    """ "below the normal range of pr interval" → "pr interval"."""
    return name.split(" of ", 1)[1] if " of " in name else name


def _with_answered(attrs: list[str], answer: list[str]) -> list[str]:
    """The attributes a query mentions, then any it answers without mentioning ("mention or answer")."""
    return attrs + [a for a in answer if a not in attrs and a != "none" and a not in UNGROUNDED_OPTIONS]


def _located(attrs: list[str], values: list[int], group: str | None, classes: Collection[str] | None) -> list[Label]:
    out = []
    for attr, value in zip(attrs, values, strict=False):
        base, where = split_location(attr, classes)
        out.append(Label(group if group is not None else where, base, value))
    return out


def _uncertain(question: str, attrs: list[str], answer: list[str]) -> tuple[list[str], list[int]] | None:
    """The "excluding/including uncertain symptoms" templates: only their certain half is a label."""
    if EXCLUDING in question:  # answered options are certainly present
        present = sorted(set(answer) - {"none"})
        return present, [1] * len(present)
    if INCLUDING in question:  # options not answered are certainly absent
        absent = [a for a in attrs if a not in set(answer)]
        return absent, [0] * len(absent)
    return None


def convert(sample: dict[str, Any], split: str, classes: Collection[str] | None = None) -> list[Label]:
    """Upperbound labels of one *template* QA sample (empty for comparison questions and skipped cases).

    Verify questions give one label ("not sure" answers are skipped); choose and query questions give
    one label per attribute they mention or answer, in train/valid only (the test split keeps verify only).
    ``classes`` (the grounding classes) decides which located attributes collapse (see :func:`split_location`).
    """
    qtype = sample["question_type"]
    if not qtype.startswith("single"):
        return []
    kind = qtype.rsplit("-", 1)[1]
    question = sample["question"]
    answer = list(sample["answer"])
    attrs = list(sample.get("attribute") or [])
    if not attrs or not answer:
        raise UpperboundError(f"sample {sample.get('sample_id')}: single question without attribute or answer")
    group = question_lead_group(question)

    if kind == "verify":
        if answer[0] == "not sure":
            return []
        yes = answer[0] == "yes"
        if EXCLUDING in question and not yes:
            return []  # "no" may still mean "uncertainly present"
        if INCLUDING in question and yes:
            return []  # "yes" may mean "only uncertainly present"
        if " the normal range" in question:
            return [Label(group or "entire", attrs[0], int(yes))]
        return _located(attrs[:1], [int(yes)], group, classes)

    if split == "test":
        return []
    if kind == "choose":
        got = _uncertain(question, attrs, answer)
        if got is not None:
            return _located(*got, group, classes)
        if " the normal range" in question:
            heads = set(answer)
            return _located(attrs, [int(_range_head(a) in heads) for a in attrs], group, classes)
        return _located(attrs, [int(a in answer) for a in attrs], group, classes)

    if kind != "query":
        raise UpperboundError(f"sample {sample.get('sample_id')}: unknown question type {qtype!r}")
    if group is not None:
        attrs = _with_answered(attrs, answer)
        return _located(attrs, [int(a in answer) for a in attrs], group, classes)
    if question.startswith("What leads") or "which leads" in question.lower():
        attr = attrs[0]
        if attr in VOLTAGE_ATTRIBUTES:
            groups = {"limb": LIMB, "chest": CHEST}
            return [Label(g, attr, int(all(f"lead {lead}" in answer for lead in leads))) for g, leads in groups.items()]
        return [Label(lead, attr, int(f"lead {lead}" in answer)) for lead in LEADS]
    got = _uncertain(question, attrs, answer)
    if got is not None:
        return _located(*got, None, classes)
    if answer and answer[0] in UNGROUNDED_OPTIONS:
        return []
    attrs = [a for a in attrs if a not in UNGROUNDED_OPTIONS]
    if question.startswith("What range"):
        heads = set(answer)
        values = [int(_range_head(a) in heads) for a in attrs]
    elif question.startswith("What numeric features"):
        values = [int(_feature(a) in answer) for a in attrs]
    else:
        attrs = _with_answered(attrs, answer)
        values = [int(a in answer) for a in attrs]
    return _located(attrs, values, None, classes)


@dataclass
class UpperboundBuilder:
    """Collects the labels of one split and yields deduplicated rows (see the module docstring).

    Memory holds one small tuple per distinct (ECG, lead subset, class), never signals.
    """

    grounding_classes: list[str]
    split: str
    _index: dict[str, int] = field(init=False)
    _labels: dict[tuple[int, str, int], tuple[int, int]] = field(
        init=False, default_factory=dict
    )  # key → (value, owner)
    _owner_info: dict[int, tuple[str, str]] = field(init=False, default_factory=dict)
    #: one shared (question_type, attribute_type) tuple per kind: a sample's own strings would stay alive per label
    _kinds: dict[tuple[str, str], tuple[str, str]] = field(init=False, default_factory=dict)
    stats: Counter = field(init=False, default_factory=Counter)
    unknown_attributes: Counter = field(init=False, default_factory=Counter)

    def __post_init__(self) -> None:
        self._index = {c: i for i, c in enumerate(self.grounding_classes)}

    def add(self, sample: dict[str, Any]) -> None:
        sid = int(sample["sample_id"])
        labels = convert(sample, self.split, self._index)
        if not labels:
            return
        ecg_id = int(sample["ecg_id"][0])
        self.stats["source_samples"] += 1
        for label in labels:
            cls = self._index.get(label.attribute)
            if cls is None:
                self.unknown_attributes[label.attribute] += 1
                self.stats["labels_not_grounding_class"] += 1
                continue
            key = (ecg_id, sys.intern(label.lead_group), cls)  # a handful of distinct lead groups: one string each
            seen = self._labels.get(key)
            if seen is None:
                self._labels[key] = (label.value, sid)
                kind = (sample["question_type"], sample["attribute_type"])
                self._owner_info.setdefault(sid, self._kinds.setdefault(kind, kind))
            elif seen[0] != label.value:
                self.stats["labels_conflicting"] += 1
                self._labels[key] = (0, seen[1])  # a clash (e.g. MI with and without likelihood) resolves to "no"
            else:
                self.stats["labels_duplicate"] += 1

    def ecg_ids(self) -> set[int]:
        return {k[0] for k in self._labels}

    def rows(self) -> Iterator[dict[str, Any]]:
        """One row per (source sample, ECG, lead subset), ordered by sample id then lead subset."""
        grouped: dict[tuple[int, int, str], list[tuple[int, int]]] = {}
        for (ecg_id, group, cls), (value, owner) in self._labels.items():
            grouped.setdefault((owner, ecg_id, group), []).append((cls, value))
        for owner, ecg_id, group in sorted(grouped, key=lambda k: (k[0], k[2], k[1])):
            pairs = sorted(grouped[(owner, ecg_id, group)])
            qtype, atype = self._owner_info[owner]
            yield {
                "sample_id": owner,
                "ecg_id": [ecg_id],
                "lead_group": group,
                "label_classes": [c for c, _ in pairs],
                "label_values": [v for _, v in pairs],
                "question_type": qtype,
                "attribute_type": atype,
            }
