"""Splits, ECG pairs and the per-question caps of ``ecgqa generate`` — seeded and deterministic.

- **Split by patient** (:func:`split_by_patient`): the patients in order of first appearance, shuffled with
  ``random.Random(seed)``, the first 80 % train, the next 10 % valid, the rest test (the authors' rule; seed
  42). With the release's ``*_ecgs.tsv`` (``--splits DIR``) their split is used instead.
- **Pairs**: consecutive = every (earlier, later) pair of ECGs of one patient (by ``recorded_at``), not only
  adjacent ones; irrelevant = ordered pairs of two ECGs of different patients drawn at random
  (:data:`IRRELEVANT_PER_ECG` per ECG of the split, distinct).
- **Caps** (:func:`pick`): ECGs (or pairs) are grouped by answer; a question is kept when at least 2 groups
  (train) or 1 (valid/test) are non-empty, and each group is sampled up to its cap:

  ========  ============================================  ===================================
  caps      verify                                        choose / query
  ========  ============================================  ===================================
  release   per split and question type from              choose: per option, per "both", per
            ``data/release_caps.json`` (:func:`release_     "none" alike; query: per answer
            caps`); "no" ≤ :data:`NO_PER_YES` × "yes"    set, ``none`` its own cap
  none      every ECG                                     every ECG
  balanced  yes = no = the smaller group (not sure        each answer set ≤ the second-largest
            dropped); kept only with both                 set's size; kept with ≥ 2 sets
  ========  ============================================  ===================================

  The release caps are those measured on the release (or inferred from the measured ones where the JSON's
  ``status`` says so), e.g. train single verify ≤ 100 yes / ≤ 200 no per question text, valid/test 20 / 40.
  Choose questions exclude ECGs already used by an earlier question of the same template (the authors' rule).
"""

from __future__ import annotations

import json
import random
from collections.abc import Hashable, Sequence
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from ecgqa.data.release import SPLITS
from ecgqa.generation.templates import DATA, NONE

FRACTIONS = (0.8, 0.1, 0.1)
IRRELEVANT_PER_ECG = 10
CAPS = ("release", "none")
_YES = (("yes",), ("not sure",))


class SplitError(ValueError):
    """A ``--splits`` folder that is not a release's split files; the message names the file and line."""


def split_by_patient(ecgs: pd.DataFrame, seed: int = 42) -> dict[int, str]:
    """ecg_id → split: patients (order of first appearance) shuffled with ``seed``, 80 / 10 / 10."""
    if ecgs["patient_id"].isna().any():
        missing = [int(i) for i in ecgs.index[ecgs["patient_id"].isna()]]
        raise SplitError(
            f"ecg_id {', '.join(map(str, missing[:10]))}{' ...' if len(missing) > 10 else ''}: no patient_id "
            "(the split is by patient, so every ECG needs one; or give the split with --splits)"
        )
    patients = list(dict.fromkeys(ecgs["patient_id"].tolist()))
    random.Random(seed).shuffle(patients)
    n_train = int(len(patients) * FRACTIONS[0])
    n_valid = int(len(patients) * FRACTIONS[1])
    split_of_patient = {p: "train" for p in patients[:n_train]}
    split_of_patient.update({p: "valid" for p in patients[n_train : n_train + n_valid]})
    split_of_patient.update({p: "test" for p in patients[n_train + n_valid :]})
    return {int(e): split_of_patient[p] for e, p in zip(ecgs.index, ecgs["patient_id"], strict=True)}


def read_release_split(folder: str | Path) -> dict[int, str]:
    """ecg_id → split from a release's ``{train,valid,test}_ecgs.tsv`` (``index<TAB>ecg_id`` lines)."""
    folder = Path(folder)
    out: dict[int, str] = {}
    for split in SPLITS:
        path = folder / f"{split}_ecgs.tsv"
        if not path.is_file():
            raise SplitError(f"--splits {folder}: no {path.name} (expected the release's *_ecgs.tsv files)")
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            try:
                out[int(parts[-1])] = split
            except ValueError:
                raise SplitError(f"{path}, line {n}: {line!r} is not 'index<TAB>ecg_id'") from None
    return out


def consecutive_pairs(ecgs: pd.DataFrame, ids: Sequence[int]) -> list[tuple[int, int]]:
    """Every (earlier, later) pair of one patient's ECGs among ``ids``; ECGs without a time take no part."""
    sub = ecgs.loc[list(ids), ["patient_id", "recorded_at"]]
    sub = sub[sub["recorded_at"].notna() & sub["patient_id"].notna()]
    # patients in sorted order, each one's ECGs by time, ties in ``ids`` order: one sort, not one per patient
    if sub.empty:
        return []
    order = sub.assign(_pos=np.arange(len(sub))).sort_values(["patient_id", "recorded_at", "_pos"])
    patients = order["patient_id"].to_numpy()
    ecg_ids = order.index.to_numpy()
    starts = np.flatnonzero(np.r_[True, patients[1:] != patients[:-1]])
    ends = np.r_[starts[1:], len(order)]
    out = []
    for a0, b0 in zip(starts.tolist(), ends.tolist(), strict=True):
        if b0 - a0 > 1:  # most patients have one ECG
            group = [int(e) for e in ecg_ids[a0:b0]]
            out.extend((a, b) for i, a in enumerate(group) for b in group[i + 1 :])
    return out


