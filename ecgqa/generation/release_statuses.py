"""The per-(ECG, numeric feature) normal / abnormal statuses a released ECG-QA set implies.

Every comparison-numeric question (templates 50–56 consecutive, 64–70 irrelevant) constrains the status of a
feature in its two ECGs: "has the QT interval of the second ECG become normal?" → yes says *abnormal in
the first, normal in the second*; no says *not both*. Query answers do the same per listed feature, and
each feature a query answer leaves out is a "no". :func:`harvest` collects the certain facts and
propagates the "not both" constraints until nothing changes (a status known for one ECG of a "no" fixes
the other); a contradiction is reported, not resolved.

Used two ways:

- ``ecgqa generate … --statuses release`` (G1's CLI calls :func:`load` then :func:`apply`): where the
  release covers an ECG, its own statuses replace the measured ones, and ``generation.json`` reports
  how many were replaced apart from the measured ones;
- measuring agreement of :mod:`ecgqa.data.features` with the release (:func:`agreement`;
  ``docs/attributes.md``, ``tests/data/test_features.py``).

Signatures for the generator::

    report = use_release_statuses(inp, release_dir)  # edits inp.labels in place; report → generation.json
    statuses = load(release_dir)             # {ecg_id: {feature: True normal / False abnormal}}
    changed = apply(labels, statuses[ecg])   # edits one ECG's derive()-shaped labels in place

(G1: ``ecgqa generate ptbxl --statuses release --release DIR`` calls :func:`use_release_statuses` after
reading the input (the PTB-XL reader has measured by then) and writes its report under ``"statuses"`` in
``generation.json``, apart from the measured ones.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecgqa.data.features import FEATURES
from ecgqa.data.release import SPLITS, load_shard, shards

#: template → (status of the first ECG, status of the second) that a "yes" / a listed feature asserts;
#: True = normal, False = abnormal.
PATTERN: dict[int, tuple[bool, bool]] = {
    50: (False, True),  # become normal
    51: (True, False),  # changed to abnormal
    52: (False, False),  # still abnormal
    53: (True, True),  # still normal
    54: (False, True),
    55: (True, False),
    56: (False, False),
    64: (False, True),
    65: (True, False),
    66: (False, False),
    67: (True, True),
    68: (False, True),
    69: (True, False),
    70: (False, False),
}
VERIFY = {50, 51, 52, 53, 64, 65, 66, 67}

#: (ecg_id, feature) → True normal / False abnormal
Key = tuple[int, str]


class ReleaseStatusError(ValueError):
    """A release folder that holds no shard, or a comparison sample that does not fit its template; the message
    names it (a malformed shard is :class:`ecgqa.data.release.ReleaseError`)."""


@dataclass
class Harvest:
    """What a release implies: ``statuses`` (ecg_id → {feature: normal?}), and its bookkeeping."""

    statuses: dict[int, dict[str, bool]] = field(default_factory=dict)
    questions: int = 0
    contradictions: list[dict[str, Any]] = field(default_factory=list)

    def get(self, ecg_id: int, feature: str) -> bool | None:
        return self.statuses.get(int(ecg_id), {}).get(feature)

    def __len__(self) -> int:
        return sum(len(v) for v in self.statuses.values())


def _feature_of(question: str) -> str | None:
    """The feature a comparison-verify question names ("… has the qt interval of …")."""
    q = question.lower()
    hits = [f for f in FEATURES if f in q]
    # "qt interval" is also inside no other name, but "qt corrected" and "qt interval" never co-occur
    return hits[0] if len(hits) == 1 else None


def harvest(samples: Iterable[Mapping[str, Any]]) -> Harvest:
    """Statuses implied by the comparison-numeric samples among ``samples`` (others are ignored)."""
    out = Harvest()
    facts: dict[Key, bool] = {}
    origin: dict[Key, int] = {}
    clauses: list[tuple[Key, bool, Key, bool, int]] = []  # not(a is va and b is vb), with the sample id

    def assert_fact(key: Key, value: bool, sid: int) -> bool:
        old = facts.get(key)
        if old is None:
            facts[key] = value
            origin[key] = sid
            return True
        if old != value:
            out.contradictions.append(
                {"ecg_id": key[0], "feature": key[1], "sample_id": sid, "earlier_sample_id": origin[key]}
            )
        return False

    for s in samples:
        tid = int(s.get("template_id", 0))
        if tid not in PATTERN or s.get("attribute_type") != "numeric_feature":
            continue
        ids = [int(e) for e in s["ecg_id"]]
        if len(ids) != 2:
            raise ReleaseStatusError(f"sample {s.get('sample_id')}: template {tid} needs two ECGs, has {ids}")
        out.questions += 1
        first, second = PATTERN[tid]
        sid = int(s.get("sample_id", -1))
        if tid in VERIFY:
            feature = _feature_of(s["question"])
            if feature is None:
                raise ReleaseStatusError(f"sample {sid}: no single numeric feature named in {s['question']!r}")
            listed = {feature} if s["answer"] == ["yes"] else set()
            asked = (feature,)
        else:
            listed = {a for a in s["answer"] if a != "none"}
            asked = FEATURES
        for feature in asked:
            a, b = (ids[0], feature), (ids[1], feature)
            if feature in listed:
                assert_fact(a, first, sid)
                assert_fact(b, second, sid)
            else:
                clauses.append((a, first, b, second, sid))

    changed = True
    while changed:
        changed = False
        for a, va, b, vb, sid in clauses:
            fa, fb = facts.get(a), facts.get(b)
            if fa == va and fb is None:
                changed |= assert_fact(b, not vb, sid)
            elif fb == vb and fa is None:
                changed |= assert_fact(a, not va, sid)
            elif fa == va and fb == vb:
                out.contradictions.append({"ecg_id": a[0], "feature": a[1], "sample_id": sid, "clause": True})
        clauses = [c for c in clauses if facts.get(c[0]) is None or facts.get(c[2]) is None]
    for (ecg, feature), value in facts.items():
        out.statuses.setdefault(ecg, {})[feature] = value
    return out


def release_shards(release: str | Path, variant: str = "template") -> list[Path]:
    """``<release>/<variant>/<split>/*.json`` (a version folder such as ``ecgqa/ptbxl``), in
    :func:`ecgqa.data.release.shards` order (train, valid, test; each split's shards by name)."""
    root = Path(release)
    found = shards(root, (variant,), SPLITS)
    if not found:
        raise ReleaseStatusError(f"{root}: no {variant}/<split>/*.json shards (expected an ECG-QA version folder)")
    return found


def load(release: str | Path, variant: str = "template") -> Harvest:
    """:func:`harvest` over every shard of a release version folder, each read by
    :func:`ecgqa.data.release.load_shard` (a malformed shard raises its
    :class:`~ecgqa.data.release.ReleaseError`, naming the file and sample)."""
    return harvest(s for shard in release_shards(release, variant) for s in load_shard(shard))


def apply(labels: dict[str, dict[str, int | None]], statuses: Mapping[str, bool]) -> int:
    """Replace one ECG's measured range classes (its ``"entire"`` row) with the release's statuses.

    normal → within 1, above 0, below 0; abnormal → within 0, and above / below as measured when the
    measurement also says abnormal, otherwise both unknown (the release says abnormal, not which way).
    Returns how many features it changed.
    """
    entire = labels.setdefault("entire", {})
    changed = 0
    for feature, normal in statuses.items():
        keys = {w: f"{w} the normal range of {feature}" for w in ("above", "within", "below")}
        before = {w: entire.get(k) for w, k in keys.items()}
        if normal:
            after = {"above": 0, "within": 1, "below": 0}
        elif before["within"] == 0 and (before["above"] == 1 or before["below"] == 1):
            after = before
        else:
            after = {"above": None, "within": 0, "below": None}
        if after != before:
            changed += 1
        for w, k in keys.items():
            entire[k] = after[w]
    return changed


def agreement(found: Harvest, measured: Mapping[int, Any], ecg_ids: Iterable[int] | None = None) -> dict[str, Any]:
    """Per-feature agreement of measured statuses (ecg_id → :class:`ecgqa.data.features.NumericFeatures`)
    with the harvested ones, over ``ecg_ids`` (default: every harvested ECG in ``measured``).

    A feature the method could not measure counts as a disagreement (the release had a status).
    """
    wanted = set(measured) if ecg_ids is None else {int(e) for e in ecg_ids} & set(measured)
    per = {f: {"agree": 0, "total": 0, "not_measured": 0} for f in FEATURES}
    disagreements = []
    for ecg in sorted(wanted & set(found.statuses)):
        for feature, normal in found.statuses[ecg].items():
            got = measured[ecg].normal(feature) if measured[ecg] is not None else None
            per[feature]["total"] += 1
            if got is None:
                per[feature]["not_measured"] += 1
            if got == normal:
                per[feature]["agree"] += 1
            else:
                disagreements.append({"ecg_id": ecg, "feature": feature, "release": normal, "measured": got})
    agree = sum(p["agree"] for p in per.values())
    total = sum(p["total"] for p in per.values())
    return {
        "agree": agree,
        "total": total,
        "rate": agree / total if total else None,
        "per_feature": per,
        "disagreements": disagreements,
    }


def use_release_statuses(inp: Any, release: str | Path, variant: str = "template") -> dict[str, Any]:
    """Where the release at ``release`` implies a status for one of ``inp``'s ECGs, use it (:func:`apply`).

    ``inp`` is a :class:`ecgqa.generation.source.GenerationInput` whose labels already hold the measured
    range classes. Returns what ``generation.json`` reports under ``"statuses"``: the release folder, how many
    ECGs and (ECG, feature) statuses came from the release, how many of those differed from the measured
    status, and the contradictions the release holds (none in the public shards).
    """
    found = load(release, variant)
    ecgs = statuses = changed = 0
    for ecg_id, values in found.statuses.items():
        if ecg_id not in inp.labels:
            continue
        ecgs += 1
        statuses += len(values)
        changed += apply(inp.labels[ecg_id], values)
    return {
        "source": "release",
        "release": str(release),
        "release_questions": found.questions,
        "ecgs_from_release": ecgs,
        "statuses_from_release": statuses,
        "statuses_changed_from_measured": changed,
        "ecgs_measured_only": len(inp.labels) - ecgs,
        "contradictions": found.contradictions[:20],
    }
