"""``generate``: a :class:`~ecgqa.generation.source.GenerationInput` → ECG-QA questions in the release's layout.

For every template (``templates.py``), every slot filling (:func:`questions`) and, in every split, every
ECG (or pair) the answer is computed (``answers.py``); ECGs are grouped by answer and sampled under the
caps (``sampling.py``); the release folder is written by ``writer.py``. A question is one (template, slot
values, lead) and keeps one ``question_id`` across splits; as in the release, the twelve leads of a lead
question share one id (the counter still advancing by twelve). Each sample's ``attribute`` is what the
release writes for its template (``templates.attribute_of``, ``data/release_attributes.json``).

At PTB-XL size (21,799 ECGs, ten irrelevant pairs each) the answers are not computed unit by unit: the
labels become one small-integer column per (row, class) (:class:`_Columns`), a question keys each ECG by
the entries it reads (``answers.reads``) and :func:`answers.answer` runs once per distinct key (or pair
of keys; comparison queries: per transition pattern), the groups following in the units' order
(:func:`_group_by_answer`). Each template is one task with its own random generator (seeded by
``seed`` and the template id), writing its samples to a part file as they are drawn; tasks run in
``num_proc`` forked processes and the writer merges the parts into shards in template order, so the
output is the same whatever ``num_proc`` and no run holds all its samples in memory.
"""

from __future__ import annotations

import gc
import json
import multiprocessing as mp
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, cached_property
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ecgqa.data.attributes import ANY_NOISE, AXIS_CLASSES
from ecgqa.generation import answers as A
from ecgqa.generation import sampling
from ecgqa.generation.source import GenerationInput, RowPool
from ecgqa.generation.templates import (
    LEAD_NAMES,
    NONE,
    Template,
    attribute_of,
    load_templates,
    paraphrase_pool,
    paraphrases,
    swap_words,
)

GENERATOR_VERSION = 3  # 2: one random generator per template (same output whatever num_proc); 3: the
# release's attributes, shared lead question ids, measured caps (data/release_caps.json), paraphrase pools
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
        42: list(RANGES),  # the release asks all three (release_caps.json: q1906 below, q1908 above)
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
        self._all = False

    def column(self, row: str, cls: str) -> np.ndarray:
        col = self._columns.get((row, cls))
        if col is None and self._all:  # no ECG carries this entry
            col = self._columns[(row, cls)] = np.zeros(len(self.ids), dtype=np.int16)
        if col is None:
            codes = self._codes
            out = np.empty(len(self.ids), dtype=np.int16)
            for i, e in enumerate(self.ids):
                r = self.labels[e].get(row)
                v = _MISSING if r is None else r.get(cls, _MISSING)
                c = codes.get(v)
                if c is None:
                    c = self._new_code(v)
                out[i] = c
            col = self._columns[(row, cls)] = out
        return col

    def _new_code(self, v: Any) -> int:
        if len(self._codes) >= 2**15 - 1:
            raise ValueError(f"labels hold {len(self._codes)}+ distinct values (expected 1 / 0 / None), e.g. {v!r}")
        c = self._codes[v] = len(self._codes)
        return c

    def build_all(self) -> None:
        """Every column at once, in one pass over the labels (before worker processes are forked)."""
        codes, n = self._codes, len(self.ids)
        built: dict[tuple[str, str], np.ndarray] = {}
        for i, e in enumerate(self.ids):
            for row, labels in self.labels[e].items():
                for cls, v in labels.items():
                    col = built.get((row, cls))
                    if col is None:
                        col = built[(row, cls)] = np.zeros(n, dtype=np.int16)  # 0: _MISSING
                    c = codes.get(v)
                    if c is None:
                        c = self._new_code(v)
                    col[i] = c
        for key, col in built.items():
            self._columns.setdefault(key, col)
        self._all = True

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
                    key = key * base + col.astype(np.int64)
                got = (key, base ** len(cols))
            else:
                uniq, inverse = np.unique(np.stack(cols, axis=1), axis=0, return_inverse=True)
                got = (inverse.reshape(-1).astype(np.int64), len(uniq))
            if len(self._keys) >= _KEYS_KEPT:  # a key array per ECG each: keep the recent ones only
                del self._keys[next(iter(self._keys))]
            self._keys[reads] = got
        return got


_MISSING = object()  # an entry the labels do not carry (answer() raises, naming the ECG)
_KEYS_KEPT = 16  # key arrays cached (one question asks its three splits; neighbouring questions share reads)


