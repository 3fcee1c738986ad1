"""What each template answers for an ECG (or a pair), from the labels :func:`ecgqa.data.attributes.derive` gives.

One function, :func:`answer`, per (template, slot values, lead, labels). ``None`` means "this ECG cannot be
asked this question" (its label is unknown where the template has no "not sure" option, e.g. an axis that
could not be measured); an answer outside the template's options, or a class the labels do not carry, is
an :class:`AnswerError` naming the ECG and the template — never a silent skip.

How a label counts as "present" differs by template, as the release's wording says:

- ``three``: yes / no / not sure (template 1: an uncertain diagnostic statement is "not sure");
- ``any``: present at any likelihood (2, 3, 4, 6–8, 10–13, 15, 16, comparisons of statements);
- ``certain``: present with certainty only (5, 9, 14: "excluding uncertain symptoms");
- ``known``: the label must be known, else the ECG is not asked (axis, stage, noise, extra systoles,
  numeric features).

Template 25 (what stage?) answers the stage flags that are 1 — early / middle / old and "unknown stage of
myocardial infarction", a class of its own under the release's rules
(:func:`ecgqa.data.attributes.release_stages`) — "none of myocardial infarction" when all are 0, and is not asked
of an ECG with an unknown flag (column 1 "Stadium III" alone), as the release.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ecgqa.data.attributes import LOCATED_BASES
from ecgqa.generation.templates import LEAD_NAMES, NONE, Template

Labels = Mapping[str, "int | None"]
Rows = Mapping[str, Labels]

ANY_MODE = {2, 3, 4, 6, 7, 8, 10, 11, 12, 13, 15, 16}
CERTAIN_MODE = {5, 9, 14}
#: fixed-text verify templates → the class they ask about
FIXED_VERIFY = {
    2: "normal ecg",
    12: "any kind of abnormal symptoms",
    13: "any diagnostic symptoms",
    14: "any diagnostic symptoms",
    15: "any form-related symptoms",
    16: "any rhythm-related symptoms",
    29: "any kind of noises",
    35: "any kind of extra systoles",
}
#: templates with a ${lead} slot whose value slot is asked in that lead's row
LEAD_ROW = {26, 28, 31, 33}
STAGE_NONE = "none of myocardial infarction"
NUMERIC = ("rr interval", "p duration", "pr interval", "qrs duration", "qt interval", "qt corrected")
#: comparison templates → (was present in the first ECG, is present in the second)
TRANSITION = {
    "resolved": (True, False),
    "new": (False, True),
    "remain": (True, True),
    "absent": (False, False),
}
COMPARISON = {
    43: "resolved", 44: "new", 45: "remain", 46: "absent", 47: "resolved", 48: "new", 49: "remain",
    57: "resolved", 58: "new", 59: "remain", 60: "absent", 61: "resolved", 62: "new", 63: "remain",
    # numeric: "present" = abnormal
    50: "resolved", 51: "new", 52: "remain", 53: "absent", 54: "resolved", 55: "new", 56: "remain",
    64: "resolved", 65: "new", 66: "remain", 67: "absent", 68: "resolved", 69: "new", 70: "remain",
}  # fmt: skip


class AnswerError(ValueError):
    """A label the dataset does not carry, or an answer outside the template's options."""


def lead_row(lead: str) -> str:
    """``"lead aVF"`` → ``"aVF"`` (the row name :func:`ecgqa.data.attributes.derive` uses)."""
    return lead.removeprefix("lead ")


def value(rows: Rows, cls: str, row: str = "entire", *, ecg: int = -1, template: int = -1) -> int | None:
    """The label of ``cls`` (1 / 0 / None); "X in G leads" of a located class reads row G."""
    row, cls = locate(cls, row)
    labels = rows.get(row)
    if labels is None or cls not in labels:
        raise AnswerError(f"ECG {ecg}, template {template}: the dataset carries no label {cls!r} (row {row!r})")
    return labels[cls]


def locate(cls: str, row: str = "entire") -> tuple[str, str]:
    """The (row, class) entry :func:`value` reads: "X in G leads" of a located class X is row G's X."""
    if row == "entire":
        for base in LOCATED_BASES:
            if cls.startswith(base + " in ") and cls.endswith(" leads"):
                return cls[len(base) + 4 : -len(" leads")], base
    return row, cls


