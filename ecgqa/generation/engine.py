"""``generate``: a :class:`~ecgqa.generation.source.GenerationInput` → ECG-QA questions in the release's layout.

For every template (``templates.py``), every slot filling (:func:`questions`) and, in every split, every
ECG (or pair) the answer is computed (``answers.py``); ECGs are grouped by answer and sampled under the
caps (``sampling.py``); the release folder is written by ``writer.py``. A question is one (template, slot
values, lead) and keeps one ``question_id`` across splits, as in the release.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ecgqa.data.attributes import ANY_NOISE, AXIS_CLASSES
from ecgqa.generation import answers as A
from ecgqa.generation import sampling
from ecgqa.generation.source import GenerationInput
from ecgqa.generation.templates import LEAD_NAMES, NONE, Template, load_templates, swap_words

GENERATOR_VERSION = 1
#: Templates not generated, and why (listed in generation.json).
_REPORT_LEADS = (
    "needs the lead of each form statement from the report text; the authors parsed an English translation "
    "of PTB-XL's reports (never published; most reports are German), so it is not generated"
)
NOT_IMPLEMENTED = {17: _REPORT_LEADS, 18: _REPORT_LEADS, 19: _REPORT_LEADS}
#: Without likelihoods these ask the same as 4, 8, 13.
UNCERTAIN_TWINS = {5: 4, 9: 8, 14: 13}
RANGES = ("below the normal range", "within the normal range", "above the normal range")


@dataclass(frozen=True)
class Question:
    template: Template
    values: tuple[str, ...]
    lead: str | None

    @cached_property
    def text(self) -> str:
        return self.template.fill(self.values, self.lead)


def _opts(templates: dict[int, Template], tid: int) -> list[str]:
    return [o for o in templates[tid].options if o != NONE] if tid in templates else []


def slot_values(t: Template, templates: dict[int, Template]) -> list[tuple[str, ...]]:
    """Every filling of ``t``'s attribute slots (choose pairs in option order; the swap comes later)."""
    tid = t.id
    scp = sorted(set(_opts(templates, 4)) | set(_opts(templates, 6)) | set(_opts(templates, 7)))
    if not t.value_tokens:
        return [()]
    single = {
        1: scp,
        20: _opts(templates, 22),
        23: _opts(templates, 24),
        26: _opts(templates, 30),
        27: _opts(templates, 30),
        34: _opts(templates, 30),
        36: _opts(templates, 37),
        41: list(A.NUMERIC),
        42: ["within the normal range"],
        43: _opts(templates, 47),
        44: _opts(templates, 47),
        45: _opts(templates, 47),
        46: _opts(templates, 47),
        57: _opts(templates, 61),
        58: _opts(templates, 61),
        59: _opts(templates, 61),
        60: _opts(templates, 61),
    }
    for tid_ in (50, 51, 52, 53, 64, 65, 66, 67):
        single[tid_] = list(A.NUMERIC)
    if tid in single:
        return [(v,) for v in single[tid]]
    if tid == 39:
        return [(f, r) for f in A.NUMERIC for r in RANGES]
    if tid == 40:
        return [(f, a, b) for f in A.NUMERIC for a, b in combinations(RANGES, 2)]
    pairs_of = {3: 3, 4: 4, 5: 5, 6: 6, 7: 7, 21: 22, 24: 24, 30: 30, 31: 30, 37: 37}
    if tid in pairs_of:
        return list(combinations(_opts(templates, pairs_of[tid]), 2))
    return []


def questions(t: Template, templates: dict[int, Template], classes: frozenset[str] | None) -> list[Question]:
    """The questions of one template, restricted to the classes the dataset labels (None: all)."""

    def ok(v: str) -> bool:
        return classes is None or v in classes or v in RANGES

    if classes is not None and t.attribute_type != "numeric_feature":
        fixed = ANY_NOISE if t.id == 28 else A.FIXED_VERIFY.get(t.id)
        if fixed is not None and fixed not in classes:
            return []
        if t.kind == "query" and not t.value_tokens and not any(o in classes for o in t.options):
            return []
    out = []
    for values in slot_values(t, templates):
        if t.id == 40 or t.id == 39 or t.attribute_type == "numeric_feature":
            pass  # features and ranges come from the signal
        elif not all(ok(v) for v in values):
            continue
        leads = LEAD_NAMES if t.has_lead else (None,)
        out.extend(Question(t, values, lead) for lead in leads)
    return out