@dataclass
class _Units:
    """The ECGs (``single``) or pairs a question is asked of in one split: their ids and label positions
    (arrays, not a list of tuples: a split has ten irrelevant pairs per ECG)."""

    ids: np.ndarray  # ecg id of each unit's (first) ECG
    first: np.ndarray  # its position in _Columns.ids
    second_ids: np.ndarray | None = None  # pairs: the second ECG's id
    second: np.ndarray | None = None  # and position

    def __len__(self) -> int:
        return len(self.ids)

    def ecgs(self, i: int) -> list[int]:
        if self.second_ids is None:
            return [int(self.ids[i])]
        return [int(self.ids[i]), int(self.second_ids[i])]

    def in_order(self, picked: list[int]) -> list[int]:
        """``picked`` (unit indices) in the order of their ECG ids (pairs: first, then second)."""
        idx = np.asarray(picked, dtype=np.int64)
        if self.second_ids is None:
            return idx[np.argsort(self.ids[idx], kind="stable")].tolist()
        return idx[np.lexsort((self.second_ids[idx], self.ids[idx]))].tolist()


def _make_units(items: list[Any], cols: _Columns, pairs: bool) -> _Units:
    """Units from ecg ids (``pairs=False``) or (first, second) id pairs."""
    pos = cols.pos
    if not pairs:
        ids = np.array(items, dtype=np.int64)
        return _Units(ids, np.array([pos[e] for e in items], dtype=np.int64))
    arr = np.array(items, dtype=np.int64).reshape(-1, 2)
    first = np.array([pos[e] for e in arr[:, 0].tolist()], dtype=np.int64)
    second = np.array([pos[e] for e in arr[:, 1].tolist()], dtype=np.int64)
    return _Units(arr[:, 0].copy(), first, arr[:, 1].copy(), second)


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
    """Answer set → the indices (into ``units``, in order) of the units with that answer; units whose
    answer is None and those in ``taken`` are left out. The same groups, in the same order, as calling
    :func:`answers.answer` on every unit in turn, and the same error (its first unit) if one fails."""
    t = q.template
    n = len(units)
    if n == 0:
        return {}
    if taken:
        keep = np.ones(n, dtype=bool)
        keep[np.fromiter(taken, np.int64, len(taken))] = False
        sel = np.flatnonzero(keep)
    else:
        sel = np.arange(n)
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
    parts: str | Path,
    version: str = "ptbxl",
    seed: int = 42,
    caps: str = "release",
    balanced: bool = False,
    split_of: dict[int, str] | None = None,
    measure: bool = True,
    progress: bool = True,
    num_proc: int = 1,
) -> dict[str, Any]:
    """Generate every split's samples into ``parts`` (one file per template and split, :func:`read_parts`);
    returns what the writer needs besides them (counts, skipped templates, the split, …).

    ``split_of`` (ecg_id → split) overrides the seeded patient split (the release's ``*_ecgs.tsv``).
    ``num_proc`` > 1 runs the templates in that many forked processes; the output is the same whatever
    ``num_proc``: each template draws from its own generator seeded by (``seed``, template id). Equal label
    rows of ``inp`` are made one object (:class:`~ecgqa.generation.source.RowPool`): do not change them
    afterwards.
    """
    if caps not in sampling.CAPS:
        raise ValueError(f"--caps {caps!r}: expected one of {', '.join(sampling.CAPS)}")
    if measure:  # records the reader did not measure (every dataset but PTB-XL), in num_proc processes
        add_signal_labels(inp, progress=progress, num_proc=num_proc)
    templates = load_templates(version)
    rng = random.Random(seed)  # the split's irrelevant pairs; each template has its own (_template_rng)
    split_of = split_of or inp.split_of or sampling.split_by_patient(inp.ecgs, seed)
    ids_of = {s: sorted(int(e) for e in inp.ecgs.index if split_of.get(int(e)) == s) for s in sampling.SPLITS}
    outside = [int(e) for e in inp.ecgs.index if int(e) not in split_of]
    todo, skipped, classes = plan(inp, templates)
    pool = RowPool()  # equal label rows become one object: the labels of N ECGs take far less memory
    for rows in inp.labels.values():
        pool(rows)
    cols = _Columns(inp.labels, [int(e) for e in inp.ecgs.index])
    units = {}
    for s in sampling.SPLITS:
        consecutive = sampling.consecutive_pairs(inp.ecgs, ids_of[s])
        irrelevant = sampling.irrelevant_pairs(inp.ecgs, ids_of[s], rng)
        units[s] = {
            "single": _make_units(ids_of[s], cols, pairs=False),
            "comparison_consecutive": _make_units(consecutive, cols, pairs=True),
            "comparison_irrelevant": _make_units(irrelevant, cols, pairs=True),
        }
    by_template: dict[int, list[tuple[int, Question]]] = {}
    first_id: dict[tuple[int, tuple[str, ...]], int] = {}
    for n, q in enumerate(todo):  # the twelve leads of a lead question share its id; the counter still counts them
        qid = first_id.setdefault((q.template.id, q.values), n) if q.lead is not None else n
        by_template.setdefault(q.template.id, []).append((qid, q))
    parts = Path(parts)
    parts.mkdir(parents=True, exist_ok=True)
    job = _Job(
        inp=inp,
        classes=classes,
        cols=cols,
        units=units,
        seed=seed,
        caps=caps,
        balanced=balanced,
        parts=parts,
        paraphrases=paraphrases() if version == "ptbxl" else {},
    )
    done: dict[int, tuple[dict[str, int], dict[str, int]]] = {}
    bar = tqdm(total=len(todo), desc="generate", unit="question", disable=not progress)
    for tid, counts, n in _map_templates(job, list(by_template.items()), num_proc):
        done[tid] = (counts, n)
        bar.update(len(by_template[tid]))
    bar.close()
    order = [tid for tid in by_template if sum(done[tid][1].values())]
    return {
        "parts": parts,
        "order": order,
        "n": {tid: done[tid][1] for tid in order},
        "counts": {str(tid): done[tid][0] for tid in order},
        "paraphrases": job.paraphrases,
        "skipped": skipped,
        "split_of": split_of,
        "ids_of": ids_of,
        "outside_split": outside,
        "n_questions": len(todo),
        "templates": templates,
    }


