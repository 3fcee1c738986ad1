"""Join ECG-QA questions to local records: each sample gains ``ecg_path`` (one per ``ecg_id``).

One pass over the release, one shard in memory at a time. Every record is checked once (its
header and signal file) and the outcome cached. The whole output is built in a staging folder beside
OUT and swapped in with one rename when the run succeeds, so OUT holds exactly one release: a failed
or killed run leaves the previous output as it was (a failed run's report goes beside OUT).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ecgqa.data.records import record_files
from ecgqa.data.release import RELEASE_FILES, ReleaseError, find_version_dir, load_shard, shards
from ecgqa.files import atomic_write_json, claim_output_dir, recover_output, staging_dir, swap_dir
from ecgqa.sample import paths as sample_paths
from mapping.sources import mimic_record_paths, ptbxl_record_path

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


def _report_is_ours(path: Path) -> bool:
    """A mapping_report.json written by ``map_release``: a JSON object naming its version and files."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and "version" in report and "files" in report


def failed_report_path(out: Path) -> Path:
    """Where a failed run's report goes: beside ``out``, which a failed run never touches."""
    return out.parent / f"{out.name}.{REPORT}"


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

    The whole output is built in a sibling staging folder and swapped in with one rename, so ``out``
    holds exactly this run's release (never shards of an earlier one) or, after a failure or a
    crash, the previous output untouched. ``out`` must be absent, empty or an earlier mapping
    (``files.claim_output_dir``). Returns the report written to ``out/mapping_report.json`` (plus
    ``seconds``). Raises MissingRecordsError after the full scan when records are missing and
    ``skip_missing`` is false; that report goes to ``failed_report_path(out)``.
    """
    start = time.perf_counter()
    version_dir = find_version_dir(release_dir, version)
    records, out = Path(records), Path(out)
    resolve = _resolver(version, records, rate)
    files = shards(version_dir)
    if not files:
        raise ReleaseError(f"{version_dir}: no question shards under template/ or paraphrased/")
    recover_output(out)
    claim_output_dir(out, marker=REPORT, what="mapped release", is_ours=_report_is_ours)
    staging = staging_dir(out)
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
                paths = [resolve(i) for i in sample["ecg_id"]]
                if None in paths:
                    missing_ids.update(i for i, p in zip(sample["ecg_id"], paths, strict=False) if p is None)
                    skipped += 1
                    continue
                kept.append({**sample, "ecg_path": paths})
            if not (missing_ids and not skip_missing):
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(kept))  # C encoder; the staging folder is swapped in whole
            all_missing |= missing_ids
            report["files"][rel] = {
                "samples": len(samples),
                "mapped": len(kept),
                "skipped": skipped,
                "n_missing_ids": len(missing_ids),
                "missing_ids": sorted(missing_ids)[:MAX_LISTED],
            }
        totals = {k: sum(f[k] for f in report["files"].values()) for k in ("samples", "mapped", "skipped")}
        report["totals"] = {
            **totals,
            "n_missing_ids": len(all_missing),
            "missing_ids": sorted(all_missing)[:MAX_LISTED],
        }
        report["records_checked"] = len(resolve._seen)
        if all_missing and not skip_missing:
            report["status"] = "failed: missing records"
            failed = failed_report_path(out)
            atomic_write_json(failed, report, indent=None)
            raise MissingRecordsError(_missing_message(version, records, rate, all_missing, failed))
        for f in RELEASE_FILES:
            if (version_dir / f).is_file():
                shutil.copyfile(version_dir / f, staging / f)  # a new file: mode from the umask
        report["status"] = "ok"
        atomic_write_json(staging / REPORT, report, indent=None)  # last: marks the output ours and complete
        swap_dir(staging, out)
        failed_report_path(out).unlink(missing_ok=True)
        return {**report, "seconds": round(time.perf_counter() - start, 3)}
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _missing_message(version: str, records: Path, rate: int, missing: set[int], report: Path) -> str:
    listed = ", ".join(map(str, sorted(missing)[:MAX_LISTED]))
    more = f" (and {len(missing) - MAX_LISTED} more)" if len(missing) > MAX_LISTED else ""
    if version == "ptbxl":
        example = records / (ptbxl_record_path(min(missing), rate) + ".hea")
        hint = f"--records must be the PTB-XL v1.0.3 root that holds records{rate}/ (e.g. {example} should exist)"
    else:
        hint = "--records must be the MIMIC-IV-ECG v1.0 root holding record_list.csv and files/"
    return (
        f"{len(missing)} records referenced by the release were not found under {records}: {listed}{more}. "
        f"{hint}. Use --skip-missing to map only the samples whose records exist. Details: {report}"
    )


def map_bundled_sample(dest: str | Path, progress: bool = False) -> Path:
    """Map the bundled PTB-XL sample into ``dest/ptbxl`` (what `ecgqa prepare` uses without input)."""
    paths = sample_paths()
    out = Path(dest) / "ptbxl"
    map_release("ptbxl", paths.ptbxl_release, paths.ptbxl_records, out, progress=progress)
    return out
