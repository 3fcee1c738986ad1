"""The ECG-QA question templates as package data, and the slot engine that fills them.

``data/templates.psv`` holds the 70 template texts (``${scp}``, ``${lead}``, ``${noise1}`` … slots; sources
in ``data/SOURCE.md``); ``data/<version>_answers_for_each_template.csv`` the release's option list of each
template (70 for PTB-XL, 60 for MIMIC-IV-ECG, which has no 28–33 and 35–38). Filling is plain string
replacement, as the release's texts show; two rules come from the release:

- ``${lead}`` is "lead X" (``lead aVF``); for the voltage codes (VCLVH, LVOLT, HVOLT) the verify template 17
  asks "limb leads" / "chest leads" instead of single leads (:data:`VOLTAGE_CLASSES`).
- a choose question lists its two options in a random order; the order is swapped with
  :func:`swap_words`, which replaces each option by the other everywhere in the text. When one option
  contains the other (template 37: "extrasystoles" / "ventricular extrasystoles") that doubles a word:
  "…, ventricular extrasystoles or ventricular ventricular extrasystoles?" — the release's own quirk,
  reproduced. The sample's ``attribute`` list gives the true order.
"""

from __future__ import annotations

import ast
import csv
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ecgqa.data.constants import LEADS

DATA = Path(__file__).resolve().parent / "data"
VERSIONS = ("ptbxl", "mimic-iv-ecg")
LEAD_NAMES = tuple(f"lead {x}" for x in LEADS)
#: Form statements whose lead verify question (template 17) asks about limb / chest leads as a whole.
VOLTAGE_CLASSES = (
    "voltage criteria (qrs) for left ventricular hypertrophy",
    "low qrs voltages in the frontal and horizontal leads",
    "high qrs voltage",
)
LEAD_GROUP_NAMES = ("limb leads", "chest leads")
NONE = "none"
_SLOT = re.compile(r"\$\{([a-z_]+?)([12]?)\}")


class TemplateError(ValueError):
    """A template file that cannot be used, or a slot value that does not fit."""


@dataclass(frozen=True)
class Template:
    """One ECG-QA template: id, ``question_type`` (``single-verify`` …), attribute type, text, options."""

    id: int
    question_type: str
    attribute_type: str
    text: str
    options: tuple[str, ...]

    @property
    def scope(self) -> str:
        """``single`` / ``comparison_consecutive`` / ``comparison_irrelevant``."""
        return self.question_type.split("-")[0]

    @property
    def kind(self) -> str:
        """``verify`` / ``choose`` / ``query``."""
        return self.question_type.split("-")[1]

    @property
    def n_ecgs(self) -> int:
        return 1 if self.scope == "single" else 2

    @property
    def slots(self) -> tuple[str, ...]:
        """Slot names without their 1/2 suffix, ``lead`` last if present: ``("noise", "lead")``."""
        names = list(dict.fromkeys(m.group(1) for m in _SLOT.finditer(self.text)))
        if "lead" in names:
            names.remove("lead")
            names.append("lead")
        return tuple(names)

    @property
    def has_lead(self) -> bool:
        return "lead" in self.slots

    def fill(self, values: tuple[str, ...] = (), lead: str | None = None, text: str | None = None) -> str:
        """The question text: ``values`` fill :attr:`value_tokens` in order; ``lead`` fills ``${lead}``.

        ``text``: a paraphrase pattern of this template to fill instead of the template text.
        """
        text = self.text if text is None else text
        tokens = self.value_tokens
        if len(values) != len(tokens):
            raise TemplateError(f"template {self.id}: slots {tokens} need {len(tokens)} values, got {list(values)}")
        for token, v in sorted(zip(tokens, values, strict=True), key=lambda p: -len(p[0])):
            text = text.replace(token, v)
        if self.has_lead:
            if lead is None:
                raise TemplateError(f"template {self.id}: ${{lead}} needs a lead")
            text = text.replace("${lead}", lead)
        if "${" in text:
            raise TemplateError(f"template {self.id}: unfilled slot left in {text!r}")
        return text

    @property
    def tokens(self) -> tuple[str, ...]:
        """Every slot as it appears in the text, in order, repeats included (one per :meth:`pattern` group)."""
        return tuple(m.group(0) for m in _SLOT.finditer(self.text))

    @property
    def value_tokens(self) -> tuple[str, ...]:
        """The attribute slots as they appear in the text, in order: ``("${feature}", "${range1}", "${range2}")``."""
        return tuple(dict.fromkeys(m.group(0) for m in _SLOT.finditer(self.text) if m.group(1) != "lead"))

    def pattern(self) -> re.Pattern[str]:
        """A regex matching this template's filled texts (groups: slot values in text order)."""
        parts = _SLOT.split(self.text)
        out = []
        for i in range(0, len(parts), 3):
            out.append(re.escape(parts[i]))
            if i + 1 < len(parts):
                out.append("(.+?)")
        return re.compile("".join(out) + r"\Z")


def swap_words(text: str, a: str, b: str) -> str:
    """Every ``a`` becomes ``b`` and every ``b`` becomes ``a`` (the release's option swap, quirk included).

    Split on ``a``; inside the pieces turn ``b`` into ``a``; join the pieces with ``b``. When ``b``
    contains ``a`` the pieces no longer contain ``b`` whole, which is what doubles a word in template 37.
    """
    pieces = text.split(a)
    return b.join(piece.replace(b, a) for piece in pieces)