@dataclass
class _Job:
    """What every template's task reads; worker processes inherit it by fork (:data:`_JOB`)."""

    inp: GenerationInput
    classes: frozenset[str] | None
    cols: _Columns
    units: dict[str, dict[str, _Units]]
    seed: int
    caps: str
    balanced: bool
    parts: Path
    paraphrases: dict[int, dict[str, tuple[str, ...]]]  # template → pool → patterns (templates.paraphrases)


_JOB: _Job | None = None


def _map_templates(job: _Job, tasks: list, num_proc: int) -> Iterator[tuple[int, dict, dict]]:
    """(template id, counts, samples per split) of each template task, as they finish."""
    global _JOB
    if num_proc <= 1 or len(tasks) <= 1 or "fork" not in mp.get_all_start_methods():
        for tid, qs in tasks:
            yield _run_template(job, tid, qs)
        return
    job.cols.build_all()  # before the fork: the workers share the columns instead of each reading the labels
    _JOB = job
    gc.freeze()  # the labels stay in pages the workers share (no collector writes to them)
    try:
        with mp.get_context("fork").Pool(num_proc) as pool:
            yield from pool.imap_unordered(_template_task, tasks)
    finally:
        _JOB = None
        gc.unfreeze()


def _template_task(task: tuple[int, list[tuple[int, Question]]]) -> tuple[int, dict, dict]:
    assert _JOB is not None, "a template task runs in a process forked by _map_templates"
    return _run_template(_JOB, *task)


def _template_rng(seed: int, tid: int, stream: str = "sample") -> random.Random:
    """The generator of one template's draws (sampling, option order; ``paraphrase``: pattern choice)."""
    return random.Random(f"ecgqa generate/{seed}/{stream}/{tid}")


