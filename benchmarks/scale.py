"""`ecgqa map` + `ecgqa prepare` at the full ECG-QA sizes, against upstream's one-file-per-sample layout.

Builds a synthetic release with the real release's sizes and shard layout (10,000 samples a shard,
questions in template order) from real ECG-QA questions, over a records tree of real PTB-XL records
copied under new ids (the signal file hard-linked, a new header for the new record name): a PTB-XL
tree (records500/ and records100/) or a MIMIC-IV-ECG tree (files/pNNNN/pNNNNNNNN/sNNNNNNNN/NNNNNNNN,
headers in MIMIC's lead order, and a record_list.csv of all 800,035 rows). Then it runs `ecgqa map`
and `ecgqa prepare` (template and paraphrased, tasks qa and upperbound) as subprocesses and measures
wall time, CPU time, the peak RSS of the process tree (every worker included, polled) and bytes on disk.

The baseline, measured in the same run on a fraction of the samples and extrapolated linearly:
upstream's preprocessing (fairseq-signals ``preprocess_ecgqa.py``), which writes one ``.mat`` per QA
sample (its record paths, question, multi-hot answer, valid classes, question-type codes and attribute
id; no signal) after reading every ECG of the sample with ``wfdb.rdsamp`` (for its length), and whose
loader then reads the WFDB records again at every step; and the one-``.mat``-per-sample layout that
holds the signals themselves (what ``benchmarks/prepare.py`` measures).

    python benchmarks/scale.py --version ptbxl --fraction 1 [--num-proc 2] [--keep DIR]
    python benchmarks/scale.py --version mimic --growth [--keep DIR]     # 1/100, 1/30, 1/10

Where the sizes and the mix come from (docs/scale.md, "The synthetic release"): ``SIZES`` below.
Importable: ``build_release(version, fraction, out)``, ``build_records(version, ecg_ids, out)``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SHARD = 10_000  # samples per release shard (every full shard of the real release holds 10,000)
#: MIMIC-IV-ECG v1.0 lists 800,035 records in record_list.csv (about 160,000 patients).
MIMIC_RECORDS = 800_035
MIMIC_PATIENTS = 161_352
MIMIC_LEADS = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]

#: Full sizes per split. PTB-XL: the release's train/valid/test sample counts and *_ecgs.tsv line counts.
#: MIMIC-IV-ECG: train and test samples from the release (test: last shard 270000.json ends at sample
#: 274,363), valid samples estimated (the upstream tree holds 23 valid shards: 220,001-230,000), valid and
#: test ECGs from the release's valid_ecgs.tsv / test_ecgs.tsv (62,251 / 156,851 lines), train ECGs
#: estimated with the valid+test ratio of ECGs per sample (0.439).
SIZES: dict[str, dict[str, dict[str, int]]] = {
    "ptbxl": {
        "samples": {"train": 267_539, "valid": 64_663, "test": 82_146},
        "ecgs": {"train": 11_566, "valid": 1_274, "test": 3_214},
    },
    "mimic-iv-ecg": {
        "samples": {"train": 829_267, "valid": 225_000, "test": 274_364},
        "ecgs": {"train": 363_860, "valid": 62_251, "test": 156_851},
    },
}
#: Share of two-ECG (comparison) questions. Not published per split; the real shards bound it: in PTB-XL
#: train, samples 120,000-129,999 (templates 26-28) are single-verify and the last shard's 7,539 samples
#: (templates 68-70) are comparison_irrelevant-query, so the comparison share lies between 2.8 % and 51 %.
TWO_ECG_SHARE = 0.25
VERSION_ALIASES = {"ptbxl": "ptbxl", "mimic": "mimic-iv-ecg", "mimic-iv-ecg": "mimic-iv-ecg"}


# ------------------------------------------------------------------------------------- questions


@dataclass
class QuestionPool:
    """Real ECG-QA samples (template + paraphrased question) that a version's answer space accepts."""

    one: list[tuple[dict[str, Any], str]]  # (template sample, paraphrased question), one ECG
    two: list[tuple[dict[str, Any], str]]  # two ECGs


