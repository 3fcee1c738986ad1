"""Which questions an LLM run evaluates: the paper's published sample, its 10 % draw, or an id list.

On PTB-XL test data the default is the list of ids the ECG-QA paper's LLM runs used, as its authors
published it (:mod:`ecgqa.evaluation.paper_sample`; :func:`resolve_sample`, :func:`select_sample`): ids of the
list that the prepared data lacks are counted and reported, never silently dropped. Elsewhere
(``--sample draw``) the original draw is repeated:

LLM calls cost money, so the paper evaluated a 10 % sample of the test split stratified by ``qt3``
(question scope x kind x attribute type, 54 keys). :func:`stratified_sample` repeats the original
draw exactly (ecg-qa ``llm_modeling/random_sample.py``): Python's ``random.seed(42)``, then for
each qt3 key 0..53 in order (``itertools.product`` of scope, kind, attribute type), ``random.sample``
of ``round(n / 10)`` questions from that key's questions *in manifest order*: the order the original
preprocessing lists them, i.e. every shard of the split sorted by file name as strings (upstream's
``sorted(glob)``; ``ecgqa.data.release.shards`` sorts the same way), samples in file order. A prepared
directory keeps exactly that order (``prepare`` streams the shards in order), so the same release gives
the ids the original script draws, for the template and the paraphrased questions alike (they share
sample ids and order). Samples ``prepare`` dropped (missing records) shift the draw; the report
records how many were dropped.

``--ids-file`` evaluates a given list instead: sample ids (one per line, ``#`` comments, or a JSON
list, or separated by commas/whitespace), or the original harness's sampled manifest
(``<split>_sampled.tsv``: a folder line, then ``<index>.mat<TAB>sizes...``, where ``index`` is the
question's position in manifest order).
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from ecgqa.data.constants import question_codes

DEFAULT_FRACTION = 0.1
DEFAULT_SEED = 42


@dataclass(frozen=True)
class Question:
    """One QA sample with everything the prompt and the scorer need, class names resolved."""

    sample_id: int
    question: str
    question_type: str
    attribute_type: str
    qt3: int
    answer: tuple[str, ...]  # true classes restricted to the options ([] = none)
    options: tuple[str, ...]  # the valid classes, in answer-space order
    ecg_ids: tuple[int, ...]
    ecg_rows: tuple[int, ...] | None = None  # rows of the prepared signal store, when known
    attribute: tuple[str, ...] = field(default_factory=tuple)
    template_id: int | None = None

    @property
    def is_verify(self) -> bool:
        return self.question_type.endswith("verify")

    @property
    def is_comparison(self) -> bool:
        return self.question_type.startswith("comparison")


def questions_from_rows(rows: Iterable[dict[str, Any]], classes: list[str]) -> list[Question]:
    """Questions from prepared-table rows (answer / valid_classes as indices into ``classes``)."""
    out = []
    for r in rows:
        valid = sorted({int(i) for i in r["valid_classes"]})
        answer = [int(i) for i in r["answer"] if int(i) in set(valid)]
        rows_ = r.get("ecg_rows")
        out.append(
            Question(
                sample_id=int(r["sample_id"]),
                question=str(r["question"]),
                question_type=str(r["question_type"]),
                attribute_type=str(r["attribute_type"]),
                qt3=int(r["qt3"])
                if r.get("qt3") is not None
                else question_codes(r["question_type"], r["attribute_type"])[2],
                answer=tuple(classes[i] for i in sorted(set(answer))),
                options=tuple(classes[i] for i in valid),
                ecg_ids=tuple(int(i) for i in r["ecg_id"]),
                ecg_rows=tuple(int(i) for i in rows_) if rows_ is not None else None,
                attribute=tuple(r.get("attribute") or ()),
                template_id=int(r["template_id"]) if r.get("template_id") is not None else None,
            )
        )
    return out


def questions_from_prepared(data: Any, split: str) -> list[Question]:
    """Questions of one split of a prepared QA directory (an ``ecgqa.data.prepared.PreparedData``)."""
    if data.meta.get("task") != "qa":
        raise ValueError(
            f"{data.path}: llm-eval needs a prepared QA directory (meta.json task 'qa'), not task "
            f"{data.meta.get('task')!r}; run `ecgqa prepare` with the qa task and pass that folder to --data"
        )
    if split not in data.splits:
        raise ValueError(f"{data.path}: no split {split!r}; it holds {data.splits}. Pick one with --split")
    classes = list(data.meta.get("answer_classes") or data.classes)
    table = data.split(split)
    return questions_from_rows(table.to_list() if hasattr(table, "to_list") else list(table), classes)


def questions_from_release(version_dir: str | Path, split: str, variant: str = "template") -> list[Question]:
    """Questions straight from an ECG-QA release folder (no prepared signals: ``ecg_rows`` is None)."""
    from ecgqa.data.release import AnswerSpace, load_shard, shards

    version_dir = Path(version_dir)
    space = AnswerSpace.from_release(version_dir)
    rows = []
    for shard in shards(version_dir, variants=(variant,), splits=(split,)):
        for s in load_shard(shard):
            codes = space.valid_classes(s, where=f"{shard}: sample {s['sample_id']}: ")
            rows.append(
                {
                    **s,
                    "answer": space.encode(s["answer"], where=f"{shard}: sample {s['sample_id']}: "),
                    "valid_classes": codes,
                    "qt3": question_codes(s["question_type"], s["attribute_type"])[2],
                    "ecg_rows": None,
                }
            )
    if not rows:
        raise ValueError(f"{version_dir}: no {variant}/{split}/*.json shards found")
    return questions_from_rows(rows, list(space.classes))


N_QT3 = 54  # 3 scopes x 3 kinds x 6 attribute types


def stratified_sample(
    questions: list[Question], fraction: float = DEFAULT_FRACTION, seed: int = DEFAULT_SEED
) -> list[Question]:
    """The paper's draw over ``questions`` given in manifest order; returned sorted by sample id.

    ``round(n * fraction)`` per qt3 key (exact decimal arithmetic, so 0.1 gives ``round(n / 10)``
    with Python's half-to-even rounding, as the original), keys visited 0..53 with one generator.
    """
    return sorted(draw_in_manifest_order(questions, fraction, seed), key=lambda q: q.sample_id)


def draw_in_manifest_order(
    questions: list[Question], fraction: float = DEFAULT_FRACTION, seed: int = DEFAULT_SEED
) -> list[Question]:
    """The draw in the order the original script wrote its ``<split>_sampled.tsv``: stratum 0..53, each
    stratum's questions in ``random.sample``'s order. The harness read that manifest in file order
    (fairseq-signals ``RawECGTextDataset.ordered_indices``: ``np.arange`` unless shuffled; ``llm_modeling.py``
    iterates with ``shuffle=False``), so it is the order its answers were asked and its readings cached."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--fraction must be in (0, 1], not {fraction}")
    share = Fraction(str(fraction))
    by_key: dict[int, list[Question]] = defaultdict(list)
    for q in questions:
        if not 0 <= q.qt3 < N_QT3:
            raise ValueError(f"sample {q.sample_id}: qt3 {q.qt3} outside 0..{N_QT3 - 1}")
        by_key[q.qt3].append(q)
    rng = random.Random(seed)  # the same stream as random.seed(seed) + random.sample
    chosen: list[Question] = []
    for key in range(N_QT3):
        candidates = by_key.get(key, [])
        chosen.extend(rng.sample(candidates, round(len(candidates) * share)))
    return chosen


