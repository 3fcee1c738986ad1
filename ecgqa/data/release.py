"""The ECG-QA release files: answer space, per-template classes, shards, and label encoding.

The answer space is ``answers.csv`` minus ``none``, in file order (103 classes for PTB-XL, 187 for
MIMIC-IV-ECG). ``none`` means the empty answer set, i.e. the all-zero target.
"""

from __future__ import annotations

import ast
import csv
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from ecgqa.data.constants import question_codes

NONE = "none"
SPLITS = ("train", "valid", "test")
VARIANTS = ("template", "paraphrased")
RELEASE_FILES = ("answers.csv", "answers_for_each_template.csv", "train_ecgs.tsv", "valid_ecgs.tsv", "test_ecgs.tsv")
REQUIRED_KEYS = (
    "template_id",
    "question_id",
    "sample_id",
    "question_type",
    "attribute_type",
    "question",
    "answer",
    "ecg_id",
)


class ReleaseError(ValueError):
    """A release file is missing or malformed; the message names the file (and sample)."""


def read_class_csv(path: str | Path) -> list[str]:
    """Class names of an ``index,class`` CSV (answers.csv, grounding_class.csv, qa_class.csv), in file order."""
    path = Path(path)
    if not path.is_file():
        raise ReleaseError(f"{path} not found: expected an ECG-QA class list with the columns index,class")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "class" not in rows[0]:
        raise ReleaseError(f"{path}: expected the columns index,class")
    return [row["class"] for row in rows]


@dataclass(frozen=True)
class AnswerSpace:
    """Answer classes of one release version and the classes each template may be answered from."""

    classes: tuple[str, ...]
    template_classes: dict[int, tuple[str, ...]]

    @classmethod
    def from_release(cls, release_dir: str | Path) -> AnswerSpace:
        release_dir = Path(release_dir)
        classes = tuple(c for c in read_class_csv(release_dir / "answers.csv") if c != NONE)
        path = release_dir / "answers_for_each_template.csv"
        if not path.is_file():
            raise ReleaseError(f"{path} not found")
        template_classes = {}
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                try:
                    template_classes[int(row["template_id"])] = tuple(ast.literal_eval(row["classes"]))
                except (KeyError, ValueError, SyntaxError) as e:
                    raise ReleaseError(f"{path}: malformed row {row}") from e
        return cls(classes, template_classes)

    def __len__(self) -> int:
        return len(self.classes)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def encode(self, names: list[str], *, where: str = "") -> list[int]:
        """Class indices of an answer list (``["none"]`` → ``[]``), sorted."""
        index = self._index
        out = []
        for name in names:
            if name == NONE:
                continue
            if name not in index:
                raise ReleaseError(f"{where}unknown answer class {name!r} (not in answers.csv)")
            out.append(index[name])
        return sorted(set(out))

    def valid_classes(self, sample: dict[str, Any], *, where: str = "") -> list[int]:
        """The options a question may be answered from.

        See docs/benchmark.md, "Targets: the answer space and valid classes".

        choose questions: the classes named in ``attribute`` ("above the normal range of qt
        interval" → "above the normal range"); all others: the template's classes minus none.
        """
        if sample["question_type"].endswith("choose"):
            if not sample.get("attribute"):
                # with no options every prediction would be an exact match over an empty set
                raise ReleaseError(f"{where}choose question without attribute options")
            names = [self._choose_option(a, where) for a in sample["attribute"]]
        else:
            tid = int(sample["template_id"])
            if tid not in self.template_classes:
                raise ReleaseError(f"{where}template_id {tid} not in answers_for_each_template.csv")
            names = list(self.template_classes[tid])
        return self.encode(names, where=where)

    def _choose_option(self, attribute: str, where: str) -> str:
        if attribute in self._index:
            return attribute
        head = attribute.split(" of ")[0]
        if head in self._index:
            return head
        raise ReleaseError(f"{where}choose attribute {attribute!r} names no answer class")


def encode_sample(space: AnswerSpace, sample: dict[str, Any], *, where: str = "") -> dict[str, Any]:
    """Answer indices, valid-class indices and (qt1, qt2, qt3) codes of one release sample."""
    try:
        qt1, qt2, qt3 = question_codes(sample["question_type"], sample["attribute_type"])
    except ValueError as e:
        raise ReleaseError(f"{where}{e}") from None
    return {
        "answer": space.encode(sample["answer"], where=where),
        "valid_classes": space.valid_classes(sample, where=where),
        "qt1": qt1,
        "qt2": qt2,
        "qt3": qt3,
    }