class _Columns:
    """Every ECG's labels as one small-integer column per (row, class) entry, built on first use.

    A question's answer is a function of the entries :func:`ecgqa.generation.answers.reads` names, so the
    ECGs are keyed by the combination of those entries' values (:meth:`keys`) and :func:`answers.answer`
    runs once per distinct key (or pair of keys) instead of once per ECG (or pair).
    """

    def __init__(self, labels: dict[int, dict], ids: list[int]) -> None:
        self.labels = labels
        self.ids = ids
        self.pos = {e: i for i, e in enumerate(ids)}
        self._codes: dict[Any, int] = {_MISSING: 0}
        self._columns: dict[tuple[str, str], np.ndarray] = {}
        self._keys: dict[tuple, tuple[np.ndarray, int]] = {}

    def column(self, row: str, cls: str) -> np.ndarray:
        col = self._columns.get((row, cls))
        if col is None:
            codes = self._codes
            out = np.empty(len(self.ids), dtype=np.int64)
            for i, e in enumerate(self.ids):
                r = self.labels[e].get(row)
                v = _MISSING if r is None else r.get(cls, _MISSING)
                c = codes.get(v)
                if c is None:
                    c = codes[v] = len(codes)
                out[i] = c
            col = self._columns[(row, cls)] = out
        return col

    def values(self) -> list[Any]:
        """The label value of each code, in code order."""
        return list(self._codes)

    def keys(self, reads: tuple[tuple[str, str], ...]) -> tuple[np.ndarray, int]:
        """(key of each ECG, number of possible keys): equal keys ⇔ equal values of every entry read."""
        got = self._keys.get(reads)
        if got is None:
            cols = [self.column(r, c) for r, c in reads]
            base = len(self._codes)
            if not cols:
                got = (np.zeros(len(self.ids), dtype=np.int64), 1)
            elif base ** len(cols) < 2**31:
                key = np.zeros(len(self.ids), dtype=np.int64)
                for col in cols:
                    key = key * base + col
                got = (key, base ** len(cols))
            else:
                uniq, inverse = np.unique(np.stack(cols, axis=1), axis=0, return_inverse=True)
                got = (inverse.reshape(-1).astype(np.int64), len(uniq))
            self._keys[reads] = got
        return got


_MISSING = object()  # an entry the labels do not carry (answer() raises, naming the ECG)


@dataclass
class _Units:
    """The ECGs (``single``) or pairs a question is asked of in one split, with their label positions."""

    items: list[Any]  # ecg ids, or (first, second) pairs
    first: np.ndarray  # position of each unit's (first) ECG in _Columns.ids
    second: np.ndarray | None = None  # pairs: the second ECG's

    def ecgs(self, i: int) -> tuple[int, ...]:
        u = self.items[i]
        return u if isinstance(u, tuple) else (u,)


def _make_units(items: list[Any], cols: _Columns, pairs: bool) -> _Units:
    if not pairs:
        return _Units(items, np.array([cols.pos[e] for e in items], dtype=np.int64))
    first = np.array([cols.pos[a] for a, _ in items], dtype=np.int64)
    second = np.array([cols.pos[b] for _, b in items], dtype=np.int64)
    return _Units(items, first, second)


def _transition_codes(
    t: Template, reads: tuple[tuple[str, str], ...], units: _Units, sel: np.ndarray, cols: _Columns
) -> np.ndarray | None:
    """A comparison choose / query over many classes: each pair's code is which classes show the template's
    transition and whether any class is known in both ECGs, all that :func:`answers._comparison` looks at
    (keying pairs by all their labels would give nearly one key per pair). None where this does not apply
    (verify, too many classes, or a label missing: the generic path then raises naming the ECG)."""
    if t.kind == "verify" or not reads or len(reads) > 62:
        return None
    was, now = A.TRANSITION[A.COMPARISON[t.id]]
    columns = [cols.column(r, c) for r, c in reads]
    state = {True: 1, False: 0, None: 2}
    table = np.array([3 if v is _MISSING else state[A.comparison_state(t, v)] for v in cols.values()])
    first, second = units.first[sel], units.second[sel]
    codes = np.zeros(len(sel), dtype=np.int64)
    known_any = np.zeros(len(sel), dtype=bool)
    for bit, col in enumerate(columns):
        a, b = table[col[first]], table[col[second]]
        if (a == 3).any() or (b == 3).any():
            return None
        known = (a != 2) & (b != 2)
        codes |= (known & (a == int(was)) & (b == int(now))).astype(np.int64) << bit
        known_any |= known
    return codes | (known_any.astype(np.int64) << len(reads))


