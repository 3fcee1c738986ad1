"""Which questions an LLM run evaluates: the published stratified 10 % sample, or an explicit id list.

LLM calls cost money, so the protocol (ECGQA.md, "The LLM evaluation protocol") evaluates a 10 %
sample of the test split stratified by ``qt3``: ``round(count * fraction)`` questions per stratum,
drawn with a seeded generator. The draw depends only on the set of sample ids per stratum (sorted
first), so the same release always yields the same sample whatever order the rows are stored in.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecgqa.constants import question_codes

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
                qt3=int(r["qt3"]) if r.get("qt3") is not None else question_codes(r["question_type"], r["attribute_type"])[2],
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
    """Questions of one split of a prepared QA directory (an ``ecgqa.data.PreparedData``)."""
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
    from ecgqa.release import AnswerSpace, load_shard, shards

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


def stratified_sample(
    questions: list[Question], fraction: float = DEFAULT_FRACTION, seed: int = DEFAULT_SEED
) -> list[Question]:
    """``round(n * fraction)`` questions per qt3 stratum (Python's round), seeded; sorted by sample id."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--fraction must be in (0, 1], not {fraction}")
    by_stratum: dict[int, list[Question]] = defaultdict(list)
    for q in questions:
        by_stratum[q.qt3].append(q)
    rng = np.random.default_rng(seed)
    chosen: list[Question] = []
    for qt3 in sorted(by_stratum):
        stratum = sorted(by_stratum[qt3], key=lambda q: q.sample_id)
        k = round(len(stratum) * fraction)
        if k == 0:
            continue
        picks = rng.choice(len(stratum), size=k, replace=False)
        chosen.extend(stratum[i] for i in picks)
    return sorted(chosen, key=lambda q: q.sample_id)


def read_ids_file(path: str | Path) -> list[int]:
    """Sample ids from a text file (one per line, ``#`` comments) or a JSON list."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--ids-file {path} not found")
    text = path.read_text()
    try:
        if text.lstrip().startswith("["):
            return [int(i) for i in json.loads(text)]
        return [int(line.split("#")[0]) for line in text.splitlines() if line.split("#")[0].strip()]
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: expected sample ids, one integer per line or a JSON list ({e})") from e


def select(
    questions: list[Question],
    fraction: float = DEFAULT_FRACTION,
    seed: int = DEFAULT_SEED,
    ids: list[int] | None = None,
    where: str = "",
) -> list[Question]:
    """The questions to evaluate: exactly ``ids`` when given, else the stratified sample."""
    if ids is None:
        return stratified_sample(questions, fraction, seed)
    by_id = {q.sample_id: q for q in questions}
    missing = [i for i in dict.fromkeys(ids) if i not in by_id]
    if missing:
        raise ValueError(f"{where}--ids-file names {len(missing)} sample ids not in this split, e.g. {missing[:10]}")
    return [by_id[i] for i in sorted(set(ids))]
