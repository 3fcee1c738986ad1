"""``ecgqa prepare``: mapped ECG-QA samples → a prepared directory (questions as Arrow, one signal store).

Replaces the upstream preprocessing, which wrote one ``.mat`` per QA sample and re-read every ECG
once per sample. Here every unique ECG is read once (in parallel with ``--num-proc``), resampled to
``--rate`` and streamed into a float16 ``signals.npy`` memmap, so memory stays bounded at any scale.

Layout (the cross-stage contract; ``ecgqa.data`` reads it)::

    PREPARED/meta.json            version, variant, task, classes, rate, counts, sources, content_hash
    PREPARED/signals.npy          (N, 12, T) float16, LEADS order, mV
    PREPARED/ecg_ids.npy          (N,) int64: row → source ecg id
    PREPARED/questions/<split>/   HF datasets save_to_disk
    PREPARED/tokenizer/           WordPiece tokenizer trained on the questions (task qa)
    PREPARED/dropped.json         what --drop-bad removed (only when something was)

Safety: everything is built in a sibling ``.NAME.build-PID`` folder and renamed into place at the end,
with ``meta.json`` written last, so a crash never leaves a half-written directory under the final
name. Re-running with the same inputs and options finds the same content hash and does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ecgqa.files import atomic_write, sha256_file

FORMAT_VERSION = 1
TASKS = ("qa", "upperbound")
DEFAULT_SECONDS = 10
MAX_LISTED = 20
META = "meta.json"
DROPPED = "dropped.json"


class PrepareError(RuntimeError):
    """Bad records or inconsistent inputs; the message names them and says what to do."""


# ----------------------------------------------------------------------------------------------- CLI


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "mapped_dir",
        nargs="?",
        type=Path,
        help="output of `ecgqa map` (holds template/ or paraphrased/ and mapping_report.json); "
        "default: the bundled sample, mapped on the fly",
    )
    parser.add_argument("--out", type=Path, help="prepared directory to write (default: prepared/<version>-<variant>-<task>)")
    parser.add_argument("--variant", choices=["template", "paraphrased"], default="template")
    parser.add_argument("--splits", nargs="+", choices=["train", "valid", "test"], help="default: every split present")
    parser.add_argument("--rate", type=int, default=500, help="signal rate in Hz (records are resampled; default 500)")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="signal length in seconds (default 10)")
    parser.add_argument("--task", choices=TASKS, default="qa", help="qa (default) or upperbound attribute classification")
    parser.add_argument("--num-proc", type=int, default=1, help="parallel record readers (default 1)")
    parser.add_argument("--drop-bad", action="store_true", help="drop samples whose records are unreadable or hold NaN")
    parser.add_argument(
        "--grounding-classes", type=Path, help="grounding_class.csv for --task upperbound (default: the bundled list)"
    )
    parser.add_argument("--version", dest="ecg_version", choices=["ptbxl", "mimic-iv-ecg"], help="default: from the mapping")
    parser.add_argument("--force", action="store_true", help="rebuild even when the content hash matches")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    mapped = args.mapped_dir
    tmp = None
    try:
        if mapped is None:
            tmp = tempfile.TemporaryDirectory(prefix="ecgqa-mapped-")
            mapped = map_bundled_sample(Path(tmp.name), progress=not args.quiet)
            print(f"using the bundled sample (mapped into {mapped})", file=sys.stderr)
        version = args.ecg_version or detect_version(mapped)
        out = args.out or Path("prepared") / f"{version}-{args.variant}-{args.task}"
        meta = prepare(
            mapped,
            out,
            variant=args.variant,
            splits=args.splits,
            rate=args.rate,
            seconds=args.seconds,
            task=args.task,
            num_proc=args.num_proc,
            drop_bad=args.drop_bad,
            grounding_classes=args.grounding_classes,
            version=version,
            force=args.force,
            progress=not args.quiet,
        )
    finally:
        if tmp is not None:
            tmp.cleanup()
    status = "up to date" if meta.get("_noop") else f"prepared in {meta['seconds']} s"
    splits = ", ".join(f"{k} {v}" for k, v in meta["splits"].items())
    print(f"{out}: {status}; {meta['task']} {meta['version']}/{meta['variant']}, {meta['n_ecgs']} ECGs, samples: {splits}")
    if meta["dropped"]:
        print(f"dropped: {json.dumps(meta['dropped'])[:500]}")
    return 0


def map_bundled_sample(dest: Path, progress: bool = False) -> Path:
    """Map the bundled PTB-XL sample into ``dest/ptbxl`` (what `ecgqa prepare` uses without input)."""
    from ecgqa import sample
    from mapping.mapper import map_release

    paths = sample.paths()
    out = dest / "ptbxl"
    map_release("ptbxl", paths.ptbxl_release, paths.ptbxl_records, out, progress=progress)
    return out


def detect_version(mapped: Path) -> str:
    """The release version of a mapped folder: its mapping report, else the size of its answer space."""
    report = Path(mapped) / "mapping_report.json"
    if report.is_file():
        version = json.loads(report.read_text()).get("version")
        if version:
            return version
    answers = Path(mapped) / "answers.csv"
    if answers.is_file():
        n = sum(1 for _ in answers.open()) - 2  # header and "none"
        version = {103: "ptbxl", 187: "mimic-iv-ecg"}.get(n)
        if version is None:
            raise PrepareError(
                f"{answers}: {n} answer classes match neither PTB-XL (103) nor MIMIC-IV-ECG (187); pass --version"
            )
        return version
    raise PrepareError(f"{mapped}: cannot tell the ECG-QA version (no mapping_report.json or answers.csv); pass --version")


# ------------------------------------------------------------------------------------------ helpers


def _source(path: Path, root: Path | None) -> dict[str, Any]:
    name = path.relative_to(root).as_posix() if root is not None else str(path.resolve())
    return {"path": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _record_paths(shard_list: list[tuple[str, Path]], splits: Iterable[str]) -> set[str]:
    """Every record path the selected splits' questions use (read from the mapped shards)."""
    from ecgqa.release import load_shard

    out: set[str] = set()
    for split, shard in shard_list:
        if split in splits:
            for sample in load_shard(shard):
                out.update(sample.get("ecg_path") or [])
    return out