def _release_dirs(extra: list[Path]) -> list[Path]:
    from ecgqa import sample

    return [sample.paths().ptbxl_release, *extra]


def question_pool(version: str, extra: list[Path] | None = None) -> QuestionPool:
    """Every real sample of the bundled release sample (and of ``extra`` release folders) whose template
    and answers exist in ``version``'s answer space, paired with its paraphrased question."""
    from ecgqa.release import AnswerSpace, ReleaseError, encode_sample, load_shard, shards

    space = AnswerSpace.from_release(_answers_dir(version))
    one, two, seen = [], [], set()
    for rel in _release_dirs(extra or []):
        para = {}
        for p in shards(rel, ("paraphrased",)):
            para.update({s["sample_id"]: s["question"] for s in load_shard(p)})
        for p in shards(rel, ("template",)):
            for s in load_shard(p):
                key = (s["template_id"], s["question"], tuple(s["answer"]), s["sample_id"])
                if key in seen:
                    continue
                seen.add(key)
                try:
                    encode_sample(space, s)
                except ReleaseError:
                    continue
                (one if len(s["ecg_id"]) == 1 else two).append((s, para.get(s["sample_id"], s["question"])))
    if not one or not two:
        raise SystemExit(f"no real {version} questions with one and two ECGs among {_release_dirs(extra or [])}")
    return QuestionPool(one, two)


def _answers_dir(version: str) -> Path:
    from ecgqa import sample

    return sample.paths().mimic_release if version == "mimic-iv-ecg" else sample.paths().ptbxl_release


def split_ids(version: str, fraction: float, seed: int = 0) -> dict[str, np.ndarray]:
    """The ECG ids each split uses at ``fraction`` of the full size (disjoint between splits)."""
    rng = np.random.default_rng(seed)
    sizes = {s: max(2, round(n * fraction)) for s, n in SIZES[version]["ecgs"].items()}
    if version == "ptbxl":
        universe = np.arange(1, 21_838)  # PTB-XL ecg_ids 1..21,837
    else:
        universe = mimic_study_ids(seed)
    chosen = rng.choice(universe, size=sum(sizes.values()), replace=False)
    out, start = {}, 0
    for split, n in sizes.items():
        out[split] = np.sort(chosen[start : start + n])
        start += n
    return out


def mimic_study_ids(seed: int = 0) -> np.ndarray:
    """800,035 distinct 8-digit study ids (MIMIC-IV-ECG's study ids are 40,000,000-49,999,999)."""
    rng = np.random.default_rng(seed + 1)
    return rng.choice(np.arange(40_000_000, 50_000_000), size=MIMIC_RECORDS, replace=False)