def numeric_status(rows: Rows, feature: str, *, ecg: int, template: int) -> str | None:
    """``"normal"`` / ``"abnormal"`` / None (not measurable) of one numeric feature."""
    within = value(rows, f"within the normal range of {feature}", ecg=ecg, template=template)
    if within is None:
        return None
    return "normal" if within == 1 else "abnormal"


def _present(t: Template, v: int | None) -> bool | None:
    if t.id in CERTAIN_MODE:
        return v == 1
    if t.id in ANY_MODE or t.scope != "single":
        return v != 0
    return None if v is None else v == 1


def _present_among(t: Template, r: Rows, classes: Sequence[str], row: str, **kw) -> list[str] | None:
    """The ``classes`` present in ``row`` (in their order); None when one of them is unknown (not asked)."""
    got = []
    for cls in classes:
        present = _present(t, value(r, cls, row, **kw))
        if present is None:
            return None
        if present:
            got.append(cls)
    return got


def answer(
    t: Template,
    values: Sequence[str],
    lead: str | None,
    rows: Sequence[Rows],
    *,
    ecgs: Sequence[int] = (),
    has_likelihood: bool = True,
    classes: frozenset[str] | None = None,
) -> list[str] | None:
    """The answer (a list of class names) of template ``t`` filled with ``values`` / ``lead`` for ``rows``
    (one ECG's labels, or two for a comparison), or None when these ECGs cannot be asked it."""
    ecg = ecgs[0] if ecgs else -1
    out = _answer(t, tuple(values), lead, rows, ecg, has_likelihood, classes)
    if out is None:
        return None
    if not out:
        raise AnswerError(f"ECG {ecg}, template {t.id}: empty answer set")
    bad = [a for a in out if a not in t.options]
    if bad:
        raise AnswerError(f"ECG {ecg}, template {t.id}: answer {bad} is not among the template's options")
    return out


def _answer(t: Template, values, lead, rows, ecg, has_likelihood, classes) -> list[str] | None:
    tid = t.id
    row = lead_row(lead) if lead and tid in LEAD_ROW else "entire"
    kw = {"ecg": ecg, "template": tid}
    if t.scope != "single":
        return _comparison(t, values, rows, ecg, kw, classes)
    r = rows[0]
    if tid in (17, 18, 19):
        raise AnswerError(f"ECG {ecg}, template {tid}: report-text lead parsing is not implemented")
    if t.kind == "verify":
        if tid == 39:  # numeric feature ${feature} falls ${range}
            feature, where = values
            v = value(r, f"{where.removesuffix(' the normal range')} the normal range of {feature}", **kw)
        else:
            cls = "any kind of noises" if tid == 28 else (FIXED_VERIFY.get(tid) or values[0])
            v = value(r, cls, row, **kw)
        if tid == 1:
            if v is None and not has_likelihood:
                raise AnswerError(f"ECG {ecg}, template 1: {values[0]!r} is uncertain in a dataset without likelihoods")
            return ["not sure"] if v is None else ["yes" if v else "no"]
        present = _present(t, v)
        return None if present is None else ["yes" if present else "no"]
    if t.kind == "choose":
        if tid == 40:
            feature, a, b = values
            opts = [a, b]
            got = []
            for where in opts:
                v = value(r, f"{where.removesuffix(' the normal range')} the normal range of {feature}", **kw)
                if v is None:
                    return None
                if v:
                    got.append(where)
            return got or [NONE]
        got = _present_among(t, r, values, row, **kw)
        return None if got is None else got or [NONE]
    # query
    if tid == 19 or tid == 34:  # which leads show ${x}
        cls = values[0]
        got = [name for name in LEAD_NAMES if value(r, cls, lead_row(name), **kw) == 1]
        return got or [NONE]
    if tid == 41:
        (feature,) = values
        for where in ("below", "within", "above"):
            v = value(r, f"{where} the normal range of {feature}", **kw)
            if v is None:
                return None
            if v:
                return [f"{where} the normal range"]
        return None
    if tid == 42:
        where = values[0].removesuffix(" the normal range")
        known = [f for f in NUMERIC if value(r, f"{where} the normal range of {f}", **kw) is not None]
        if not known:
            return None
        got = [f for f in known if value(r, f"{where} the normal range of {f}", **kw) == 1]
        return got or [NONE]
    # the rest, template 25 (stage) included: the classes that are 1; "none" when all are 0; not asked when one
    # is unknown (25: the stages and "unknown stage" are the authors' flags, ecgqa.data.attributes.release_stages)
    none = none_option(t)
    candidates = [o for o in t.options if o != none and (classes is None or o in classes)]
    got = _present_among(t, r, candidates, row, **kw)
    if got is None:
        return None
    if not got and none not in t.options:
        return None  # e.g. template 22 (axis): an ECG with no axis class is not asked
    return got or [none]


