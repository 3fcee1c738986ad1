"""Join ECG-QA questions to local records: each sample gains ``ecg_path`` (one per ``ecg_id``).

One pass over the release, one shard in memory at a time. Every record is checked once (its
header and signal file) and the outcome cached. Outputs go to a staging folder inside OUT and are
moved into place only when the whole run succeeds, so a failed run never leaves a half-mapped
release behind; ``mapping_report.json`` is written either way.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ecgqa.files import atomic_write_json
from ecgqa.release import RELEASE_FILES, ReleaseError, find_version_dir, load_shard, shards
from mapping.sources import mimic_record_paths, ptbxl_record_path, record_files

REPORT = "mapping_report.json"
MAX_LISTED = 20


class MissingRecordsError(RuntimeError):
    """Records referenced by the release are not under --records (strict mode)."""


@dataclass
class _Resolver:
    """Maps an id to its absolute record path, checking each record's files once."""

    locate: Callable[[int], str | None]
    root: Path
    _seen: dict[int, str | None] = field(default_factory=dict)

    def __call__(self, ecg_id: int) -> str | None:
        if ecg_id not in self._seen:
            rel = self.locate(ecg_id)
            path = None
            if rel is not None:
                record = self.root / rel
                if all(f.is_file() for f in record_files(record)):
                    path = str(record)
            self._seen[ecg_id] = path
        return self._seen[ecg_id]


def _resolver(version: str, root: Path, rate: int) -> _Resolver:
    root = root.resolve()
    if version == "ptbxl":
        if rate not in (100, 500):
            raise ValueError(f"--rate must be 100 or 500 for PTB-XL, not {rate}")
        return _Resolver(lambda i: ptbxl_record_path(i, rate), root)
    if rate != 500:
        raise ValueError("MIMIC-IV-ECG records exist at 500 Hz only")
    table = mimic_record_paths(root)
    return _Resolver(table.get, root)


def map_release(
    version: str,
    release_dir: str | Path,
    records: str | Path,
    out: str | Path,
    *,
    rate: int = 500,
    skip_missing: bool = False,
    progress: bool = True,
) -> dict:
    """Map every shard of ``release_dir`` (template/ and paraphrased/, all splits) into ``out``.

    Returns the report also written to ``out/mapping_report.json``. Raises MissingRecordsError
    after the full scan when records are missing and ``skip_missing`` is false.
    """
    start = time.perf_counter()
    version_dir = find_version_dir(release_dir, version)
    records, out = Path(records), Path(out)
    resolve = _resolver(version, records, rate)
    files = shards(version_dir)
    if not files:
        raise ReleaseError(f"{version_dir}: no question shards under template/ or paraphrased/")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".mapping-staging-"))
    report: dict = {
        "version": version,
        "release_dir": str(version_dir.resolve()),
        "records": str(records.resolve()),
        "rate": rate,
        "skip_missing": skip_missing,
        "files": {},
    }
    all_missing: set[int] = set()
    try:
        for shard in files:
            rel = shard.relative_to(version_dir).as_posix()
            samples = load_shard(shard)
            kept, missing_ids, skipped = [], set(), 0
            for sample in tqdm(samples, desc=f"map {rel}", unit="sample", disable=not progress, leave=False):
                paths = [resolve(int(i)) for i in sample["ecg_id"]]
                if None in paths:
                    missing_ids.update(int(i) for i, p in zip(sample["ecg_id"], paths) if p is None)
                    skipped += 1
                    continue
                kept.append({**sample, "ecg_path": paths})
            if not (missing_ids and not skip_missing):
                atomic_write_json(staging / rel, kept, indent=None)
            all_missing |= missing_ids
            report["files"][rel] = {
                "samples": len(samples),
                "mapped": len(kept),
                "skipped": skipped,
                "n_missing_ids": len(missing_ids),
                "missing_ids": sorted(missing_ids)[:MAX_LISTED],
            }
        totals = {k: sum(f[k] for f in report["files"].values()) for k in ("samples", "mapped", "skipped")}
        report["totals"] = {**totals, "n_missing_ids": len(all_missing), "missing_ids": sorted(all_missing)[:MAX_LISTED]}
        report["records_checked"] = len(resolve._seen)
        report["seconds"] = round(time.perf_counter() - start, 3)
        if all_missing and not skip_missing:
            report["status"] = "failed: missing records"
            atomic_write_json(out / REPORT, report, indent=None)
            raise MissingRecordsError(_missing_message(version, records, rate, all_missing, out / REPORT))
        for f in RELEASE_FILES:
            if (version_dir / f).is_file():
                shutil.copy2(version_dir / f, staging / f)
        report["status"] = "ok"
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            target = out / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        atomic_write_json(out / REPORT, report, indent=None)
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _missing_message(version: str, records: Path, rate: int, missing: set[int], report: Path) -> str:
    listed = ", ".join(map(str, sorted(missing)[:MAX_LISTED]))
    more = f" (and {len(missing) - MAX_LISTED} more)" if len(missing) > MAX_LISTED else ""
    if version == "ptbxl":
        example = records / (ptbxl_record_path(min(missing), rate) + ".hea")
        hint = (
            f"--records must be the PTB-XL v1.0.3 root that holds records{rate}/ (e.g. {example} should exist)"
        )
    else:
        hint = "--records must be the MIMIC-IV-ECG v1.0 root holding record_list.csv and files/"
    return (
        f"{len(missing)} records referenced by the release were not found under {records}: {listed}{more}. "
        f"{hint}. Use --skip-missing to map only the samples whose records exist. Details: {report}"
    )