def _assign_ids(rng: np.random.Generator, pool: np.ndarray, n_one: int, n_two: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids for n_one one-ECG and n_two two-ECG samples: every pool id used at least once when slots allow."""
    slots = n_one + 2 * n_two
    base = rng.permutation(pool)[:slots]
    ids = np.concatenate([base, rng.choice(pool, size=slots - len(base))]) if slots > len(base) else base
    ids = rng.permutation(ids)
    one, two = ids[:n_one], ids[n_one:].reshape(n_two, 2)
    same = two[:, 0] == two[:, 1]
    if same.any():  # a comparison needs two different ECGs
        pos = np.searchsorted(pool, two[same, 0])
        two[same, 1] = pool[(pos + 1) % len(pool)]
    return one, two


def build_release(version: str, fraction: float, out: Path, *, seed: int = 0, two_share: float = TWO_ECG_SHARE,
                  extra_questions: list[Path] | None = None) -> dict[str, Any]:
    """Write a synthetic ECG-QA release of ``fraction`` of the full size into ``out`` (the version folder:
    answers CSVs, {train,valid,test}_ecgs.tsv, template/ and paraphrased/ shards of 10,000 samples).

    Samples are real questions (answers, templates, attributes) with new ecg ids and sample ids; a split's
    questions are in template order, as in the real shards. Returns {"ecg_ids": {split: ids}, "samples": ...}.
    """
    version = VERSION_ALIASES[version]
    rng = np.random.default_rng(seed)
    pool = question_pool(version, extra_questions)
    ids = split_ids(version, fraction, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("answers.csv", "answers_for_each_template.csv"):
        shutil.copyfile(_answers_dir(version) / name, out / name)
    counts = {}
    for split, n_full in SIZES[version]["samples"].items():
        n = max(2, round(n_full * fraction))
        n_two = max(1, round(n * two_share))
        n_one = n - n_two
        (out / f"{split}_ecgs.tsv").write_text("".join(f"{k}\t{i}\n" for k, i in enumerate(ids[split])))
        one_ids, two_ids = _assign_ids(rng, ids[split], n_one, n_two)
        src_one = [pool.one[k] for k in rng.integers(0, len(pool.one), n_one)]
        src_two = [pool.two[k] for k in rng.integers(0, len(pool.two), n_two)]
        # template order inside the split, as the real shards (single questions first, comparisons last)
        src_one.sort(key=lambda p: p[0]["template_id"])
        src_two.sort(key=lambda p: p[0]["template_id"])
        width = max(5, len(str((n - 1) // SHARD * SHARD)))
        for variant in ("template", "paraphrased"):
            (out / variant / split).mkdir(parents=True, exist_ok=True)
        for start in range(0, n, SHARD):
            shard_t, shard_p = [], []
            for k in range(start, min(n, start + SHARD)):
                if k < n_one:
                    (s, para), ecg = src_one[k], [int(one_ids[k])]
                else:
                    (s, para), ecg = src_two[k - n_one], [int(x) for x in two_ids[k - n_one]]
                t = {**s, "sample_id": k, "ecg_id": ecg}
                shard_t.append(t)
                shard_p.append({**t, "question": para})
            name = f"{start:0{width}d}.json"
            (out / "template" / split / name).write_text(json.dumps(shard_t, indent=1))
            (out / "paraphrased" / split / name).write_text(json.dumps(shard_p, indent=1))
        counts[split] = n
    return {"ecg_ids": ids, "samples": counts}


# --------------------------------------------------------------------------------------- records


def source_records(root: Path | None = None) -> list[Path]:
    """Real 500 Hz PTB-XL records to copy (no extension): ``root``'s records500, else the bundled sample."""
    from ecgqa import sample

    root = root or sample.paths().ptbxl_records
    found = sorted((Path(root) / "records500").glob("*/*_hr.hea"))
    if not found:
        raise SystemExit(f"no records500/*/*_hr.hea under {root}")
    return [p.with_suffix("") for p in found]


def _new_header(src: Path, new_name: str, dat_name: str | None = None) -> str:
    """The source header with its record name and signal-file name replaced by ``new_name``."""
    lines = src.with_name(src.name + ".hea").read_text().splitlines()
    first = lines[0].split()
    first[0] = new_name
    out = [" ".join(first)]
    for line in lines[1:]:
        if line.startswith(src.name + ".dat"):
            line = (dat_name or new_name) + ".dat" + line[len(src.name) + 4 :]
        out.append(line)
    return "\n".join(out) + "\n"


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or the link limit: copy
        shutil.copyfile(src, dst)


def mimic_sources(srcs: list[Path], out: Path) -> list[Path]:
    """The PTB-XL sources rewritten as MIMIC-IV-ECG records: the same samples, the channels stored in
    MIMIC's lead order (aVF before aVL), format 16, so a reader must reorder by name."""
    import wfdb

    out.mkdir(parents=True, exist_ok=True)
    done = []
    for src in srcs:
        name = f"m{src.name}"
        if not (out / f"{name}.hea").is_file():
            rec = wfdb.rdrecord(str(src), physical=False)
            order = [rec.sig_name.index(lead) for lead in MIMIC_LEADS]
            wfdb.wrsamp(name, fs=rec.fs, units=[rec.units[i] for i in order], sig_name=MIMIC_LEADS,
                        d_signal=rec.d_signal[:, order], fmt=["16"] * 12, adc_gain=[rec.adc_gain[i] for i in order],
                        baseline=[rec.baseline[i] for i in order], write_dir=str(out))
        done.append(out / name)
    return done


def mimic_path(subject: int, study: int) -> str:
    """``files/p1000/p10000032/s40689238/40689238`` (relative to the MIMIC-IV-ECG root, no extension)."""
    return f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"


def build_records(version: str, ecg_ids: dict[str, np.ndarray] | np.ndarray, out: Path, *,
                  sources: Path | None = None, seed: int = 0, rates: tuple[int, ...] = (500, 100)) -> int:
    """A records tree under ``out`` holding a record for every id in ``ecg_ids``: real PTB-XL records
    copied under the new ids (signal file hard-linked, header rewritten). PTB-XL: records500/ (and
    records100/ when 100 in ``rates``); MIMIC-IV-ECG: files/... and a record_list.csv of all 800,035
    records (only the used ones exist on disk, as the mapping only reads those). Returns records written."""
    version = VERSION_ALIASES[version]
    ids = np.unique(np.concatenate(list(ecg_ids.values())) if isinstance(ecg_ids, dict) else np.asarray(ecg_ids))
    out = Path(out)
    srcs = source_records(sources)
    n = 0
    if version == "ptbxl":
        from mapping.sources import ptbxl_record_path

        for rate in rates:
            suffix = "hr" if rate == 500 else "lr"
            rate_srcs = [s.parent.parent.parent / f"records{rate}" / s.parent.name / s.name.replace("_hr", f"_{suffix}")
                         for s in srcs]
            rate_srcs = [s for s in rate_srcs if s.with_name(s.name + ".hea").is_file()]
            if not rate_srcs:
                if rate == 500:
                    raise SystemExit(f"no 500 Hz sources under {sources}")
                continue
            for k, ecg_id in enumerate(ids):
                src = rate_srcs[int(ecg_id) % len(rate_srcs)]
                rec = out / ptbxl_record_path(int(ecg_id), rate)
                rec.parent.mkdir(parents=True, exist_ok=True)
                rec.with_name(rec.name + ".hea").write_text(_new_header(src, rec.name))
                _link(src.with_name(src.name + ".dat"), rec.with_name(rec.name + ".dat"))
                n += 1
        return n
    msrcs = mimic_sources(srcs, out / ".sources")
    used = {int(i) for i in ids}
    studies = mimic_study_ids(seed)
    rng = np.random.default_rng(seed + 2)
    subjects = 10_000_000 + np.sort(rng.integers(0, 9_999_999, MIMIC_PATIENTS))
    subject_of = subjects[rng.integers(0, MIMIC_PATIENTS, MIMIC_RECORDS)]
    missing = used - set(studies.tolist())
    if missing:
        raise ValueError(f"{len(missing)} ids are not MIMIC study ids of this seed, e.g. {sorted(missing)[:3]}")
    with (out / "record_list.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subject_id", "study_id", "file_name", "ecg_time", "path"])
        for subject, study in zip(subject_of.tolist(), studies.tolist()):
            path = mimic_path(subject, study)
            w.writerow([subject, study, study, "2180-07-23 08:44:00", path])
            if study in used:
                src = msrcs[study % len(msrcs)]
                rec = out / path
                rec.parent.mkdir(parents=True, exist_ok=True)
                rec.with_name(rec.name + ".hea").write_text(_new_header(src, rec.name))
                _link(src.with_name(src.name + ".dat"), rec.with_name(rec.name + ".dat"))
                n += 1
    return n