def none_option(t: Template) -> str:
    """The option a query answers when no class is present: "none", or template 25's "none of myocardial
    infarction"."""
    return STAGE_NONE if STAGE_NONE in t.options else NONE


def comparison_state(t: Template, v: int | None) -> bool | None:
    """Whether a comparison template counts a class as present in one ECG, from its label ``v``: a statement
    at any likelihood (v != 0); a numeric feature when abnormal (not within the normal range; None: not
    measurable)."""
    if t.attribute_type == "numeric_feature":
        return None if v is None else v != 1
    return v != 0


def _comparison(t: Template, values, rows, ecg, kw, classes) -> list[str] | None:
    was, now = TRANSITION[COMPARISON[t.id]]
    numeric = t.attribute_type == "numeric_feature"

    def state(r, cls) -> bool | None:
        return comparison_state(t, value(r, f"within the normal range of {cls}" if numeric else cls, **kw))

    if t.kind == "verify":
        a, b = state(rows[0], values[0]), state(rows[1], values[0])
        if a is None or b is None:
            return None
        return ["yes" if (a, b) == (was, now) else "no"]
    candidates = NUMERIC if numeric else [o for o in t.options if o != NONE and (classes is None or o in classes)]
    got, known = [], 0
    for cls in candidates:
        a, b = state(rows[0], cls), state(rows[1], cls)
        if a is None or b is None:
            continue
        known += 1
        if (a, b) == (was, now):
            got.append(cls)
    if not known:
        return None
    return got or [NONE]


def reads(
    t: Template, values: Sequence[str], lead: str | None, classes: frozenset[str] | None = None
) -> tuple[tuple[str, str], ...]:
    """Every (row, class) entry :func:`answer` may read from an ECG's labels for this question (of each ECG
    of a pair), as :func:`locate` maps it. The answer is a function of these entries alone, so the engine
    computes it once per distinct combination of their values (``ecgqa/generation/engine.py``).

    Kept beside :func:`_answer`, which it mirrors: a template branch there needs its entries here (a
    superset is harmless; a missing entry would be a wrong answer, which ``tests/generation`` checks
    against :func:`answer` on every ECG of the bundled sample).
    """
    tid = t.id
    values = tuple(values)
    row = lead_row(lead) if lead and tid in LEAD_ROW else "entire"
    out: list[tuple[str, str]] = []

    def ranges(feature: str, wheres) -> None:
        for where in wheres:
            out.append(locate(f"{where.removesuffix(' the normal range')} the normal range of {feature}"))

    def options() -> list[str]:
        none = none_option(t) if t.scope == "single" else NONE
        return [o for o in t.options if o != none and (classes is None or o in classes)]

    if t.scope != "single":
        numeric = t.attribute_type == "numeric_feature"
        cands = [values[0]] if t.kind == "verify" else (list(NUMERIC) if numeric else options())
        for cls in cands:
            out.append(locate(f"within the normal range of {cls}" if numeric else cls))
    elif tid in (17, 18, 19):
        pass  # answer() refuses these whatever the labels
    elif t.kind == "verify":
        if tid == 39:
            ranges(values[0], [values[1]])
        else:
            out.append(locate("any kind of noises" if tid == 28 else (FIXED_VERIFY.get(tid) or values[0]), row))
    elif t.kind == "choose":
        if tid == 40:
            ranges(values[0], values[1:])
        else:
            out.extend(locate(cls, row) for cls in values)
    elif tid == 34:
        out.extend(locate(values[0], lead_row(name)) for name in LEAD_NAMES)
    elif tid == 41:
        ranges(values[0], ("below", "within", "above"))
    elif tid == 42:
        for f in NUMERIC:
            ranges(f, [values[0]])
    else:
        out.extend(locate(cls, row) for cls in options())
    return tuple(dict.fromkeys(out))
