"""Work out what a free-text question asks: its question type and the options it may be answered from.

The model scores every class, but ECG-QA evaluates only a question's ``valid_classes`` (its template's
classes, or the options a choose question names). A typed question gets them by, in order:

1. ``dataset``: the question, normalised, is one of the prepared data's questions;
2. ``similar``: it is close (TF-IDF over word and character n-grams) to one of them, so it is
   taken to come from the same template; a choose question's options are the classes it names;
3. ``fallback``: nothing is close: every class is valid and the question type is unknown.

The result says which was used, so the page can tell the user how far to trust the options.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Cosine similarity a typed question needs to borrow a dataset question's template.
SIMILARITY_THRESHOLD = 0.6

_PUNCT = re.compile(r"[^\w/\-\s]")
_SPACE = re.compile(r"\s+")


def normalise(question: str) -> str:
    """Lower case, no punctuation, single spaces: "Does this ECG show X?" == "does this ecg show x"."""
    return _SPACE.sub(" ", _PUNCT.sub(" ", question.lower())).strip()


#: The question-table columns the index reads.
QUESTION_COLUMNS = ("question", "question_type", "attribute_type", "template_id", "valid_classes", "ecg_id")


def arrow_table(split: Any, columns: tuple[str, ...] | list[str]) -> Any:
    """Columns of a prepared split (a ``datasets.Dataset``) as one ``pyarrow.Table`` (memory-mapped, no copy)."""
    return split.select_columns(list(columns)).with_format("arrow")[:]


def first_rows(table: Any, keys: list[str]) -> np.ndarray:
    """Row numbers (ascending) of the first row of each distinct value of ``keys`` in an Arrow table."""
    import pyarrow as pa

    indexed = table.select(keys).append_column("_row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    firsts = indexed.group_by(keys, use_threads=False).aggregate([("_row", "min")]).column("_row_min")
    return np.sort(firsts.to_numpy())


def template_unions(table: Any) -> dict[int, list[int]]:
    """Template id → the sorted union of its rows' valid classes, computed column-wise."""
    import pyarrow.compute as pc

    valid = table.column("valid_classes").combine_chunks()
    templates = table.column("template_id").to_numpy()
    flat = pc.list_flatten(valid).to_numpy()
    parent = pc.list_parent_indices(valid).to_numpy()
    out: dict[int, list[int]] = {int(t): [] for t in np.unique(templates)}
    if len(flat):
        width = int(flat.max()) + 1  # (template, class) as one int64: np.unique(axis=0) is ~100x slower
        pairs = np.unique(templates[parent].astype(np.int64) * width + flat)
        for t, c in zip((pairs // width).tolist(), (pairs % width).tolist(), strict=False):
            out[t].append(c)
    return out


@dataclass(frozen=True)
class QuestionMatch:
    """What a question was taken to be, and how that was decided (``source``)."""

    source: str  # "dataset" | "similar" | "fallback"
    valid_classes: list[int]  # indices into the class list the index was built with
    question_type: str | None = None
    attribute_type: str | None = None
    template_id: int | None = None
    matched_question: str | None = None
    similarity: float = 0.0
    n_ecgs: int | None = None  # ECGs the question type needs (1 single, 2 comparison), None when unknown


@dataclass
class _Entry:
    question: str
    question_type: str
    attribute_type: str
    template_id: int
    valid_classes: list[int]
    n_ecgs: int


@dataclass
class QuestionIndex:
    """Every distinct question of the prepared data, searchable by text."""

    classes: list[str]
    entries: list[_Entry] = field(default_factory=list)
    template_classes: dict[int, list[int]] = field(default_factory=dict)  # union of valid classes per template

    def __post_init__(self) -> None:
        self._exact: dict[str, int] = {}
        self._vectorizer = None
        self._matrix = None

    @classmethod
    def from_rows(
        cls, classes: list[str], rows: list[dict[str, Any]], template_classes: dict[int, list[int]] | None = None
    ) -> QuestionIndex:
        """Build from QA rows (question, question_type, attribute_type, template_id, valid_classes, ecg_id).

        ``template_classes`` (template id → union of its valid classes) is given when ``rows`` are only
        each question's first row (``from_tables``); otherwise it is the union over ``rows``.
        """
        index = cls(list(classes))
        union: dict[int, set[int]] = defaultdict(set)
        for row in rows:
            key = normalise(row["question"])
            tid = int(row["template_id"])
            if template_classes is None:
                union[tid].update(int(c) for c in row["valid_classes"])
            if key in index._exact:
                continue
            index._exact[key] = len(index.entries)
            index.entries.append(
                _Entry(
                    row["question"],
                    row["question_type"],
                    row["attribute_type"],
                    tid,
                    [int(c) for c in row["valid_classes"]],
                    len(row["ecg_id"]),
                )
            )
        index.template_classes = (
            dict(template_classes) if template_classes is not None else {t: sorted(c) for t, c in union.items()}
        )
        if index.entries:
            from sklearn.feature_extraction.text import TfidfVectorizer

            index._vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)
            index._matrix = index._vectorizer.fit_transform([normalise(e.question) for e in index.entries])
        return index

    @classmethod
    def from_tables(cls, classes: list[str], tables: list[Any]) -> QuestionIndex:
        """``from_rows`` over the rows of Arrow tables, in order, with Python work per *distinct* question
        only: a full PTB-XL directory has 414k questions but few distinct texts, and a per-row Python pass
        (normalising every row) made the demo's start-up about a minute longer (docs/scale.md)."""
        import pyarrow as pa

        table = pa.concat_tables([t.select(list(QUESTION_COLUMNS)) for t in tables])
        distinct = table.take(first_rows(table, ["question"])).to_pylist()
        return cls.from_rows(classes, distinct, template_classes=template_unions(table))

    @classmethod
    def from_prepared(cls, data: Any) -> QuestionIndex:
        """Index a ``PreparedData`` of task "qa" over all its splits."""
        return cls.from_tables(list(data.classes), [arrow_table(data.split(s), QUESTION_COLUMNS) for s in data.splits])

    def match(self, question: str) -> QuestionMatch:
        key = normalise(question)
        if key in self._exact:
            e = self.entries[self._exact[key]]
            return self._result("dataset", e, e.valid_classes, 1.0)
        if self._matrix is not None and key:
            scores = (self._matrix @ self._vectorizer.transform([key]).T).toarray().ravel()
            best = int(np.argmax(scores))
            sim = float(scores[best])
            if sim >= SIMILARITY_THRESHOLD:
                e = self.entries[best]
                valid = e.valid_classes
                if e.question_type.endswith("choose"):
                    named = self._named_classes(key, self.template_classes.get(e.template_id, []))
                    if len(named) >= 2:
                        valid = named
                return self._result("similar", e, valid, sim)
        return QuestionMatch("fallback", list(range(len(self.classes))))

    def _named_classes(self, key: str, candidates: list[int]) -> list[int]:
        """Classes spelled out in the question, longest first so "lead ii" does not also claim "lead i"."""
        found, text = [], f" {key} "
        for c in sorted(candidates, key=lambda i: -len(self.classes[i])):
            name = f" {normalise(self.classes[c])} "
            if name.strip() and name in text:
                found.append(c)
                text = text.replace(name, " | ")
        return sorted(found)

    @staticmethod
    def _result(source: str, e: _Entry, valid: list[int], sim: float) -> QuestionMatch:
        return QuestionMatch(
            source, list(valid), e.question_type, e.attribute_type, e.template_id, e.question, round(sim, 4), e.n_ecgs
        )