def find_version_dir(release_dir: str | Path, version: str) -> Path:
    """Accept either the version folder itself (``ecgqa/ptbxl``) or its parent (``ecgqa``)."""
    release_dir = Path(release_dir)
    for candidate in (release_dir, release_dir / version):
        if (candidate / "answers.csv").is_file() and any((candidate / v).is_dir() for v in VARIANTS):
            return candidate
    raise ReleaseError(
        f"{release_dir}: unknown release layout; expected answers.csv and template/ or paraphrased/ "
        f"in it or in {release_dir / version} (ECG-QA layout: <version>/{{template,paraphrased}}/<split>/NNNNN.json)"
    )


def shards(version_dir: Path, variants: tuple[str, ...] = VARIANTS, splits: tuple[str, ...] = SPLITS) -> list[Path]:
    """Every question shard present, as ``variant/split/NNNNN.json`` paths: variants and splits in the
    given order, each folder's shards sorted by plain file name (string order, as upstream's
    ``sorted(glob(...))`` in fairseq-signals ``preprocess_ecgqa.py``; every split of both releases
    numbers its shards with names of one length, so this is also numeric order there)."""
    out = []
    for variant in variants:
        for split in splits:
            folder = version_dir / variant / split
            if folder.is_dir():
                out.extend(sorted(folder.glob("*.json"), key=lambda p: p.name))
    return out


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_str_list(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(a, str) for a in x)


#: key → (check, what it must be): the value types of a release sample, checked at load time, so a
#: float id (127.9 → record 127), a string id ("127") or a null never travels further silently.
SAMPLE_TYPES: dict[str, tuple[Any, str]] = {
    "sample_id": (_is_int, "an integer"),
    "template_id": (_is_int, "an integer"),
    "question_id": (_is_int, "an integer"),
    "question_type": (lambda x: isinstance(x, str), "a string"),
    "attribute_type": (lambda x: isinstance(x, str), "a string"),
    "question": (lambda x: isinstance(x, str) and x.strip() != "", "a non-empty string"),
    "answer": (lambda x: _is_str_list(x) and len(x) > 0, 'a non-empty list of class names (e.g. ["yes"])'),
    "ecg_id": (
        lambda x: isinstance(x, list) and len(x) > 0 and all(_is_int(i) and i >= 0 for i in x),
        "a non-empty list of integer ids",
    ),
    "attribute": (lambda x: x is None or _is_str_list(x), "null or a list of strings"),
}


def _well_typed(s: Any) -> bool:
    """SAMPLE_TYPES in one expression (``type(x) is int`` excludes bools): ~1 µs a sample, as fast as the
    JSON parse around it; only a sample that fails it is examined key by key for the message."""
    try:
        ids, answer, attribute, question = s["ecg_id"], s["answer"], s.get("attribute"), s["question"]
        return (
            type(s["sample_id"]) is int
            and type(s["template_id"]) is int
            and type(s["question_id"]) is int
            and type(s["question_type"]) is str
            and type(s["attribute_type"]) is str
            and type(question) is str
            and question.strip() != ""
            and type(answer) is list
            and len(answer) > 0
            and all(type(a) is str for a in answer)
            and type(ids) is list
            and len(ids) > 0
            and all(type(e) is int and e >= 0 for e in ids)
            and (attribute is None or (type(attribute) is list and all(type(a) is str for a in attribute)))
        )
    except (KeyError, TypeError, AttributeError):
        return False


def load_shard(path: Path) -> list[dict[str, Any]]:
    """Read one shard, checking it is a list of samples that each carry the release's keys with
    values of the release's types, and that no sample_id appears twice in it."""
    try:
        samples = json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        raise ReleaseError(f"{path}: malformed JSON ({e})") from e
    except UnicodeDecodeError as e:
        raise ReleaseError(f"{path}: not UTF-8 JSON ({e})") from e
    if not isinstance(samples, list):
        raise ReleaseError(f"{path}: expected a JSON list of samples, got {type(samples).__name__}")
    seen: set[Any] = set()
    for i, sample in enumerate(samples):
        if not _well_typed(sample):  # the fast check; the loop below finds what is wrong
            missing = [k for k in REQUIRED_KEYS if not isinstance(sample, dict) or k not in sample]
            if missing:
                sid = sample.get("sample_id", "?") if isinstance(sample, dict) else "?"
                raise ReleaseError(f"{path}: sample #{i} (sample_id {sid}) lacks {missing}")
            for key, (ok, what) in SAMPLE_TYPES.items():
                if key in sample and not ok(sample[key]):
                    raise ReleaseError(
                        f"{path}: sample #{i} (sample_id {sample['sample_id']!r}): {key} must be {what}, "
                        f"not {json.dumps(sample[key])[:80]}"
                    )
        if sample["sample_id"] in seen:
            raise ReleaseError(f"{path}: sample_id {sample['sample_id']} appears twice in this shard")
        seen.add(sample["sample_id"])
    return samples