def harness_order(
    questions: list[Question], selection: Selection, fraction: float = DEFAULT_FRACTION, seed: int = DEFAULT_SEED
) -> tuple[list[Question], str]:
    """``selection``'s questions in the order the original harness asked them, and how that order was found.

    ``--prompt paper-as-published`` needs it: the harness cached per-lead readings across questions (defect
    D2), so a prompt depends on the questions asked before it. Where the draw (seed 42 and 10 % for the
    published sample) over ``questions`` in manifest order gives exactly the selected ids, its order is the
    harness's; otherwise that order is unknown and ascending sample id stands in (said in the report).
    """
    chosen = selection.questions
    if selection.sample in ("paper", "draw"):
        f, s = (DEFAULT_FRACTION, DEFAULT_SEED) if selection.sample == "paper" else (fraction, seed)
        drawn = draw_in_manifest_order(questions, f, s)
        if {q.sample_id for q in drawn} == {q.sample_id for q in chosen} and not selection.missing:
            return drawn, "harness: the seeded draw's manifest order (stratum by stratum, random.sample order)"
    return sorted(chosen, key=lambda q: q.sample_id), (
        "ascending sample id (the seeded draw does not give exactly these questions here, so the original "
        "harness's order is not known)"
    )


@dataclass(frozen=True)
class IdList:
    """What an ``--ids-file`` names: sample ids, or positions in manifest order (the original's .tsv)."""

    values: list[int]
    kind: str = "sample_id"  # or "manifest_index"


_MANIFEST_LINE = re.compile(r"^(\d+)\.mat(?:\t.*)?$")