def _records_fingerprint(paths: Iterable[str]) -> str:
    """Size and mtime of each record's header and signal file: cheap (two stats a record), and it
    changes when a record is repaired or replaced, which hashing the release files alone would miss."""
    from mapping.sources import record_files

    h = hashlib.sha256()
    for path in sorted(set(paths)):
        for f in record_files(Path(path)):
            try:
                st = f.stat()
                h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except FileNotFoundError:
                h.update(f"{f}\0missing\n".encode())
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale_builds(out: Path) -> None:
    """Remove build folders of runs that died (their pid is gone); a running build is left alone."""
    leftovers = [*out.parent.glob(f".{out.name}.build-*"), *out.parent.glob(f".{out.name}.old-*")]
    for stale in leftovers:
        try:
            pid = int(stale.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid == os.getpid() or not _pid_alive(pid):
            shutil.rmtree(stale, ignore_errors=True)


def fit_length(signal: Any, length: int) -> Any:
    """Crop or zero-pad (12, T) to ``length`` samples: the store has one fixed T."""
    import numpy as np

    t = signal.shape[-1]
    if t == length:
        return signal
    if t > length:
        return signal[:, :length]
    out = np.zeros((signal.shape[0], length), dtype=signal.dtype)
    out[:, :t] = signal
    return out


def _read_one(item: tuple[int, str, int, int]) -> tuple[int, Any, str | None, int]:
    """Worker: one record → float16 (12, T), or the error text. Never raises, so one bad record
    does not stop the scan: every bad record is listed at the end."""
    import numpy as np

    from ecgqa.records import RecordError, read_record

    ecg_id, path, rate, length = item
    try:
        rec = read_record(path, fs=rate)
    except RecordError as e:
        return ecg_id, None, str(e), 0
    except Exception as e:  # noqa: BLE001 - anything a damaged file raises becomes a listed bad record
        return ecg_id, None, f"record {path}: unreadable ({type(e).__name__}: {e})", 0
    t = rec.signal.shape[-1]
    sig = fit_length(rec.signal, length).astype(np.float16)
    if not np.isfinite(sig).all():
        return ecg_id, None, f"record {path}: values outside the float16 range (|x| > 65504 mV)", 0
    return ecg_id, sig, None, int(t != length)


def _iter_shards(mapped: Path, variant: str, splits: Iterable[str]) -> Iterator[tuple[str, Path]]:
    from ecgqa.release import shards

    for split in splits:
        for path in shards(mapped, (variant,), (split,)):
            yield split, path


# -------------------------------------------------------------------------------------------- build


def prepare(
    mapped_dir: str | Path,
    out: str | Path,
    *,
    variant: str = "template",
    splits: Iterable[str] | None = None,
    rate: int = 500,
    seconds: float = DEFAULT_SECONDS,
    task: str = "qa",
    num_proc: int = 1,
    drop_bad: bool = False,
    grounding_classes: str | Path | None = None,
    version: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the prepared directory ``out`` from the mapped release ``mapped_dir`` and return its meta.

    Raises PrepareError after the full record scan when records are bad and ``drop_bad`` is false.
    """
    from ecgqa.release import SPLITS, AnswerSpace, load_shard
    from ecgqa.upperbound_labels import UpperboundError, bundled_grounding_classes, read_grounding_classes

    start = time.perf_counter()
    mapped, out = Path(mapped_dir), Path(out)
    if task not in TASKS:
        raise ValueError(f"--task must be one of {TASKS}, not {task!r}")
    if task == "upperbound" and variant != "template":
        raise ValueError("--task upperbound converts template questions only; use --variant template")
    if not (mapped / variant).is_dir():
        raise PrepareError(f"{mapped}: no {variant}/ folder; expected the output of `ecgqa map` (holding {variant}/<split>/*.json)")
    version = version or detect_version(mapped)
    present = [s for s in SPLITS if (mapped / variant / s).is_dir()]
    splits = list(splits) if splits else present
    missing = [s for s in splits if s not in present]
    if missing:
        raise PrepareError(f"{mapped / variant}: no split folder for {missing}; present: {present}")
    length = round(rate * seconds)
    space = AnswerSpace.from_release(mapped)

    # Sources and options decide the content hash: same hash → nothing to do.
    shard_list = list(_iter_shards(mapped, variant, present))
    if not any(s in splits for s, _ in shard_list):
        raise PrepareError(f"{mapped / variant}: no question shards for splits {splits}")
    sources = [_source(mapped / name, mapped) for name in ("answers.csv", "answers_for_each_template.csv")]
    sources += [_source(p, mapped) for _, p in shard_list]
    gpath = None
    gclasses: list[str] = []
    if task == "upperbound":
        gpath = Path(grounding_classes) if grounding_classes else bundled_grounding_classes(version)
        gclasses = read_grounding_classes(gpath)
        sources.append(_source(gpath, None))
    options = {
        "format": FORMAT_VERSION,
        "version": version,
        "variant": variant,
        "task": task,
        "splits": splits,
        "rate": rate,
        "signal_length": length,
        "drop_bad": drop_bad,
    }
    content_hash = hashlib.sha256(json.dumps([options, sources], sort_keys=True).encode()).hexdigest()
    if (out / META).is_file() and not force:
        try:
            old = json.loads((out / META).read_text())
        except json.JSONDecodeError:
            old = {}
        # Record files are inputs too: a repaired or replaced record (size / mtime) means a rebuild.
        if old.get("content_hash") == content_hash and old.get("records_fingerprint") == _records_fingerprint(
            _record_paths(shard_list, splits)
        ):
            return {**old, "_noop": True}

    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_builds(out)
    build = out.parent / f".{out.name}.build-{os.getpid()}"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    try:
        # Pass 1 over the questions: the global attribute map (all splits present, so it never depends
        # on --splits), the unique ECGs and their record paths. Only ids and paths stay in memory.
        attributes: set[str] = set()
        paths: dict[int, str] = {}
        builders = {}
        if task == "upperbound":
            from ecgqa.upperbound_labels import UpperboundBuilder

            builders = {s: UpperboundBuilder(gclasses, s) for s in splits}
        for split, shard in _progress(shard_list, progress, "scan questions"):
            for sample in load_shard(shard):
                attributes.update(sample.get("attribute") or [])
                if split not in splits:
                    continue
                if task == "upperbound":
                    try:
                        builders[split].add(sample)
                    except UpperboundError as e:
                        raise PrepareError(f"{shard}: {e}") from e
                ecg_paths = sample.get("ecg_path")
                if not ecg_paths or len(ecg_paths) != len(sample["ecg_id"]):
                    raise PrepareError(
                        f"{shard}: sample {sample['sample_id']} has no ecg_path for each ecg_id; "
                        "prepare reads the output of `ecgqa map`, not the raw release"
                    )
                for i, p in zip(sample["ecg_id"], ecg_paths):
                    paths.setdefault(int(i), p)
        records_fingerprint = _records_fingerprint(paths.values())
        if task == "upperbound":
            wanted = set().union(*(b.ecg_ids() for b in builders.values())) if builders else set()
            paths = {i: p for i, p in paths.items() if i in wanted}
        attribute_list = sorted(attributes)

        ecg_ids, bad, adjusted = _write_signals(build, paths, rate, length, num_proc, progress)
        dropped: dict[str, Any] = {}
        if bad:
            listed = "\n  ".join(f"{i}: {bad[i]}" for i in sorted(bad)[:MAX_LISTED])
            more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
            if not drop_bad:
                report = out.parent / f"{out.name}.bad_records.json"
                atomic_write(report, json.dumps({str(i): bad[i] for i in sorted(bad)}, indent=1))
                raise PrepareError(
                    f"{len(bad)} bad records (unreadable, truncated or NaN):\n  {listed}{more}\n"
                    f"Full list: {report}. Re-run with --drop-bad to drop the samples that use them."
                )
            dropped["bad_records"] = {str(i): bad[i] for i in sorted(bad)}
        row_of = {int(e): r for r, e in enumerate(ecg_ids)}

        # Pass 2: the questions tables, streamed shard by shard into Arrow.
        counts: dict[str, int] = {}
        dropped_samples: dict[str, list[int]] = {}
        for split in splits:
            if task == "qa":
                rows = _qa_rows(shard_list, split, space, attribute_list, row_of, dropped_samples)
            else:
                rows = _upperbound_rows(builders[split], row_of, dropped_samples, split)
            counts[split] = _save_split(build, split, rows, task, content_hash)
        if any(dropped_samples.values()):
            dropped["samples"] = {s: ids for s, ids in dropped_samples.items() if ids}
        if task == "upperbound":
            up = {s: {**b.stats, "unknown_attributes": dict(b.unknown_attributes)} for s, b in builders.items()}
        else:
            up = None
        if task == "qa":
            _train_tokenizer(build, progress)

        meta = {
            "version": version,
            "variant": variant,
            "task": task,
            "classes": gclasses if task == "upperbound" else list(space.classes),
            "answer_classes": list(space.classes),
            **({"grounding_classes": gclasses} if task == "upperbound" else {}),
            "attributes": attribute_list,
            "rate": rate,
            "signal_length": length,
            "n_ecgs": len(ecg_ids),
            "splits": counts,
            "sources": sources,
            "content_hash": content_hash,
            "records_fingerprint": records_fingerprint,
            "format": FORMAT_VERSION,
            "dropped": _dropped_summary(dropped),
            "length_adjusted": adjusted,
            **({"upperbound": up} if up is not None else {}),
            "seconds": round(time.perf_counter() - start, 3),
        }
        if dropped:
            atomic_write(build / DROPPED, json.dumps(dropped, indent=1))
        atomic_write(build / META, json.dumps(meta, indent=1))  # last: marks the build complete
        _swap_into_place(build, out)
        return meta
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _progress(items: list, progress: bool, desc: str) -> Iterable:
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="shard", disable=not progress, leave=False)


def _dropped_summary(dropped: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "bad_records" in dropped:
        ids = list(dropped["bad_records"])
        out["bad_records"] = len(ids)
        out["bad_record_ids"] = ids[:MAX_LISTED]
    for split, ids in dropped.get("samples", {}).items():
        out[f"samples_{split}"] = len(ids)
    if out:
        out["report"] = DROPPED
    return out


def _swap_into_place(build: Path, out: Path) -> None:
    """Rename the finished build to ``out``; an older ``out`` is moved aside first, then deleted."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(build, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_signals(
    build: Path, paths: dict[int, str], rate: int, length: int, num_proc: int, progress: bool
) -> tuple[Any, dict[int, str], int]:
    """Stream every unique record into ``signals.npy`` (rows in ascending ecg id order).

    Rows arrive in order (``imap`` keeps it), so the file is written front to back after its
    ``.npy`` header: no memmap pages pile up in RAM, and at most one window of records is in flight.
    Returns (ecg_ids of the stored rows, {bad id: reason}, number of records cropped/padded).
    Bad rows are compacted away afterwards, so the store only ever holds readable ECGs.
    """
    import multiprocessing

    import numpy as np
    from tqdm.auto import tqdm

    ids = np.array(sorted(paths), dtype=np.int64)
    target = build / "signals.npy"
    items = [(int(i), paths[int(i)], rate, length) for i in ids]
    bad: dict[int, str] = {}
    adjusted = 0
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False,
              "shape": (len(ids), 12, length)}
    bar = tqdm(total=len(items), desc="read records", unit="ecg", disable=not progress, leave=False)
    with target.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        try:
            if num_proc > 1 and len(items) > 1:
                ctx = multiprocessing.get_context("spawn" if sys.platform == "darwin" else None)
                with ctx.Pool(num_proc) as pool:
                    chunk = max(1, min(16, len(items) // (num_proc * 8)))
                    results = _bounded_imap(pool, _read_one, items, chunk, window=num_proc * chunk * 8)
                    for ecg_id, sig, err, adj in results:
                        adjusted += _store_row(f, ecg_id, sig, err, bad, length) and adj
                        bar.update()
            else:
                for item in items:
                    ecg_id, sig, err, adj = _read_one(item)
                    adjusted += _store_row(f, ecg_id, sig, err, bad, length) and adj
                    bar.update()
        finally:
            bar.close()
    if bad:
        keep = np.array([int(i) not in bad for i in ids], dtype=bool)
        _compact(target, keep)
        ids = ids[keep]
    np.save(build / "ecg_ids.npy", ids)
    return ids, bad, int(adjusted)


def _bounded_imap(pool: Any, fn: Any, items: list, chunksize: int, window: int) -> Iterator[Any]:
    """``pool.imap`` in order, but with at most ``window`` items submitted and not yet consumed.

    A bare ``imap`` over every record lets the workers run arbitrarily far ahead of the writer: its
    results are buffered in RAM (120 kB per 10 s ECG), e.g. behind one slow read at the front of the
    ordered queue. Submitting window by window bounds that buffer at any dataset size.
    """
    for start in range(0, len(items), window):
        yield from pool.imap(fn, items[start : start + window], chunksize=chunksize)


def _store_row(f: Any, ecg_id: int, sig: Any, err: str | None, bad: dict[int, str], length: int) -> bool:
    """Append one row; a bad record gets a zero placeholder (compacted away later) and is listed."""
    if err is not None:
        bad[ecg_id] = err
        f.write(bytes(12 * length * 2))
        return False
    f.write(sig.tobytes())
    return True


def _compact(path: Path, keep: Any, chunk: int = 256) -> None:
    """Rewrite the store without the rows of bad records, a chunk at a time (bounded memory)."""
    import numpy as np

    src = np.load(path, mmap_mode="r")
    tmp = path.with_name(".compact.npy")
    header = {"descr": np.lib.format.dtype_to_descr(src.dtype), "fortran_order": False,
              "shape": (int(keep.sum()),) + src.shape[1:]}
    rows = np.flatnonzero(keep)
    with tmp.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, len(rows), chunk):
            f.write(np.ascontiguousarray(src[rows[start : start + chunk]]).tobytes())
    del src
    os.replace(tmp, path)


def _qa_rows(
    shard_list: list[tuple[str, Path]],
    split: str,
    space: Any,
    attributes: list[str],
    row_of: dict[int, int],
    dropped: dict[str, list[int]],
) -> Iterator[dict[str, Any]]:
    from ecgqa.release import encode_sample, load_shard

    attr_id = {a: i for i, a in enumerate(attributes)}
    lost = dropped.setdefault(split, [])
    for s, shard in shard_list:
        if s != split:
            continue
        for sample in load_shard(shard):
            ids = [int(i) for i in sample["ecg_id"]]
            if any(i not in row_of for i in ids):
                lost.append(int(sample["sample_id"]))
                continue
            where = f"{shard}: sample {sample['sample_id']}: "
            enc = encode_sample(space, sample, where=where)
            attrs = list(sample.get("attribute") or [])
            yield {
                "sample_id": int(sample["sample_id"]),
                "template_id": int(sample["template_id"]),
                "question_id": int(sample["question_id"]),
                "question": sample["question"],
                "question_type": sample["question_type"],
                "attribute_type": sample["attribute_type"],
                **enc,
                "ecg_id": ids,
                "ecg_rows": [row_of[i] for i in ids],
                "attribute": attrs,
                "attribute_ids": [attr_id[a] for a in attrs],
            }


def _upperbound_rows(builder: Any, row_of: dict[int, int], dropped: dict[str, list[int]], split: str) -> Iterator[dict]:
    lost = dropped.setdefault(split, [])
    for row in builder.rows():
        if row["ecg_id"][0] not in row_of:
            lost.append(row["sample_id"])
            continue
        yield {**row, "ecg_rows": [row_of[row["ecg_id"][0]]]}


def features(task: str) -> Any:
    """The Arrow schema of a questions table (the contract's columns)."""
    from datasets import Features, List, Value

    ints = List(Value("int64"))
    if task == "qa":
        return Features(
            {
                "sample_id": Value("int64"),
                "template_id": Value("int64"),
                "question_id": Value("int64"),
                "question": Value("string"),
                "question_type": Value("string"),
                "attribute_type": Value("string"),
                "answer": ints,
                "valid_classes": ints,
                "qt1": Value("int64"),
                "qt2": Value("int64"),
                "qt3": Value("int64"),
                "ecg_id": ints,
                "ecg_rows": ints,
                "attribute": List(Value("string")),
                "attribute_ids": ints,
            }
        )
    return Features(
        {
            "sample_id": Value("int64"),
            "ecg_id": ints,
            "lead_group": Value("string"),
            "label_classes": ints,
            "label_values": ints,
            "question_type": Value("string"),
            "attribute_type": Value("string"),
            "ecg_rows": ints,
        }
    )


def _save_split(build: Path, split: str, rows: Iterator[dict], task: str, content_hash: str) -> int:
    """Stream rows into an Arrow dataset under ``build/questions/<split>`` (bounded memory).

    Rows go through ``datasets``' ArrowWriter in batches into one staging file, which
    ``save_to_disk`` then lays out (and shards, for very large splits) in the standard format.
    """
    import datasets
    from datasets.arrow_writer import ArrowWriter

    feats = features(task)
    staging = build / f".{split}.arrow"
    with ArrowWriter(features=feats, path=str(staging), writer_batch_size=10_000) as writer:
        for row in rows:
            writer.write(row)
        writer.finalize()
    ds = datasets.Dataset.from_file(str(staging))
    ds._fingerprint = hashlib.sha256(f"{content_hash}-{split}".encode()).hexdigest()[:16]
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        ds.save_to_disk(str(build / "questions" / split))
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
    n = len(ds)
    del ds
    staging.unlink()
    return n


def _train_tokenizer(build: Path, progress: bool, vocab_size: int = 8000) -> None:
    """A BERT-style uncased WordPiece tokenizer trained on the prepared questions (offline default)."""
    import datasets
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)

    def texts() -> Iterator[list[str]]:
        for split_dir in sorted((build / "questions").iterdir()):
            ds = datasets.load_from_disk(str(split_dir))
            for start in range(0, len(ds), 10_000):
                yield ds[start : start + 10_000]["question"]

    tok.train_from_iterator(texts(), trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )
    fast.save_pretrained(str(build / "tokenizer"))