@cache
def load_templates(version: str = "ptbxl") -> dict[int, Template]:
    """The templates of one ECG-QA version (``ptbxl``: 70, ``mimic-iv-ecg``: 60), keyed by id."""
    if version not in VERSIONS:
        raise TemplateError(f"version {version!r}: expected one of {', '.join(VERSIONS)}")
    options: dict[int, tuple[str, ...]] = {}
    with open(DATA / f"{version}_answers_for_each_template.csv", newline="") as f:
        for row in csv.DictReader(f):
            options[int(row["template_id"])] = tuple(ast.literal_eval(row["classes"]))
    out: dict[int, Template] = {}
    with open(DATA / "templates.psv", newline="") as f:
        for row in csv.DictReader(f, delimiter="|"):
            tid = int(row["template_id"])
            if tid not in options:
                continue
            out[tid] = Template(tid, row["question_type"], row["attribute_type"], row["text"], options[tid])
    return out


#: The release's paraphrase pools: one shared by train and valid, another for test (``data/paraphrases.json``).
PARAPHRASE_POOLS = ("train_valid", "test")


@cache
def paraphrases() -> dict[int, dict[str, tuple[str, ...]]]:
    """Template id → pool (``"train_valid"``, and ``"test"`` where the test split's own was read) → the
    paraphrase patterns harvested from the release (``data/paraphrases.json``)."""
    path = DATA / "paraphrases.json"
    if not path.is_file():
        return {}
    spec = json.loads(path.read_text())["templates"]
    out = {int(k): {pool: tuple(v[pool]) for pool in PARAPHRASE_POOLS if v.get(pool)} for k, v in spec.items()}
    bad = [k for k, v in out.items() if "train_valid" not in v]
    if bad:
        raise TemplateError(f"{path}: templates {bad} have no train_valid pool")
    return out


def paraphrase_pool(pools: dict[str, tuple[str, ...]], split: str) -> tuple[str, ...]:
    """The patterns a sample of ``split`` is paraphrased with: the test pool in test where it is known, else
    the train/valid pool (the release's own for train and valid; borrowed for test, and reported so)."""
    return pools.get("test", pools["train_valid"]) if split == "test" else pools["train_valid"]


def harvest_paraphrases(pairs, templates: dict[int, Template]) -> dict[int, list[str]]:
    """Paraphrase patterns from (template_id, template text, paraphrased text) triples of one release.

    The slot values are read off the template text (:meth:`Template.pattern`) and replaced by their slot in
    the paraphrased text; a paraphrase that does not contain every value verbatim is left out (it cannot
    be reused for other values). Fixed texts give their paraphrase as is.
    """
    found: dict[int, set[str]] = {}
    for tid, text, para in pairs:
        t = templates.get(int(tid))
        if t is None:
            continue
        m = t.pattern().match(text)
        if m is None:
            continue
        pattern = para
        ok = True
        for slot, value in sorted(zip(t.tokens, m.groups(), strict=True), key=lambda p: -len(p[1])):
            if value not in pattern:
                ok = False
                break
            pattern = pattern.replace(value, slot)
        if ok:
            found.setdefault(t.id, set()).add(pattern)
    return {k: sorted(v) for k, v in sorted(found.items())}


ATTRIBUTE_KINDS = ("fixed", "slot", "range_of_feature", "per_feature", "per_range", "null", "unknown")


@cache
def release_attributes() -> dict[int, dict]:
    """Template id → what the PTB-XL release writes in ``attribute`` (``data/release_attributes.json``:
    ``kind``, ``value``, ``verified``, the samples read)."""
    spec = json.loads((DATA / "release_attributes.json").read_text())
    out = {int(k): v for k, v in spec["templates"].items()}
    bad = {k: v["kind"] for k, v in out.items() if v["kind"] not in ATTRIBUTE_KINDS}
    if bad:
        raise TemplateError(f"{DATA / 'release_attributes.json'}: unknown attribute kinds {bad}")
    return out


def attribute_of(t: Template, values: tuple[str, ...], classes: frozenset[str] | None = None) -> list[str] | None:
    """The ``attribute`` of a sample of ``t`` asked with slot ``values`` (lead excluded, in the question
    text's order: a swapped choose question's values swapped), as the release writes it
    (:func:`release_attributes`): ``fixed`` → the listed candidates; ``slot`` → the values;
    ``range_of_feature`` → each range joined to the feature, ``"<range> of <feature>"``; ``per_feature`` /
    ``per_range`` → the candidates listed for the slot value; ``null`` / ``unknown`` → None.

    ``classes`` (a dataset labelling a subset of ECG-QA's classes; None = every class): candidates that are
    options of ``t`` the dataset does not label are left out of the fixed lists (they are never asked).
    """
    entry = release_attributes()[t.id]
    kind = entry["kind"]
    if kind in ("null", "unknown"):
        return None
    if kind == "slot":
        return list(values)
    if kind == "range_of_feature":
        return [f"{r} of {values[0]}" for r in values[1:]]
    value = entry["value"] if kind == "fixed" else entry["value"][values[0]]
    if classes is None:
        return list(value)
    options = set(t.options)
    return [v for v in value if v not in options or v in classes]
