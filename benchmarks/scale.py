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
import functools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
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
    from ecgqa.data.release import AnswerSpace, ReleaseError, encode_sample, load_shard, shards

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
                q = para.get(s["sample_id"], s["question"])
                if version == "mimic-iv-ecg":
                    s, q = _as_mimic(s, q)
                try:
                    encode_sample(space, s)
                except ReleaseError:
                    continue
                (one if len(s["ecg_id"]) == 1 else two).append((s, q))
    if not one or not two:
        raise SystemExit(f"no real {version} questions with one and two ECGs among {_release_dirs(extra or [])}")
    return QuestionPool(one, two)


#: PTB-XL's noise attributes; MIMIC-IV-ECG's statements know only baseline wander (upstream README), so its
#: noise templates 26-27 ask about that and templates 28-33 do not exist.
_PTBXL_NOISES = ("static noise", "burst noise", "baseline drift", "electrodes problems")


def _as_mimic(s: dict[str, Any], question: str) -> tuple[dict[str, Any], str]:
    """A PTB-XL noise question as MIMIC-IV-ECG asks it (its attribute and question text)."""
    attrs = s.get("attribute") or []
    if not any(a in _PTBXL_NOISES for a in attrs):
        return s, question
    for a in attrs:
        s = {**s, "question": s["question"].replace(a, "baseline wander")}
        question = question.replace(a, "baseline wander")
    return {**s, "attribute": ["baseline wander" if a in _PTBXL_NOISES else a for a in attrs]}, question


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


def build_release(
    version: str,
    fraction: float,
    out: Path,
    *,
    seed: int = 0,
    two_share: float = TWO_ECG_SHARE,
    extra_questions: list[Path] | None = None,
) -> dict[str, Any]:
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


@functools.cache
def _header_lines(src: Path) -> tuple[str, ...]:
    """A source record's header lines, read once: many new records copy each of the few sources."""
    return tuple(src.with_name(src.name + ".hea").read_text().splitlines())


def _new_header(src: Path, new_name: str) -> str:
    """The source header with its record name and signal-file name replaced by ``new_name``."""
    lines = _header_lines(src)
    first = lines[0].split()
    first[0] = new_name
    out = [" ".join(first)]
    for line in lines[1:]:
        if line.startswith(src.name + ".dat"):
            line = new_name + ".dat" + line[len(src.name) + 4 :]
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
            upper = [n.upper() for n in rec.sig_name]  # PTB-XL writes AVR, AVL, AVF
            order = [upper.index(lead.upper()) for lead in MIMIC_LEADS]
            wfdb.wrsamp(
                name,
                fs=rec.fs,
                units=[rec.units[i] for i in order],
                sig_name=MIMIC_LEADS,
                d_signal=rec.d_signal[:, order],
                fmt=["16"] * 12,
                adc_gain=[rec.adc_gain[i] for i in order],
                baseline=[rec.baseline[i] for i in order],
                write_dir=str(out),
            )
        done.append(out / name)
    return done


def mimic_path(subject: int, study: int) -> str:
    """``files/p1000/p10000032/s40689238/40689238`` (relative to the MIMIC-IV-ECG root, no extension)."""
    return f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"