def read_ids_file(path: str | Path) -> IdList:
    """Parse an ``--ids-file`` (formats in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--ids-file {path} not found")
    text = path.read_text()
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    try:
        if text.lstrip().startswith("["):
            return IdList([int(i) for i in json.loads(text)])
        if len(lines) > 1 and all(_MANIFEST_LINE.match(line) for line in lines[1:]):
            return IdList([int(_MANIFEST_LINE.match(line).group(1)) for line in lines[1:]], "manifest_index")
        return IdList([int(tok) for line in lines for tok in re.split(r"[\s,]+", line) if tok])
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{path}: expected sample ids (one integer per line, comma/space separated, or a JSON list) or the "
            f"original harness's <split>_sampled.tsv ({e})"
        ) from e


def select(
    questions: list[Question],
    fraction: float = DEFAULT_FRACTION,
    seed: int = DEFAULT_SEED,
    ids: IdList | list[int] | None = None,
    where: str = "",
) -> list[Question]:
    """The questions to evaluate: exactly ``ids`` when given, else the paper's stratified sample."""
    if ids is None:
        return stratified_sample(questions, fraction, seed)
    if not isinstance(ids, IdList):
        ids = IdList(list(ids))
    if ids.kind == "manifest_index":
        bad = [i for i in ids.values if not 0 <= i < len(questions)]
        if bad:
            raise ValueError(
                f"{where}--ids-file names manifest positions beyond the {len(questions)} questions of "
                f"this split, e.g. {bad[:10]}"
            )
        picked = {questions[i].sample_id: questions[i] for i in ids.values}
        return [picked[k] for k in sorted(picked)]
    by_id = {q.sample_id: q for q in questions}
    missing = [i for i in dict.fromkeys(ids.values) if i not in by_id]
    if missing:
        raise ValueError(f"{where}--ids-file names {len(missing)} sample ids not in this split, e.g. {missing[:10]}")
    return [by_id[i] for i in sorted(set(ids.values))]


SAMPLES = ("paper", "draw")


@dataclass(frozen=True)
class Selection:
    """The questions a run evaluates and where they came from (the report's ``sampling`` block).

    ``sample``: ``paper`` (the published list, ``ecgqa.evaluation.paper_sample``), ``draw`` (the seeded stratified
    draw) or ``ids-file``. ``sha256``: of the published file for ``paper``; of the selected ids written
    one per line (``ecgqa.evaluation.paper_sample.ids_sha256``) otherwise. ``missing``: ids of the published
    list not in the prepared split (evaluated questions are the rest; the count is reported, never hidden).
    """

    questions: list[Question]
    sample: str
    sha256: str
    missing: tuple[int, ...] = ()
    n_listed: int | None = None

    def describe(self) -> str:
        if self.sample == "paper":
            return (
                f"the published LLM sample ({self.n_listed} ids, sha256 {self.sha256[:12]}…), "
                f"{len(self.missing)} of its ids not in the prepared data"
            )
        if self.sample == "ids-file":
            return f"--ids-file (sha256 {self.sha256[:12]}… of the ids)"
        return f"the seeded stratified draw (sha256 {self.sha256[:12]}… of the ids)"


def resolve_sample(sample: str | None, version: str, split: str, *, ids_file: bool = False) -> str:
    """Which sample a run uses: the published list by default wherever it applies (PTB-XL test)."""
    from ecgqa.evaluation.paper_sample import applies

    if sample is not None and sample not in SAMPLES:
        raise ValueError(f"--sample {sample!r}: expected one of {', '.join(SAMPLES)}")
    if ids_file:
        if sample is not None:
            raise ValueError("--ids-file names the questions itself; leave out --sample")
        return "ids-file"
    if sample == "paper" and not applies(version, split):
        raise ValueError(
            f"--sample paper: the published LLM sample lists PTB-XL test questions only, and this data is "
            f"{version} {split}; use --sample draw (the seed-42 stratified draw) or --ids-file"
        )
    if sample is None:
        return "paper" if applies(version, split) else "draw"
    return sample


def select_sample(
    questions: list[Question],
    sample: str,
    fraction: float = DEFAULT_FRACTION,
    seed: int = DEFAULT_SEED,
    ids: IdList | list[int] | None = None,
    where: str = "",
) -> Selection:
    """The questions of ``sample`` (:func:`resolve_sample`), sorted by sample id."""
    from ecgqa.evaluation.paper_sample import PAPER_SAMPLE_SHA256, ids_sha256, paper_sample_ids

    if sample == "paper":
        listed = paper_sample_ids()
        by_id = {q.sample_id: q for q in questions}
        chosen = [by_id[i] for i in listed if i in by_id]
        missing = tuple(i for i in listed if i not in by_id)
        return Selection(chosen, "paper", PAPER_SAMPLE_SHA256, missing, len(listed))
    if sample == "ids-file":
        if ids is None:
            raise ValueError("sample 'ids-file' needs the ids")
        chosen = select(questions, fraction, seed, ids, where=where)
    elif sample == "draw":
        chosen = stratified_sample(questions, fraction, seed)
    else:
        raise ValueError(f"unknown sample {sample!r}")
    return Selection(chosen, sample, ids_sha256([q.sample_id for q in chosen]))