def _group_by_answer(
    q: Question,
    units: _Units,
    cols: _Columns,
    inp: GenerationInput,
    classes: frozenset[str] | None,
    taken: set[int] | None,
) -> dict[tuple[str, ...], list[int]]:
    """Answer set → the indices (into ``units.items``, in order) of the units with that answer; units whose
    answer is None and those in ``taken`` are left out. The same groups, in the same order, as calling
    :func:`answers.answer` on every unit in turn, and the same error (its first unit) if one fails."""
    t = q.template
    n = len(units.items)
    if n == 0:
        return {}
    sel = np.arange(n) if not taken else np.setdiff1d(np.arange(n), np.fromiter(taken, np.int64, len(taken)))
    reads = A.reads(t, q.values, q.lead, classes)
    codes = _transition_codes(t, reads, units, sel, cols) if units.second is not None else None
    if codes is None:
        key, k = cols.keys(reads)
        codes = key[units.first[sel]]
        if units.second is not None:
            codes = codes * k + key[units.second[sel]]
    uniq, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    answer_of = np.full(len(uniq), -1, dtype=np.int64)
    answer_sets: dict[tuple[str, ...], int] = {}
    for c in np.argsort(first, kind="stable"):  # distinct keys in order of first appearance
        ecgs = units.ecgs(int(sel[first[c]]))
        rows = [inp.labels[e] for e in ecgs]
        ans = A.answer(t, q.values, q.lead, rows, ecgs=ecgs, has_likelihood=inp.has_likelihood, classes=classes)
        if ans is not None:
            answer_of[c] = answer_sets.setdefault(tuple(sorted(ans)), len(answer_sets))
    unit_answer = answer_of[inverse.reshape(-1)]
    order = np.argsort(unit_answer, kind="stable")  # stable: each group keeps the units' order
    bounds = np.searchsorted(unit_answer[order], np.arange(len(answer_sets) + 1))
    return {ans: sel[order[bounds[g] : bounds[g + 1]]].tolist() for ans, g in answer_sets.items()}


def plan(
    inp: GenerationInput, templates: dict[int, Template]
) -> tuple[list[Question], dict[str, str], frozenset | None]:
    """The questions to ask (template order), the templates skipped and why, and the classes asked (None:
    every class, PTB-XL)."""
    classes = frozenset(inp.classes) if inp.dataset != "ptbxl" else None

    skipped: dict[str, str] = {}
    todo: list[Question] = []
    entire = [inp.labels[int(e)].get("entire", {}) for e in inp.ecgs.index]
    has_numeric = any("within the normal range of rr interval" in r for r in entire)
    has_axis = any("normal heart axis" in r for r in entire)
    if classes is not None and has_axis:  # the axis comes from the signal, whatever the dataset labels
        classes = classes | set(AXIS_CLASSES)
    for tid, t in templates.items():
        if t.attribute_type == "numeric_feature" and not has_numeric:
            skipped[str(tid)] = "no numeric features (signals not measured)"
            continue
        if t.attribute_type == "heart_axis" and not has_axis:
            skipped[str(tid)] = "no heart axis (signals not measured)"
            continue
        if tid in NOT_IMPLEMENTED:
            skipped[str(tid)] = NOT_IMPLEMENTED[tid]
            continue
        if not inp.has_likelihood and tid in UNCERTAIN_TWINS:
            skipped[str(tid)] = f"no likelihoods in this dataset: asks the same as template {UNCERTAIN_TWINS[tid]}"
            continue
        if not inp.lead_labels and t.has_lead or (not inp.lead_labels and tid == 34):
            skipped[str(tid)] = "the dataset does not say in which leads a finding is"
            continue
        qs = questions(t, templates, classes)
        if not qs:
            skipped[str(tid)] = "none of the template's options is a class this dataset labels"
            continue
        todo.extend(qs)
    return todo, skipped, classes