def build_records(
    version: str,
    ecg_ids: dict[str, np.ndarray] | np.ndarray,
    out: Path,
    *,
    sources: Path | None = None,
    seed: int = 0,
    rates: tuple[int, ...] = (500, 100),
    cache: Path | None = None,
) -> int:
    """A records tree under ``out`` holding a record for every id in ``ecg_ids``: real PTB-XL records
    copied under the new ids (signal file hard-linked, header rewritten). PTB-XL: records500/ (and
    records100/ when 100 in ``rates``); MIMIC-IV-ECG: files/... and a record_list.csv of all 800,035
    records (only the used ones exist on disk, as the mapping only reads those; the sources rewritten in
    MIMIC's layout go to ``cache``, default ``out/.sources``). Returns records written."""
    version = VERSION_ALIASES[version]
    ids = np.unique(np.concatenate(list(ecg_ids.values())) if isinstance(ecg_ids, dict) else np.asarray(ecg_ids))
    out = Path(out)
    srcs = source_records(sources)
    n = 0
    if version == "ptbxl":
        from mapping.sources import ptbxl_record_path

        for rate in rates:
            suffix = "hr" if rate == 500 else "lr"
            rate_srcs = [
                s.parent.parent.parent / f"records{rate}" / s.parent.name / s.name.replace("_hr", f"_{suffix}")
                for s in srcs
            ]
            rate_srcs = [s for s in rate_srcs if s.with_name(s.name + ".hea").is_file()]
            if not rate_srcs:
                if rate == 500:
                    raise SystemExit(f"no 500 Hz sources under {sources}")
                continue
            for _k, ecg_id in enumerate(ids):
                src = rate_srcs[int(ecg_id) % len(rate_srcs)]
                rec = out / ptbxl_record_path(int(ecg_id), rate)
                rec.parent.mkdir(parents=True, exist_ok=True)
                rec.with_name(rec.name + ".hea").write_text(_new_header(src, rec.name))
                _link(src.with_name(src.name + ".dat"), rec.with_name(rec.name + ".dat"))
                n += 1
        return n
    msrcs = mimic_sources(srcs, cache or out / ".sources")
    used = {int(i) for i in ids}
    studies = mimic_study_ids(seed)
    rng = np.random.default_rng(seed + 2)
    subjects = 10_000_000 + np.sort(rng.integers(0, 9_999_999, MIMIC_PATIENTS))
    subject_of = subjects[rng.integers(0, MIMIC_PATIENTS, MIMIC_RECORDS)]
    missing = used - set(studies.tolist())
    if missing:
        raise ValueError(f"{len(missing)} ids are not MIMIC study ids of this seed, e.g. {sorted(missing)[:3]}")
    out.mkdir(parents=True, exist_ok=True)
    with (out / "record_list.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subject_id", "study_id", "file_name", "ecg_time", "path"])
        for subject, study in zip(subject_of.tolist(), studies.tolist(), strict=False):
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


# ------------------------------------------------------------------------------------- measuring


