"""``ecgqa export hub PREPARED ... --out DIR``: prepared QA folders as a Hugging Face Hub dataset folder.

The folder loads with ``datasets.load_dataset(DIR, CONFIG)`` and no custom code: Parquet shards under
``data/<config>/<split>-NNNNN-of-NNNNN.parquet`` and a dataset card ``README.md`` whose YAML front matter
lists the configs, their splits and files, the licence and the citation. Configs:

- ``<version>-<variant>`` (e.g. ``ptbxl-template``): one row per question (``QUESTION_COLUMNS``), read from
  the prepared folder through ``ecgqa.data.prepared.PreparedData``; answers are class names as in the
  release (``["none"]`` for the empty answer set);
- ``<version>-signals``: one row per ECG, ``ecg_id`` + the (12, T) float16 signal of the prepared store
  (LEADS order, mV), split like the questions that reference it — only with ``signals="embed"``;
- ``paper-llm-sample-ids``: the 8,154 published PTB-XL test ``sample_id``\\ s of the ECG-QA paper's LLM
  experiments (``ecgqa/evaluation/paper_sample.py``), and ``ptbxl-<variant>-paper-llm-sample``: their
  question rows, when a PTB-XL test split is exported.

Signals are embedded only where their licence allows redistribution (``SIGNAL_POLICY``): PTB-XL is
CC BY 4.0; MIMIC-IV-ECG waveforms are PhysioNet's to distribute, so a MIMIC export must use
``signals="none"`` (record references only; ``ecgqa records-needed mimic`` lists the files to fetch).
``ecgqa_export.json`` is written last: it marks a finished export this tool may replace.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ecgqa.data.prepared import PreparedData, PreparedDataError
from ecgqa.distribution import DATASET_KIND, MARKER
from ecgqa.evaluation.paper_sample import PAPER_SAMPLE_SPLIT, PAPER_SAMPLE_VERSION, paper_sample_ids
from ecgqa.files import atomic_write, atomic_write_json, claim_output_dir, marker_kind, staging_dir, swap_dir
from mapping.sources import ptbxl_record_path

CARD = "README.md"
SIGNAL_MODES = ("embed", "none")
#: signal rows per Parquet shard (12 x 5000 float16 = 120 kB a row: ~240 MB shards at 500 Hz)
SIGNAL_SHARD_ROWS = 2000
QUESTION_SHARD_ROWS = 500_000
PAPER_IDS_CONFIG = "paper-llm-sample-ids"

#: version -> whether its waveforms may be re-published here, and why not.
SIGNAL_POLICY: dict[str, tuple[bool, str]] = {
    "ptbxl": (True, "PTB-XL v1.0.3 is released under CC BY 4.0, which allows redistribution with attribution"),
    "mimic-iv-ecg": (
        False,
        "MIMIC-IV-ECG waveforms are distributed by PhysioNet under PhysioNet's own licence and terms of use "
        "(not CC BY 4.0); this tool never re-publishes them. Export with --signals none (questions and record "
        "references only) and let each user fetch the records from PhysioNet "
        "(`ecgqa records-needed mimic RELEASE --record-list record_list.csv --out urls.txt`, docs/get-data.md)",
    ),
}

QUESTION_COLUMNS = (
    "sample_id",
    "template_id",
    "question_id",
    "question",
    "question_type",
    "attribute_type",
    "answer",
    "valid_classes",
    "qt1",
    "qt2",
    "qt3",
    "ecg_id",
    "ecg_source",
    "ecg_record",
    "attribute",
)


class ExportError(ValueError):
    """The prepared folders cannot be exported as asked; the message says why and what to do."""


def question_schema() -> pa.Schema:
    ints, strs = pa.list_(pa.int64()), pa.list_(pa.string())
    return pa.schema(
        [
            ("sample_id", pa.int64()),
            ("template_id", pa.int64()),
            ("question_id", pa.int64()),
            ("question", pa.string()),
            ("question_type", pa.string()),
            ("attribute_type", pa.string()),
            ("answer", strs),
            ("valid_classes", strs),
            ("qt1", pa.int64()),
            ("qt2", pa.int64()),
            ("qt3", pa.int64()),
            ("ecg_id", ints),
            ("ecg_source", pa.string()),
            ("ecg_record", strs),
            ("attribute", strs),
        ]
    )


def signal_schema(length: int) -> pa.Schema:
    """``ecg_id`` + ``signal``: 12 rows of ``length`` float16 (datasets reads it as nested lists)."""
    return pa.schema([("ecg_id", pa.int64()), ("signal", pa.list_(pa.list_(pa.float16(), length), 12))])


def question_rows(data: PreparedData, split: str) -> Iterator[dict[str, Any]]:
    """The Hub rows of one split of a prepared QA folder: indices back to class names, as in the release."""
    classes = list(data.info.answer_classes)
    version = data.info.version
    table = data.split(split)
    for start in range(0, len(table), 10_000):
        batch = table[start : start + 10_000]
        for i in range(len(batch["sample_id"])):
            answer = [classes[c] for c in batch["answer"][i]]
            yield {
                "sample_id": batch["sample_id"][i],
                "template_id": batch["template_id"][i],
                "question_id": batch["question_id"][i],
                "question": batch["question"][i],
                "question_type": batch["question_type"][i],
                "attribute_type": batch["attribute_type"][i],
                "answer": answer or ["none"],
                "valid_classes": [classes[c] for c in batch["valid_classes"][i]],
                "qt1": batch["qt1"][i],
                "qt2": batch["qt2"][i],
                "qt3": batch["qt3"][i],
                "ecg_id": list(batch["ecg_id"][i]),
                "ecg_source": version,
                "ecg_record": _records(version, batch["ecg_id"][i]),
                "attribute": list(batch["attribute"][i]),
            }


def _records(version: str, ids: list[int]) -> list[str] | None:
    """Root-relative source record paths: PTB-XL's 500 Hz records (``records100/.._lr`` at 100 Hz); None for
    MIMIC-IV-ECG, whose paths need its record_list.csv (``ecgqa records-needed mimic`` resolves them)."""
    if version == "ptbxl":
        return [ptbxl_record_path(int(i), 500) for i in ids]
    return None


def _write_shards(
    folder: Path, split: str, schema: pa.Schema, rows: Sequence[dict[str, Any]], per_shard: int
) -> list[str]:
    """Write ``rows`` (question or id rows; signals go through ``_write_signals``) as
    ``<split>-NNNNN-of-NNNNN.parquet`` files; returns their names."""
    n = max(1, math.ceil(len(rows) / per_shard))
    names = []
    for k in range(n):
        name = f"{split}-{k:05d}-of-{n:05d}.parquet"
        chunk = rows[k * per_shard : (k + 1) * per_shard]
        table = pa.Table.from_pylist(list(chunk), schema=schema)
        pq.write_table(table, folder / name, row_group_size=50_000)
        names.append(name)
    return names


def _write_questions(
    folder: Path, split: str, data: PreparedData, per_shard: int, keep: set[int] | None, progress: bool
) -> tuple[list[str], int, set[int], list[dict[str, Any]]]:
    """Stream one split's questions into ``<split>-NNNNN-of-NNNNN.parquet`` files, 10,000 rows at a time.

    Returns the file names, the row count, the ECG ids the rows reference and the rows whose sample id is
    in ``keep`` (the paper's LLM sample; at most 8,154 rows).
    """
    total = len(data.split(split))
    n = max(1, math.ceil(total / per_shard))
    schema = question_schema()
    names = [f"{split}-{k:05d}-of-{n:05d}.parquet" for k in range(n)]
    ecgs: set[int] = set()
    kept: list[dict[str, Any]] = []
    rows = question_rows(data, split)
    bar = tqdm(total=total, desc=f"questions {split}", unit="question", disable=not progress)
    count = 0
    for name in names:
        with pq.ParquetWriter(folder / name, schema) as writer:
            in_shard = 0
            while in_shard < per_shard:
                batch = list(itertools.islice(rows, min(10_000, per_shard - in_shard)))
                if not batch:
                    break
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                for r in batch:
                    ecgs.update(r["ecg_id"])
                    if keep is not None and r["sample_id"] in keep:
                        kept.append(r)
                in_shard += len(batch)
                bar.update(len(batch))
            count += in_shard
    bar.close()
    if count != total:
        raise ExportError(f"{data.path}: split {split} holds {total} rows but {count} were read")
    return names, count, ecgs, kept


def _write_signals(
    folder: Path, split: str, data: PreparedData, ecg_ids: list[int], per_shard: int, progress: bool
) -> list[str]:
    """The ECGs of one split, a shard at a time (bounded memory), straight from the prepared store."""
    length = data.signal_length
    schema = signal_schema(length)
    n = max(1, math.ceil(len(ecg_ids) / per_shard))
    names = []
    bar = tqdm(total=len(ecg_ids), desc=f"signals {split}", unit="ECG", disable=not progress)
    for k in range(n):
        name = f"{split}-{k:05d}-of-{n:05d}.parquet"
        with pq.ParquetWriter(folder / name, schema) as writer:
            ids = ecg_ids[k * per_shard : (k + 1) * per_shard]
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                rows = np.asarray([data.row_of(e) for e in part], dtype=np.int64)
                block = np.ascontiguousarray(data.signals[rows], dtype=np.float16)  # (n, 12, T)
                flat = pa.array(block.reshape(-1), type=pa.float16())
                leads = pa.FixedSizeListArray.from_arrays(flat, length)
                signal = pa.FixedSizeListArray.from_arrays(leads, 12)
                writer.write_table(pa.table({"ecg_id": pa.array(part, pa.int64()), "signal": signal}, schema=schema))
                bar.update(len(part))
        names.append(name)
    bar.close()
    return names


def _open(prepared: Path) -> PreparedData:
    try:
        data = PreparedData(prepared)
    except PreparedDataError as e:
        raise ExportError(str(e)) from e
    if data.task != "qa":
        raise ExportError(
            f"{prepared} was prepared for task {data.task!r}; `ecgqa export hub` publishes ECG-QA questions: "
            f"give a folder made by `ecgqa prepare --task qa`"
        )
    return data


def export_dataset(
    prepared: Sequence[str | Path],
    out: str | Path,
    *,
    signals: str = "embed",
    signal_shard_rows: int = SIGNAL_SHARD_ROWS,
    question_shard_rows: int = QUESTION_SHARD_ROWS,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the Hub folder for one or more prepared QA folders (one config per version/variant).

    Returns the summary written to ``ecgqa_export.json``. Raises :class:`ExportError` before writing
    anything when an input is not a prepared QA folder, two inputs share a version/variant, or signals
    would be embedded for a version whose licence does not allow it.
    """
    if signals not in SIGNAL_MODES:
        raise ExportError(f"--signals {signals!r}: choose one of {', '.join(SIGNAL_MODES)}")
    if not prepared:
        raise ExportError("give at least one prepared folder")
    datas = [_open(Path(p)) for p in prepared]
    seen: dict[str, Path] = {}
    for d in datas:
        key = f"{d.info.version}-{d.info.variant}"
        if key in seen:
            raise ExportError(f"{seen[key]} and {d.path} are both {key}: give one prepared folder per version/variant")
        seen[key] = d.path
        allowed, why = SIGNAL_POLICY.get(d.info.version, (False, "unknown source database"))
        if signals == "embed" and not allowed:
            raise ExportError(f"{d.path}: refusing to embed {d.info.version} signals: {why}")
    by_version: dict[str, PreparedData] = {}
    for d in datas:  # the signal store of each version: every variant of one version has the same ECGs
        by_version.setdefault(d.info.version, d)
    out = claim_output_dir(out, marker=MARKER, what="Hub dataset", is_ours=marker_kind(DATASET_KIND))

    build = staging_dir(out, "export")
    try:
        configs: list[dict[str, Any]] = []
        summary: dict[str, Any] = {"kind": DATASET_KIND, "signals": signals, "configs": {}}
        paper_ids = set(paper_sample_ids())
        for d in datas:
            name = f"{d.info.version}-{d.info.variant}"
            folder = build / "data" / name
            folder.mkdir(parents=True)
            files: dict[str, list[str]] = {}
            counts: dict[str, int] = {}
            split_ecgs: dict[str, list[int]] = {}
            paper_rows: list[dict[str, Any]] = []
            for split in d.splits:
                is_paper = d.info.version == PAPER_SAMPLE_VERSION and split == PAPER_SAMPLE_SPLIT
                files[split], counts[split], ecgs, kept = _write_questions(
                    folder, split, d, question_shard_rows, paper_ids if is_paper else None, progress
                )
                split_ecgs[split] = sorted(ecgs)
                paper_rows += kept
            configs.append(_config(name, folder, files, default=not configs))
            summary["configs"][name] = {"prepared": _describe(d), "splits": counts}
            if paper_rows:
                pname = f"{name}-paper-llm-sample"
                pfolder = build / "data" / pname
                pfolder.mkdir(parents=True)
                pfiles = {"test": _write_shards(pfolder, "test", question_schema(), paper_rows, question_shard_rows)}
                configs.append(_config(pname, pfolder, pfiles))
                summary["configs"][pname] = {"splits": {"test": len(paper_rows)}, "of": len(paper_ids)}
            if signals == "embed" and by_version[d.info.version] is d:
                sname = f"{d.info.version}-signals"
                sfolder = build / "data" / sname
                sfolder.mkdir(parents=True)
                sfiles = {
                    s: _write_signals(sfolder, s, d, ids, signal_shard_rows, progress) for s, ids in split_ecgs.items()
                }
                configs.append(_config(sname, sfolder, sfiles))
                summary["configs"][sname] = {
                    "splits": {s: len(ids) for s, ids in split_ecgs.items()},
                    "rate": d.rate,
                    "signal_length": d.signal_length,
                }
        if any(d.info.version == PAPER_SAMPLE_VERSION for d in datas):
            folder = build / "data" / PAPER_IDS_CONFIG
            folder.mkdir(parents=True)
            ids = [{"sample_id": i} for i in sorted(paper_ids)]
            schema = pa.schema([("sample_id", pa.int64())])
            configs.append(
                _config(PAPER_IDS_CONFIG, folder, {"test": _write_shards(folder, "test", schema, ids, 10**6)})
            )
            summary["configs"][PAPER_IDS_CONFIG] = {"splits": {"test": len(ids)}}

        from ecgqa.distribution.cards import dataset_card

        atomic_write(build / CARD, dataset_card(datas, configs, summary))
        atomic_write_json(build / MARKER, summary, indent=1)  # last: marks the export finished
        swap_dir(build, out)
    except BaseException:
        import shutil

        shutil.rmtree(build, ignore_errors=True)
        raise
    return summary


def _config(name: str, folder: Path, files: dict[str, list[str]], default: bool = False) -> dict[str, Any]:
    """One ``configs:`` entry of the card: its data files per split, relative to the dataset root."""
    rel = f"data/{folder.name}"
    entry: dict[str, Any] = {
        "config_name": name,
        "data_files": [{"split": s, "path": f"{rel}/{s}-*.parquet"} for s in files],
    }
    if default:
        entry["default"] = True
    return entry


def _describe(d: PreparedData) -> dict[str, Any]:
    m = d.info
    return {
        "version": m.version,
        "variant": m.variant,
        "content_hash": m.content_hash,
        "rate": m.rate,
        "signal_length": m.signal_length,
        "n_ecgs": m.n_ecgs,
        "n_answer_classes": len(m.answer_classes),
        "dropped": m.dropped,
    }


__all__ = [
    "CARD",
    "MARKER",
    "PAPER_IDS_CONFIG",
    "QUESTION_COLUMNS",
    "SIGNAL_MODES",
    "SIGNAL_POLICY",
    "ExportError",
    "export_dataset",
    "question_rows",
]
