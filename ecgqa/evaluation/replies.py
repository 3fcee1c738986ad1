"""How a free-text reply becomes a set of answer classes (docs/benchmark.md, "The LLM evaluation protocol").

One module for every stage that scores free text (``ecgqa llm-eval`` and ``ecgqa score``), so that a
number produced by either is the same number. Three rules, named like the prompt styles that use them:

``paper``
    The ECG-QA paper's option extraction with its defects fixed. The reply is searched, left to right,
    for the question's options and, where ``None`` is offered (non-verify questions), ``none``; the set
    of everything found is the answer. A reply naming ``none`` together with an option contradicts itself
    and is scored wrong, as in the paper. The paper's pattern held ``none`` for verify questions too, but
    there it could never match (every verify question offers ``no``, tried first at the same position),
    so "No, none of these" read as "no"; with whole-phrase matching it is a plain word there. Fixed: the option
    names are matched case-insensitively (the paper lowercased the reply but not the names, so the
    lead options "lead I" … "lead aVR" could never match); at each position the longest option wins
    (the paper tried options in class order, so "lead II" read as "lead I" and "not sure" as "no");
    an option only matches as a whole phrase ("normal" is not "no"); every regex character in a name
    is escaped.
``paper-as-published``
    Byte-for-byte the original harness (ECG-QA ``llm_modeling/llm_modeling.py``): the reply lowercased,
    the pattern ``(name1)|(name2)|…|(none)`` built from the names as written in class order (only the
    first ``(`` and ``)`` of a name escaped), ``re.finditer``, the set of matched strings. Its defects
    are kept on purpose, for anyone matching the published numbers.
``ecgqa-v2``
    This toolkit's rule before the paper styles: case-insensitive, longest option first, each match
    consuming its span, whole phrases only; ``None`` is matched only where it is an option, and ``None``
    next to another option is ignored.

Under every rule a reply that matches nothing is scored wrong, also when the true answer is empty
(the paper compared the empty set with ``{"none"}``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PROMPT_STYLES = ("paper", "paper-as-published", "ecgqa-v2")
NONE_OPTION = "None"  # the option offered for "no class applies" on non-verify questions
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(reply: str) -> str:
    """The reply with every lone surrogate replaced by U+FFFD.

    A JSON escape such as ``"\\ud83d"`` (an emoji cut in half by a truncating writer or server) decodes to a
    lone surrogate: no character, with no UTF-8 form, so sqlite and every JSON/text writer refuse it. It is
    replaced as an undecodable byte would be, so the reply can be stored, scored and written like any other.
    """
    return _LONE_SURROGATE.sub("\ufffd", reply)


@dataclass(frozen=True)
class ParsedReply:
    """What a rule found in a reply.

    ``options``: the matched options in option order, without ``None``; ``none``: whether "none" was
    found; ``matched``: whether anything was found at all (a reply matching nothing is scored wrong).
    """

    options: tuple[str, ...]
    none: bool
    matched: bool


def _check_rule(rule: str) -> None:
    if rule not in PROMPT_STYLES:
        raise ValueError(f"unknown reply rule {rule!r}: expected one of {', '.join(PROMPT_STYLES)}")


def _classes(options: Sequence[str]) -> list[str]:
    """The options without the ``None`` option (the paper's pattern adds "none" itself)."""
    return [o for o in options if o.lower() != NONE_OPTION.lower()]


def _upstream_pattern(classes: Sequence[str]) -> str:
    """The original harness's pattern, reproduced character for character (llm_modeling.py:379-387)."""
    pattern = "("
    for name in classes:
        if "(" in name:
            name = name[: name.find("(")] + "\\" + name[name.find("(") :]
        if ")" in name:
            name = name[: name.find(")")] + "\\" + name[name.find(")") :]
        pattern += name + ")|("
    return pattern + "none)"


def _parse_as_published(reply: str, options: Sequence[str]) -> ParsedReply:
    classes = _classes(options)
    try:
        regex = re.compile(_upstream_pattern(classes))
    except re.error as e:  # cannot happen with the published class names; a custom answer space might
        raise ValueError(f"paper-as-published: the options {classes!r} do not form a valid pattern ({e})") from e
    found = {m.group() for m in regex.finditer(reply.lower())}
    # A matched string equals a name as written (only names without capitals can match a lowercased reply).
    return ParsedReply(tuple(c for c in classes if c in found), "none" in found, bool(found))


def _parse_paper(reply: str, options: Sequence[str]) -> ParsedReply:
    classes = _classes(options)
    offered_none = len(classes) < len(options)  # "None" is an option: a non-verify question
    alternatives = sorted(
        {c.lower() for c in classes} | ({"none"} if offered_none else set()), key=lambda s: (-len(s), s)
    )
    regex = re.compile(r"(?<![a-z0-9])(?:" + "|".join(re.escape(a) for a in alternatives) + r")(?![a-z0-9])")
    found = {m.group() for m in regex.finditer(reply.lower())}
    return ParsedReply(tuple(c for c in classes if c.lower() in found), "none" in found, bool(found))


def _parse_v2(reply: str, options: Sequence[str]) -> ParsedReply:
    text = reply.lower()
    found: set[str] = set()
    for opt in sorted(options, key=lambda o: (-len(o), o)):
        pattern = re.compile(r"(?<![a-z0-9])" + re.escape(opt.lower()) + r"(?![a-z0-9])")
        text, n = pattern.subn(lambda m: "\x00" * len(m.group(0)), text)
        if n:
            found.add(opt)
    return ParsedReply(tuple(o for o in options if o in found and o != NONE_OPTION), NONE_OPTION in found, bool(found))


def parse_reply_detail(reply: str, options: Sequence[str], rule: str = "paper") -> ParsedReply:
    """The full parse (options, whether "none" was named, whether anything matched) under ``rule``.

    ``options`` are what the prompt offered, in its order (the valid classes, plus ``None`` for
    non-verify questions).
    """
    _check_rule(rule)
    options = list(options)
    if rule == "paper":
        return _parse_paper(reply, options)
    if rule == "paper-as-published":
        return _parse_as_published(reply, options)
    return _parse_v2(reply, options)


def parse_reply(reply: str, options: Sequence[str], rule: str = "paper") -> tuple[list[str], bool]:
    """(matched options in option order, without ``None``; whether anything matched at all)."""
    p = parse_reply_detail(reply, options, rule)
    return list(p.options), p.matched


def reply_correct(reply: str, options: Sequence[str], true: Iterable[str], rule: str = "paper") -> bool:
    """Whether ``reply`` answers a question whose true classes are ``true`` (empty: none), under ``rule``.

    Exact match on the answer set. The paper rules compare the set of everything found, "none"
    included, with the true set (``{"none"}`` when empty): "none" next to an option is wrong. Under
    ``ecgqa-v2`` ``None`` next to an option is ignored. A reply that matches nothing is always wrong.
    """
    return parsed_correct(parse_reply_detail(reply, options, rule), options, true, rule)


def parsed_correct(p: ParsedReply, options: Sequence[str], true: Iterable[str], rule: str = "paper") -> bool:
    """:func:`reply_correct` for a reply already parsed by :func:`parse_reply_detail` under ``rule``."""
    from ecgqa.evaluation.metrics import exact_match_sets

    if not p.matched:
        return False
    if rule != "ecgqa-v2" and p.none and p.options:
        return False
    valid = set(_classes(list(options)))
    return bool(exact_match_sets([set(p.options) & valid], [set(true) & valid])[0])