def run(
    inp: GenerationInput,
    *,
    version: str = "ptbxl",
    seed: int = 42,
    caps: str = "release",
    balanced: bool = False,
    split_of: dict[int, str] | None = None,
    measure: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate every split's samples. Returns {"samples": {split: [sample, …]}, "counts", "skipped", "splits"}.

    ``split_of`` (ecg_id → split) overrides the seeded patient split (the release's ``*_ecgs.tsv``).
    """
    if caps not in sampling.CAPS:
        raise ValueError(f"--caps {caps!r}: expected one of {', '.join(sampling.CAPS)}")
    if measure:
        add_signal_labels(inp, progress=progress)
    templates = load_templates(version)
    rng = random.Random(seed)
    split_of = split_of or inp.split_of or sampling.split_by_patient(inp.ecgs, seed)
    ids_of = {s: sorted(int(e) for e in inp.ecgs.index if split_of.get(int(e)) == s) for s in sampling.SPLITS}
    outside = [int(e) for e in inp.ecgs.index if int(e) not in split_of]
    pairs = {
        s: {
            "comparison_consecutive": sampling.consecutive_pairs(inp.ecgs, ids_of[s]),
            "comparison_irrelevant": sampling.irrelevant_pairs(inp.ecgs, ids_of[s], rng),
        }
        for s in sampling.SPLITS
    }
    todo, skipped, classes = plan(inp, templates)

    samples: dict[str, list[dict]] = {s: [] for s in sampling.SPLITS}
    counts: dict[str, dict[str, int]] = {}
    cols = _Columns(inp.labels, [int(e) for e in inp.ecgs.index])
    units = {
        split: {
            "single": _make_units(ids_of[split], cols, pairs=False),
            **{scope: _make_units(p, cols, pairs=True) for scope, p in pairs[split].items()},
        }
        for split in sampling.SPLITS
    }
    used: dict[tuple[str, int], set[int]] = {}
    bar = tqdm(total=len(todo) * 3, desc="generate", unit="question", disable=not progress)
    for qid, q in enumerate(todo):
        t = q.template
        for split in sampling.SPLITS:
            bar.update(1)
            u = units[split][t.scope]
            taken = used.setdefault((split, t.id), set()) if t.kind == "choose" else None
            groups = _group_by_answer(q, u, cols, inp, classes, taken)
            chosen = sampling.pick(groups, kind=t.kind, split=split, caps=caps, balanced=balanced, rng=rng)
            if chosen is None:
                continue
            tcounts = counts.setdefault(str(t.id), {})
            for ans, picked in chosen.items():
                akey = "|".join(ans)
                tcounts[akey] = tcounts.get(akey, 0) + len(picked)
                for i in sorted(picked, key=u.items.__getitem__):
                    text, attribute = q.text, list(q.values) or None
                    if taken is not None:
                        taken.add(i)
                        text, attribute = _maybe_swap(q, rng)
                    elif t.kind == "query" and t.id not in (34, 19):
                        attribute = None
                    if t.id == 39:
                        attribute = [q.values[1]]
                    elif t.id == 41:
                        attribute = None
                    samples[split].append(
                        {
                            "template_id": t.id,
                            "question_id": qid,
                            "question_type": t.question_type,
                            "attribute_type": t.attribute_type,
                            "question": text,
                            "answer": _order(t, ans, attribute),
                            "ecg_id": list(u.ecgs(i)),
                            "attribute": attribute,
                        }
                    )
    bar.close()
    for split in sampling.SPLITS:
        for i, s in enumerate(samples[split]):
            s["sample_id"] = i
    return {
        "samples": samples,
        "counts": counts,
        "skipped": skipped,
        "split_of": split_of,
        "ids_of": ids_of,
        "outside_split": outside,
        "n_questions": len(todo),
        "templates": templates,
    }


def add_signal_labels(inp: GenerationInput, *, progress: bool = True) -> int:
    """Numeric-feature and heart-axis labels from each record's signal, for ECGs whose labels lack them.

    The classes are those :func:`ecgqa.data.attributes.derive` gives (``release_rules=True``) for the
    record's :func:`~ecgqa.data.attributes.measure_record`; an unreadable record gets them unknown.
    Returns how many ECGs were measured.
    """
    from ecgqa.data.attributes import Statements, derive, measure_record

    if inp.dataset == "ptbxl":
        return 0  # the PTB-XL reader measures while it derives (or was told not to)
    todo = [
        int(e) for e in inp.ecgs.index if "within the normal range of rr interval" not in inp.labels[int(e)]["entire"]
    ]
    if not todo:
        return 0
    nothing = Statements(frozenset(), frozenset(), frozenset(), {})
    for e in tqdm(todo, desc="measure", unit="ECG", disable=not progress):
        m = measure_record(inp.ecgs.at[e, "record"])
        entire = derive({}, nothing, m, release_rules=True)["entire"] if m is not None else {}
        signal = {k: v for k, v in entire.items() if " the normal range of " in k or k in AXIS_CLASSES}
        if m is None:
            signal = {f"{r} of {f}": None for f in A.NUMERIC for r in RANGES}
            signal |= dict.fromkeys(AXIS_CLASSES)
        keep_axis = any(c in inp.labels[e]["entire"] for c in AXIS_CLASSES)  # the dataset's own axis label wins
        for k, v in signal.items():
            if keep_axis and k in AXIS_CLASSES:
                continue
            inp.labels[e]["entire"][k] = v
    return len(todo)


def _maybe_swap(q: Question, rng: random.Random) -> tuple[str, list[str]]:
    """A choose question's text and attribute order: swapped half the time, with the release's word swap."""
    a, b = q.values[-2:]  # template 40 has the feature first: (feature, range1, range2)
    if rng.random() > 0.5:
        return swap_words(q.text, a, b), [b, a]
    return q.text, [a, b]


def _order(t: Template, ans: tuple[str, ...], attribute: list[str] | None) -> list[str]:
    """Answers of a choose question in attribute order; otherwise in option order."""
    if attribute and t.kind == "choose":
        return [a for a in attribute if a in ans] or list(ans)
    index = {o: i for i, o in enumerate(t.options)}
    return sorted(ans, key=lambda a: index.get(a, len(index)))


def iter_samples(result: dict[str, Any]) -> Iterator[tuple[str, dict]]:
    for split, rows in result["samples"].items():
        for s in rows:
            yield split, s


def generate(
    source: GenerationInput | str,
    out: str | Path,
    *,
    records: str | Path | None = None,
    metadata: str | Path | None = None,
    seed: int = 42,
    caps: str = "release",
    balanced: bool = False,
    split_of: dict[int, str] | None = None,
    measure: bool = True,
    version: str = "ptbxl",
    progress: bool = True,
    left_out: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Generate ECG-QA questions and write them to ``out`` in the release's layout (``ecgqa.generate``).

    ``source``: a :class:`GenerationInput` (any dataset), or ``"ptbxl"`` with ``records`` (a PTB-XL root) and
    optionally ``metadata``. Returns the content of ``out/generation.json``.
    """
    from ecgqa.generation.writer import write_release

    if isinstance(source, str):
        if source != "ptbxl":
            raise ValueError(f"source {source!r}: pass 'ptbxl' or a GenerationInput (see ecgqa.generation.datasets)")
        if records is None:
            raise ValueError("generate('ptbxl', ...) needs records= (a PTB-XL root)")
        from ecgqa.generation.ptbxl import read_ptbxl

        source, left_out = read_ptbxl(records, metadata, measure=measure, progress=progress)
    result = run(
        source,
        version=version,
        seed=seed,
        caps=caps,
        balanced=balanced,
        split_of=split_of,
        measure=measure,
        progress=progress,
    )
    result["left_out"] = left_out or {}
    return write_release(
        source, result, out, seed=seed, caps=caps, balanced=balanced, version=version, progress=progress
    )


def left_out_lines(left_out: dict[str, Any] | None) -> list[str]:
    """One line per reason ECGs were left out (``generation.json``'s ``left_out``), for stderr."""
    lines = []
    for reason, ids in (left_out or {}).items():
        if isinstance(ids, list) and ids:
            shown = ", ".join(map(str, ids[:10])) + (" ..." if len(ids) > 10 else "")
            ecgs = "ECG" if len(ids) == 1 else "ECGs"
            lines.append(f"left out {len(ids)} {ecgs} ({reason}): {shown}; see generation.json")
    return lines
