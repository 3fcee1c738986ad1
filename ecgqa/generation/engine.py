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
from itertools import combinations
from pathlib import Path
from typing import Any

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

    @property
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


def _units(t: Template, split_ids: list[int], pairs: dict[str, list[tuple[int, int]]]) -> list[Any]:
    if t.scope == "single":
        return split_ids
    return pairs[t.scope]


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

    samples: dict[str, list[dict]] = {s: [] for s in sampling.SPLITS}
    counts: dict[str, dict[str, int]] = {}
    used: dict[tuple[str, int], set] = {}
    bar = tqdm(total=len(todo) * 3, desc="generate", unit="question", disable=not progress)
    for qid, q in enumerate(todo):
        t = q.template
        for split in sampling.SPLITS:
            bar.update(1)
            groups: dict[tuple[str, ...], list] = {}
            taken = used.setdefault((split, t.id), set())
            for unit in _units(t, ids_of[split], pairs[split]):
                if t.kind == "choose" and unit in taken:
                    continue
                ecgs = unit if isinstance(unit, tuple) else (unit,)
                rows = [inp.labels[e] for e in ecgs]
                ans = A.answer(t, q.values, q.lead, rows, ecgs=ecgs, has_likelihood=inp.has_likelihood, classes=classes)
                if ans is None:
                    continue
                groups.setdefault(tuple(sorted(ans)), []).append(unit)
            chosen = sampling.pick(groups, kind=t.kind, split=split, caps=caps, balanced=balanced, rng=rng)
            if chosen is None:
                continue
            for ans, units in chosen.items():
                for unit in sorted(units):
                    ecgs = list(unit) if isinstance(unit, tuple) else [unit]
                    text, attribute = q.text, list(q.values) or None
                    if t.kind == "choose":
                        taken.add(unit)
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
                            "ecg_id": ecgs,
                            "attribute": attribute,
                        }
                    )
                    key = f"{t.id}"
                    counts.setdefault(key, {})
                    akey = "|".join(ans)
                    counts[key][akey] = counts[key].get(akey, 0) + 1
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


def add_signal_labels(inp: GenerationInput, *, progress: bool = True, num_proc: int = 1) -> int:
    """Numeric-feature and heart-axis labels from each record's signal, for ECGs whose labels lack them.

    The classes are those :func:`ecgqa.data.attributes.derive` gives (``release_rules=True``) for the
    record's :func:`~ecgqa.data.attributes.measure_record` (in ``num_proc`` processes:
    :func:`~ecgqa.data.attributes.measure_records`); an unreadable record gets them unknown.
    Returns how many ECGs were measured.
    """
    from ecgqa.data.attributes import Statements, derive, measure_records

    if inp.dataset == "ptbxl":
        return 0  # the PTB-XL reader measures while it derives (or was told not to)
    todo = [
        int(e) for e in inp.ecgs.index if "within the normal range of rr interval" not in inp.labels[int(e)]["entire"]
    ]
    if not todo:
        return 0
    nothing = Statements(frozenset(), frozenset(), frozenset(), {})
    measured = measure_records([inp.ecgs.at[e, "record"] for e in todo], num_proc, progress)
    for e, m in zip(todo, measured, strict=True):
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
    num_proc: int = 1,
) -> dict[str, Any]:
    """Generate ECG-QA questions and write them to ``out`` in the release's layout (``ecgqa.generate``).

    ``source``: a :class:`GenerationInput` (any dataset), or ``"ptbxl"`` with ``records`` (a PTB-XL root) and
    optionally ``metadata``. ``num_proc``: processes measuring the records (the output does not depend on
    it). Returns the content of ``out/generation.json``.
    """
    from ecgqa.generation.ptbxl import check_num_proc
    from ecgqa.generation.writer import write_release

    check_num_proc(num_proc)
    if caps not in sampling.CAPS:  # said before the records are measured, not after
        raise ValueError(f"--caps {caps!r}: expected one of {', '.join(sampling.CAPS)}")
    if isinstance(source, str):
        if source != "ptbxl":
            raise ValueError(f"source {source!r}: pass 'ptbxl' or a GenerationInput (see ecgqa.generation.datasets)")
        if records is None:
            raise ValueError("generate('ptbxl', ...) needs records= (a PTB-XL root)")
        from ecgqa.generation.ptbxl import read_ptbxl

        source, left_out = read_ptbxl(records, metadata, measure=measure, progress=progress, num_proc=num_proc)
    if measure:  # other datasets: their records measured here, in num_proc processes (run() finds nothing left)
        add_signal_labels(source, progress=progress, num_proc=num_proc)
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
    """One line per reason ECGs (or codes) were left out (``generation.json``'s ``left_out``), for stderr.

    ``{reason: [ecg_id, …]}`` → "left out N ECGs (reason)"; ``{reason: {code: [ecg_id, …] or count}}``
    (codes a reader could not use, e.g. ``unknown_scp_codes``) → "reason: N codes ignored (code: k ECGs, …)".
    """
    lines = []
    for reason, ids in (left_out or {}).items():
        if isinstance(ids, list) and ids:
            shown = ", ".join(map(str, ids[:10])) + (" ..." if len(ids) > 10 else "")
            ecgs = "ECG" if len(ids) == 1 else "ECGs"
            note = f": {LEFT_OUT_NOTES[reason]}" if reason in LEFT_OUT_NOTES else ""
            lines.append(f"left out {len(ids)} {ecgs} ({reason}{note}): {shown}; see generation.json")
        elif isinstance(ids, dict) and ids and all(isinstance(v, list | int) for v in ids.values()):
            counts = {code: len(v) if isinstance(v, list) else v for code, v in ids.items()}
            top = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
            shown = ", ".join(f"{code}: {n} ECG{'' if n == 1 else 's'}" for code, n in top[:10])
            more = " ..." if len(top) > 10 else ""
            codes = "code" if len(top) == 1 else "codes"
            lines.append(f"{reason}: {len(top)} {codes} ignored ({shown}{more}); see generation.json")
    return lines


#: What a ``left_out`` reason means where the ECGs are not dropped altogether.
LEFT_OUT_NOTES = {"no_recording_date": "from consecutive pairs only"}