@dataclass
class Run:
    """One subprocess: wall and CPU seconds, peak RSS of its whole process tree, machine load around it."""

    name: str
    wall_s: float
    cpu_s: float
    peak_tree_mb: float  # sum of PSS over the process and all its descendants, polled every 0.1 s
    peak_single_mb: float  # largest single process (kernel ru_maxrss of the run and its waited children)
    peak_main_anon_mb: float  # the main process's private heap (RssAnon): what grows if anything is held per sample
    load_before: float
    load_after: float
    disk_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def measure(name: str, cmd: list[str], log: Path | None = None) -> Run:
    """Run ``cmd``; poll the memory of its process tree (PSS, so pages forked workers share count once);
    CPU time and the largest single process's peak RSS (ru_maxrss, exact) from ``wait4``."""
    import psutil

    load0 = os.getloadavg()[0]
    start = time.perf_counter()
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    )
    peak = [0.0, 0.0]
    done = threading.Event()

    def anon(pid: int) -> float:
        try:
            with open(f"/proc/{pid}/status") as f:
                return next((int(x.split()[1]) / 1024 for x in f if x.startswith("RssAnon")), 0.0)
        except OSError:
            return 0.0

    def poll() -> None:
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not done.is_set():
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:  # PSS: a page shared by forked workers counts once, split between them
                        total += p.memory_full_info().pss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
            except psutil.NoSuchProcess:
                break
            peak[0] = max(peak[0], total / 2**20)
            peak[1] = max(peak[1], anon(proc.pid))
            done.wait(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    poller.join()
    wall = time.perf_counter() - start
    if log:
        out.close()
    if proc.returncode != 0:
        tail = log.read_text()[-2000:] if log else ""
        raise SystemExit(f"{name} failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    single = usage.ru_maxrss / 1024
    return Run(
        name,
        round(wall, 2),
        round(usage.ru_utime + usage.ru_stime, 2),
        round(peak[0], 1),
        round(single, 1),
        round(peak[1], 1),
        round(load0, 2),
        round(os.getloadavg()[0], 2),
    )


def disk_usage(path: Path) -> tuple[int, int]:
    """(allocated bytes, apparent bytes) of every file under ``path``, each inode counted once."""
    seen: set[tuple[int, int]] = set()
    alloc = apparent = 0
    for root, _, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(root, f))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            alloc += st.st_blocks * 512
            apparent += st.st_size
    return alloc, apparent


# -------------------------------------------------------------------------------------- baseline


def upstream_baseline(
    mapped: Path, dest: Path, share: float, variant: str = "template", *, signals: bool = False
) -> dict[str, Any]:
    """Upstream's preprocessing of ``share`` of each split's samples (the first ones, in shard order).

    As fairseq-signals ``preprocess_ecgqa.py`` does per QA sample: one ``.mat`` holding the record paths,
    question, multi-hot answer, valid classes, three question-type codes and an attribute id, every ECG of
    the sample read with ``wfdb.rdsamp`` (it writes the length into the manifest), the question tokenized
    (its length too). ``signals=True`` stores the ECGs read in the ``.mat`` as well (float64, as rdsamp
    returns them): the layout ``benchmarks/prepare.py`` compares against. Returns samples, seconds, bytes.
    """
    import scipy.io
    import wfdb

    from ecgqa.data.constants import question_codes
    from ecgqa.data.release import AnswerSpace, load_shard, shards
    from ecgqa.data.vocab import bert_tokenizer

    space = AnswerSpace.from_release(mapped)
    tok = bert_tokenizer()
    n = 0
    start = time.perf_counter()
    for split in ("train", "valid", "test"):
        files = shards(mapped, (variant,), (split,))
        if not files:
            continue
        (dest / split).mkdir(parents=True, exist_ok=True)
        want = None
        with (dest / f"{split}.tsv").open("w") as manifest:
            print(dest / split, file=manifest)
            k = 0
            for shard in files:
                batch = load_shard(shard)
                if want is None:
                    want = max(1, round(share * _split_size(files, batch)))
                for s in batch:
                    if k >= want:
                        break
                    answer = np.zeros(len(space), dtype=np.int64)
                    answer[space.encode(s["answer"])] = 1
                    qt1, qt2, qt3 = question_codes(s["question_type"], s["attribute_type"])
                    mat = {
                        "ecg_path": s["ecg_path"],
                        "question": s["question"],
                        "answer": answer,
                        "valid_classes": space.valid_classes(s),
                        "question_type1": qt1,
                        "question_type2": qt2,
                        "question_type3": qt3,
                        "attribute_id": -1,
                    }
                    ecgs = [wfdb.rdsamp(p)[0] for p in s["ecg_path"]]
                    if signals:
                        mat["ecg"] = np.stack(ecgs)
                    scipy.io.savemat(dest / split / f"{k}.mat", mat)
                    lengths = "\t".join(str(len(e)) for e in ecgs)
                    print(f"{k}.mat\t{lengths}\t{len(tok.encode(s['question']))}", file=manifest)
                    k += 1
                if k >= want:
                    break
            n += k
    seconds = time.perf_counter() - start
    alloc, apparent = disk_usage(dest)
    return {"samples": n, "seconds": seconds, "alloc": alloc, "apparent": apparent}


def _split_size(files: list[Path], first: list) -> int:
    """Samples in a split without loading every shard: full shards of 10,000, the last one counted."""
    from ecgqa.data.release import load_shard

    return SHARD * (len(files) - 1) + len(load_shard(files[-1])) if len(files) > 1 else len(first)


# ------------------------------------------------------------------------------------------ runs

RUNS = {  # name → extra `ecgqa prepare` arguments
    "qa-template": ["--variant", "template", "--task", "qa"],
    "qa-paraphrased": ["--variant", "paraphrased", "--task", "qa"],
    "upperbound": ["--variant", "template", "--task", "upperbound"],
}


def build(version: str, fraction: float, work: Path, sources: Path | None, extra: list[Path], seed: int = 0) -> dict:
    """Release and records under ``work`` (reused when a build of the same version/fraction/seed is there)."""
    marker = work / "built.json"
    key = {"version": version, "fraction": fraction, "seed": seed, "two_share": TWO_ECG_SHARE}
    built = json.loads(marker.read_text()) if marker.is_file() else {}
    if built.get("key") == key:
        return built
    for sub in ("release", "records", "mapped"):
        shutil.rmtree(work / sub, ignore_errors=True)
    t = time.perf_counter()
    made = build_release(version, fraction, work / "release" / version, seed=seed, extra_questions=extra)
    t_release = time.perf_counter() - t
    t = time.perf_counter()
    n_records = build_records(
        version,
        made["ecg_ids"],
        work / "records",
        sources=sources,
        seed=seed,
        rates=(500, 100) if version == "ptbxl" else (500,),
        cache=work.parent / ".mimic-sources",
    )
    info = {
        "key": key,
        "samples": made["samples"],
        "ecgs": {k: len(v) for k, v in made["ecg_ids"].items()},
        "records_written": n_records,
        "build_release_s": round(t_release, 1),
        "build_records_s": round(time.perf_counter() - t, 1),
    }
    marker.write_text(json.dumps(info))
    return info


def run_version(
    version: str,
    fraction: float,
    work: Path,
    *,
    num_proc: int,
    runs: list[str],
    sources: Path | None,
    extra: list[Path],
    baseline_share: float,
    signal_share: float,
    keep_outputs: bool,
) -> dict[str, Any]:
    version = VERSION_ALIASES[version]
    work.mkdir(parents=True, exist_ok=True)
    log = work / "runs.log"
    info = build(version, fraction, work, sources, extra)
    n_variant = sum(info["samples"].values())
    print(
        f"\n== {version} at {fraction:g} of full size: {n_variant:,} QA samples per variant over "
        f"{sum(info['ecgs'].values()):,} ECGs (release {info['build_release_s']} s, "
        f"{info['records_written']:,} records {info['build_records_s']} s)",
        flush=True,
    )
    ecgqa = [sys.executable, "-m", "ecgqa"]
    results: dict[str, Any] = {
        "version": version,
        "fraction": fraction,
        "num_proc": num_proc,
        **info,
        "cpus": os.cpu_count(),
        "runs": {},
    }
    shutil.rmtree(work / "mapped", ignore_errors=True)
    r = measure(
        "map",
        [
            *ecgqa,
            "map",
            "ptbxl" if version == "ptbxl" else "mimic",
            str(work / "release" / version),
            "--records",
            str(work / "records"),
            "--out",
            str(work / "mapped"),
            "-q",
        ],
        log,
    )
    r.disk_bytes = disk_usage(work / "mapped")[0]
    results["runs"]["map"] = asdict(r)
    _print_run(r, 2 * n_variant)
    for name in runs:
        out = work / f"prepared-{name}"
        r = measure(
            name,
            [
                *ecgqa,
                "prepare",
                str(work / "mapped"),
                "--out",
                str(out),
                "--num-proc",
                str(num_proc),
                "--force",
                "-q",
                *RUNS[name],
            ],
            log,
        )
        r.disk_bytes = disk_usage(out)[0]
        meta = json.loads((out / "meta.json").read_text())
        r.extra = {"n_ecgs": meta["n_ecgs"], "rows": sum(meta["splits"].values())}
        results["runs"][name] = asdict(r)
        _print_run(r, r.extra["rows"])
        if not keep_outputs:
            shutil.rmtree(out)
    # the baselines, on a share of the samples, extrapolated to this run's size (both variants)
    base = work / "baseline"
    shutil.rmtree(base, ignore_errors=True)
    up = upstream_baseline(work / "mapped", base / "paths", baseline_share)
    sig = upstream_baseline(work / "mapped", base / "signals", signal_share, signals=True)
    shutil.rmtree(base, ignore_errors=True)
    records_bytes = _records_logical_bytes(work / "records", version)
    results["baseline"] = {
        "paths": {**up, "per_sample_s": up["seconds"] / up["samples"], "per_sample_alloc": up["alloc"] / up["samples"]},
        "signals": {
            **sig,
            "per_sample_s": sig["seconds"] / sig["samples"],
            "per_sample_alloc": sig["alloc"] / sig["samples"],
        },
        "records_bytes": records_bytes,
    }
    _print_summary(results, n_variant)
    return results


def _records_logical_bytes(records: Path, version: str) -> int:
    """What the records the release uses take on a real disk (our tree hard-links them: count each file)."""
    total = 0
    top = records / ("records500" if version == "ptbxl" else "files")
    for root, _, files in os.walk(top):
        for f in files:
            total += os.stat(os.path.join(root, f)).st_size
    return total


def _print_run(r: Run, n: int) -> None:
    print(
        f"  {r.name:15s} {r.wall_s:8.1f} s wall {r.cpu_s:8.1f} s CPU  {n / r.wall_s:9.0f} rows/s  "
        f"peak memory tree {r.peak_tree_mb:6.0f} MB PSS (largest process {r.peak_single_mb:5.0f} MB RSS, "
        f"main heap {r.peak_main_anon_mb:4.0f} MB)  "
        f"disk {r.disk_bytes / 1e9:6.2f} GB  load {r.load_before:.1f}->{r.load_after:.1f}",
        flush=True,
    )


def _print_summary(res: dict[str, Any], n_variant: int) -> None:
    runs, b = res["runs"], res["baseline"]
    qa = [k for k in ("qa-template", "qa-paraphrased") if k in runs]
    ours_s = runs["map"]["wall_s"] + sum(runs[k]["wall_s"] for k in qa)
    all_s = runs["map"]["wall_s"] + sum(v["wall_s"] for k, v in runs.items() if k != "map")
    peak = max(v["peak_tree_mb"] for v in runs.values())
    ours_disk = sum(runs[k]["disk_bytes"] for k in qa)
    n_qa = len(qa) * n_variant
    up_s = b["paths"]["per_sample_s"] * n_qa
    up_disk = b["paths"]["per_sample_alloc"] * n_qa
    sig_disk = b["signals"]["per_sample_alloc"] * n_qa
    load = os.getloadavg()
    print(
        f"  -- map + every prepare: {all_s / 60:.1f} min wall; "
        f"largest peak memory (process tree, PSS) {peak / 1024:.2f} GB; "
        f"{res['cpus']} CPUs, load now {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} (1/5/15 min)"
    )
    print(
        f"  baseline, measured on {b['paths']['samples']:,} samples (paths) and {b['signals']['samples']:,} (signals), "
        f"extrapolated to {n_qa:,} QA samples ({len(qa)} variant(s)):"
    )
    print(
        f"    upstream preprocess (one .mat of paths per sample, every ECG read per sample): "
        f"{b['paths']['per_sample_s'] * 1e3:.2f} ms/sample -> {up_s / 60:.1f} min; ours (map + qa prepare) "
        f"{ours_s / 60:.1f} min: {up_s / ours_s:.1f}x faster"
    )
    print(
        f"    disk: ours {ours_disk / 1e9:.2f} GB (self-contained); upstream .mat files {up_disk / 1e9:.2f} GB + the "
        f"records its loader reads {b['records_bytes'] / 1e9:.2f} GB = {(up_disk + b['records_bytes']) / 1e9:.2f} GB "
        f"({(up_disk + b['records_bytes']) / ours_disk:.1f}x ours)"
    )
    print(
        f"    disk vs one .mat per sample holding its ECGs: {sig_disk / 1e9:.1f} GB, {sig_disk / ours_disk:.0f}x ours "
        f"(target >= 20x)"
    )
    res["summary"] = {
        "all_wall_s": all_s,
        "ours_qa_s": ours_s,
        "peak_tree_mb": peak,
        "ours_qa_disk": ours_disk,
        "n_qa": n_qa,
        "upstream_s": up_s,
        "upstream_disk": up_disk,
        "signals_disk": sig_disk,
        "load": load,
    }


def growth(fractions: list[float], args: argparse.Namespace) -> list[dict[str, Any]]:
    """MIMIC-IV-ECG at each fraction; prints time and peak RSS per sample and a linear fit of time."""
    points = []
    for f in fractions:
        work = args.work / f"mimic-{f:g}"
        points.append(
            run_version(
                "mimic",
                f,
                work,
                num_proc=args.num_proc,
                runs=args.runs,
                sources=args.sources,
                extra=args.questions,
                baseline_share=args.baseline_share,
                signal_share=args.signal_share,
                keep_outputs=False,
            )
        )
        if args.json:  # after every point: a long run that is cut short keeps what it measured
            args.json.write_text(json.dumps(points, indent=1, default=str))
    print("\n== growth (MIMIC-IV-ECG): time and peak RSS per QA sample at each size")
    names = ["map", *args.runs]
    for name in names:
        n = np.array([sum(p["samples"].values()) * (2 if name == "map" else 1) for p in points], float)
        t = np.array([p["runs"][name]["wall_s"] for p in points])
        c = np.array([p["runs"][name]["cpu_s"] for p in points])
        m = np.array([p["runs"][name]["peak_tree_mb"] for p in points])
        h = np.array([p["runs"][name].get("peak_main_anon_mb", 0.0) for p in points])
        per = "  ".join(
            f"{int(a):>9,}: {b / a * 1e6:6.1f} us/sample {d:5.0f} MB" for a, b, d in zip(n, t, m, strict=False)
        )
        print(f"  {name:15s} {per}")
        for label, y in (("wall", t), ("CPU", c)):
            slope, icpt = np.polyfit(n, y, 1)
            r2 = 1 - ((y - (slope * n + icpt)) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12)
            print(f"  {'':15s} fit {label:4s} = {icpt:5.1f} s + {slope * 1e6:7.1f} us x samples (R^2 {r2:.4f})")
        ms = np.polyfit(n, m, 1)[0]
        print(
            f"  {'':15s} peak memory {m.min():.0f}-{m.max():.0f} MB (tree PSS), "
            f"main heap {h.min():.0f}-{h.max():.0f} MB; "
            f"slope {ms * 1024:.2f} KB a sample"
        )
    return points


def plot(points: list[dict[str, Any]], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ["map", *names]:
        n = [sum(p["samples"].values()) * (2 if name == "map" else 1) / 1e3 for p in points]
        line = a.plot(n, [p["runs"][name]["wall_s"] for p in points], "o-", label=f"{name} wall")[0]
        a.plot(n, [p["runs"][name]["cpu_s"] for p in points], "s--", color=line.get_color(), label=f"{name} CPU")
        line = b.plot(n, [p["runs"][name]["peak_tree_mb"] for p in points], "o-", label=f"{name} tree (PSS)")[0]
        b.plot(
            n,
            [p["runs"][name].get("peak_main_anon_mb", 0) for p in points],
            "s:",
            color=line.get_color(),
            label=f"{name} main heap",
        )
    a.set(xlabel="QA samples read (thousands)", ylabel="seconds", title="time: linear in size")
    b.set(
        xlabel="QA samples read (thousands)",
        ylabel="peak memory (MB)",
        title="memory: bounded (+0.05-0.4 KB a question)",
        ylim=(0, None),
    )
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"ecgqa map / prepare on synthetic MIMIC-IV-ECG releases ({os.cpu_count()} CPUs, shared machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", choices=sorted(VERSION_ALIASES), default="ptbxl")
    parser.add_argument("--fraction", type=float, default=1.0, help="share of the full release size (default 1)")
    parser.add_argument("--growth", action="store_true", help="MIMIC-IV-ECG at 1/100, 1/30 and 1/10, with a linear fit")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 1 / 30, 0.1], help="--growth points")
    parser.add_argument("--num-proc", type=int, default=os.cpu_count() or 1, help="prepare's record readers")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument(
        "--sources",
        type=Path,
        help="PTB-XL root whose records500/ (and records100/) records are copied (default: the bundled sample's 198)",
    )
    parser.add_argument(
        "--questions",
        type=Path,
        nargs="*",
        default=[],
        help="more real ECG-QA version folders (template/ + paraphrased/) to draw questions from",
    )
    parser.add_argument(
        "--baseline-share", type=float, default=0.01, help="share of samples the upstream baseline writes"
    )
    parser.add_argument("--signal-share", type=float, default=0.001, help="same, for the signals-in-.mat layout")
    parser.add_argument("--keep", type=Path, help="build here and keep everything (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plot", type=Path, help="--growth: write the curves as a PNG here")
    args = parser.parse_args()
    import tempfile

    args.work = args.keep or Path(tempfile.mkdtemp(prefix="ecgqa-scale-", dir=os.environ.get("TMPDIR")))
    try:
        if args.growth:
            res: Any = growth(args.fractions, args)
            if args.plot:
                plot(res, args.runs, args.plot)
        else:
            res = run_version(
                args.version,
                args.fraction,
                args.work,
                num_proc=args.num_proc,
                runs=args.runs,
                sources=args.sources,
                extra=args.questions,
                baseline_share=args.baseline_share,
                signal_share=args.signal_share,
                keep_outputs=bool(args.keep),
            )
        if args.json:
            args.json.write_text(json.dumps(res, indent=1, default=str))
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