def _run_template(job: _Job, tid: int, qs: list[tuple[int, Question]]) -> tuple[int, dict, dict]:
    """Every question of one template in every split → ``parts/<tid>.<split>.jsonl`` (and ``.para.jsonl``:
    the paraphrased variant of the same samples, line for line). Returns (tid, counts per answer, samples
    per split). One sample a line: its JSON up to ``sample_id`` (which the writer numbers), a tab, the rest."""
    rng, para_rng = _template_rng(job.seed, tid), _template_rng(job.seed, tid, "paraphrase")
    patterns = job.paraphrases.get(tid)
    counts: dict[str, int] = {}
    n = dict.fromkeys(sampling.SPLITS, 0)
    used: dict[str, set[int]] = {s: set() for s in sampling.SPLITS}
    files: dict[str, Any] = {}
    try:
        for split in sampling.SPLITS:
            files[split] = open(job.parts / f"{tid}.{split}.jsonl", "w")  # noqa: SIM115 - closed below
            if patterns:
                files[split + "/para"] = open(job.parts / f"{tid}.{split}.para.jsonl", "w")  # noqa: SIM115
        for qid, q in qs:
            t = q.template
            q_attribute = attribute_of(t, q.values, job.classes)  # choose questions: per sample, in text order
            for split in sampling.SPLITS:
                u = job.units[split][t.scope]
                taken = used[split] if t.kind == "choose" else None
                groups = _group_by_answer(q, u, job.cols, job.inp, job.classes, taken)
                chosen = sampling.pick(
                    groups, question_type=t.question_type, split=split, caps=job.caps, balanced=job.balanced, rng=rng
                )
                if chosen is None:
                    continue
                out, para = files[split], files.get(split + "/para")
                for ans, picked in chosen.items():
                    akey = "|".join(ans)
                    counts[akey] = counts.get(akey, 0) + len(picked)
                    n[split] += len(picked)
                    for i in u.in_order(picked):
                        text, shown, attribute = q.text, q.values, q_attribute
                        if taken is not None:
                            taken.add(i)
                            text, shown = _maybe_swap(q, rng)
                            attribute = attribute_of(t, shown, job.classes)
                        ecgs = u.ecgs(i)
                        sample = {
                            "template_id": t.id,
                            "question_id": qid,
                            "question_type": t.question_type,
                            "attribute_type": t.attribute_type,
                            "question": text,
                            "answer": _order(t, ans, shown),
                            "ecg_id": ecgs,
                            "attribute": attribute,
                        }
                        tail = ""
                        if job.inp.mapped:
                            paths = [os.path.abspath(job.inp.ecgs.at[e, "record"]) for e in ecgs]
                            tail = ', "ecg_path": ' + json.dumps(paths)
                        out.write(json.dumps(sample)[:-1] + "\t" + tail + "\n")
                        if para is not None:
                            pattern = para_rng.choice(paraphrase_pool(patterns, split))
                            if shown == q.values:
                                sample["question"] = t.fill(shown, q.lead, text=pattern)
                            else:  # swapped as the template text is: by the word swap (template 37's quirk)
                                a, b = q.values[-2:]
                                sample["question"] = swap_words(t.fill(q.values, q.lead, text=pattern), a, b)
                            para.write(json.dumps(sample)[:-1] + "\t" + tail + "\n")
    finally:
        for f in files.values():
            f.close()
    return tid, counts, n


def read_parts(result: dict[str, Any], split: str, variant: str = "template") -> Iterator[str]:
    """The samples of one split as JSON texts (``sample_id`` numbered from 0, template order), read from the
    parts :func:`run` wrote; ``variant="paraphrased"``: the paraphrased samples, with their template
    sample's ``sample_id``."""
    sid = 0
    for tid in result["order"]:
        count = result["n"][tid][split]
        if variant == "paraphrased" and not result["paraphrases"].get(tid):
            sid += count
            continue
        suffix = "para.jsonl" if variant == "paraphrased" else "jsonl"
        with open(result["parts"] / f"{tid}.{split}.{suffix}") as f:
            for line in f:
                head, tail = line.rstrip("\n").split("\t", 1)
                yield f'{head}, "sample_id": {sid}{tail}}}'
                sid += 1


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


def _maybe_swap(q: Question, rng: random.Random) -> tuple[str, tuple[str, ...]]:
    """A choose question's text and slot values in text order: swapped half the time, with the release's
    word swap."""
    a, b = q.values[-2:]  # template 40 has the feature first: (feature, range1, range2)
    if rng.random() > 0.5:
        return swap_words(q.text, a, b), (*q.values[:-2], b, a)
    return q.text, q.values


def _order(t: Template, ans: tuple[str, ...], shown: tuple[str, ...]) -> list[str]:
    """Answers of a choose question in the question's option order; otherwise in option order."""
    if t.kind == "choose":
        return [a for a in shown[-2:] if a in ans] or list(ans)
    index = _option_index(t)
    return sorted(ans, key=lambda a: index.get(a, len(index)))


@cache
def _option_index(t: Template) -> dict[str, int]:
    return {o: i for i, o in enumerate(t.options)}


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
    optionally ``metadata``. ``num_proc``: processes measuring the records and generating templates in
    parallel (the output does not depend on it). Returns the content of ``out/generation.json``.
    """
    from ecgqa.generation.ptbxl import check_num_proc
    from ecgqa.generation.writer import PARTS, staged_release, write_release

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
    with staged_release(out) as staging:
        result = run(
            source,
            parts=staging / PARTS,
            version=version,
            seed=seed,
            caps=caps,
            balanced=balanced,
            split_of=split_of,
            measure=measure,
            progress=progress,
            num_proc=num_proc,
        )
        result["left_out"] = left_out or {}
        return write_release(
            source, result, staging, seed=seed, caps=caps, balanced=balanced, version=version, progress=progress
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