def irrelevant_pairs(ecgs: pd.DataFrame, ids: Sequence[int], rng: random.Random) -> list[tuple[int, int]]:
    """Distinct ordered pairs of ECGs of two different patients, drawn at random."""
    ids = sorted(int(i) for i in ids)
    patient = ecgs["patient_id"].to_dict()
    n = len(ids)
    want = min(IRRELEVANT_PER_ECG * n, n * (n - 1))
    seen: set[tuple[int, int]] = set()
    out = []
    tries = 0
    while len(out) < want and tries < 20 * want:
        tries += 1
        a, b = rng.sample(ids, 2)
        if patient[a] == patient[b] or (a, b) in seen:
            continue
        seen.add((a, b))
        out.append((a, b))
    return out


#: In verify questions the release keeps at most this many "no" per "yes" (and "not sure") it kept.
NO_PER_YES = 5


@cache
def release_caps() -> dict[str, dict[str, dict[str, int]]]:
    """split → question type (``single-verify`` …) → group → cap, from ``data/release_caps.json`` (the
    caps measured on the release, or inferred where its ``status`` says so). Groups: ``yes``, ``no``,
    ``not_sure`` (verify; not observed in the release: the ``yes`` cap), ``per_answer_set`` and ``none``
    (choose, query)."""
    path = DATA / "release_caps.json"
    spec = json.loads(path.read_text())["caps"]
    out: dict[str, dict[str, dict[str, int]]] = {}
    for split in SPLITS:
        for qtype, groups in spec[split].items():
            caps = {
                g: int(v["value"])
                for g, v in groups.items()
                if isinstance(v, dict) and v.get("value") is not None and isinstance(v["value"], int)
            }
            if qtype.endswith("verify"):
                caps.setdefault("not_sure", caps["yes"])
                need = ("yes", "no")
            else:
                need = ("per_answer_set", "none")
            if any(g not in caps for g in need):
                raise ValueError(
                    f"{path}: {split} {qtype} lacks a cap for {', '.join(g for g in need if g not in caps)}"
                )
            out.setdefault(split, {})[qtype] = caps
    return out


def cap_of(question_type: str, split: str, answer: tuple[str, ...], caps: str) -> int | None:
    """The release cap of one answer group (None = no cap); a verify question's "no" is further held to
    :data:`NO_PER_YES` × the "yes" kept (:func:`pick`)."""
    if caps == "none":
        return None
    table = release_caps()[split][question_type]
    if question_type.endswith("verify"):
        return table["not_sure" if answer == ("not sure",) else answer[0]]
    return table["none" if answer == (NONE,) else "per_answer_set"]


def pick(
    groups: dict[tuple[str, ...], list[Hashable]],
    *,
    question_type: str,
    split: str,
    caps: str,
    balanced: bool,
    rng: random.Random,
) -> dict[tuple[str, ...], list[Hashable]] | None:
    """Sample each answer group under the caps; None when the question is not kept."""
    kind = question_type.split("-")[1]
    groups = {k: v for k, v in groups.items() if v}
    if balanced:
        if kind == "verify":
            yes, no = groups.get(("yes",), []), groups.get(("no",), [])
            if not yes or not no:
                return None
            n = min(len(yes), len(no))
            return {("yes",): rng.sample(yes, n), ("no",): rng.sample(no, n)}
        if len(groups) < 2:
            return None
        cap = sorted((len(v) for v in groups.values()), reverse=True)[1]
        return {k: rng.sample(v, min(cap, len(v))) for k, v in sorted(groups.items())}
    need = 2 if (split == "train" and caps == "release") else 1
    if len(groups) < need:
        return None
    out = {}
    for k, v in sorted(groups.items()):
        cap = cap_of(question_type, split, k, caps)
        if cap is not None and kind == "verify" and k == ("no",):
            kept_yes = sum(min(len(groups.get(y, ())), cap_of(question_type, split, y, caps)) for y in _YES)
            cap = min(cap, NO_PER_YES * kept_yes)
        out[k] = v if cap is None or cap >= len(v) else rng.sample(v, cap)
    out = {k: v for k, v in out.items() if v}
    return out if len(out) >= need else None
