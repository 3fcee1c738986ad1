"""`ecgqa generate ptbxl` at PTB-XL sizes, against `ecgqa map` + `ecgqa prepare` on the same data in the same run.

Builds a PTB-XL root of N ECGs: real records copied under new ids (``benchmarks/scale.py``'s
``build_records``: signal file hard-linked, header rewritten) and, for each, the metadata row of the record
it copies (new ``ecg_id``; ``patient_id`` shifted per copy round, so every copy round is a new set of
patients with the source's ECGs-per-patient structure). Then, as subprocesses, each measured for wall time,
CPU time and the peak PSS of its process tree (``scale.measure``):

1. ``generate --no-measure``: reading the metadata, deriving labels, sampling, writing the release, in one
   process, then again with ``--num-proc`` processes (the templates in parallel), checking that both
   write the same files byte for byte (the library is called with ``num_proc`` where the CLI has no
   ``--num-proc`` yet);
2. ``generate`` (the full run, ``--num-proc``; its extra time over 1. is the signal measurement:
   ``ecgqa.data.features`` numeric features and the ``ecgqa.data.measure`` axis); ``--skip-measure-run``
   leaves it out (at 21,799 ECGs it is the long part);
3. ``map`` + ``prepare`` of the generated release (``--num-proc`` record readers), the baseline stage: every
   generate run is printed as a ratio of its wall and CPU time.

Plus the measurement alone in-process over ``--probe`` records with 1 … ``--num-proc`` worker processes
(ECGs/s), which is what a parallel measurement stage would reach. Memory flatness: run two sizes
(``--ecgs 2000 21799``) and compare the peaks (tree PSS, and the main process's heap).

    python benchmarks/generate.py --ecgs 500 2000 [--num-proc 2] [--sources /path/to/ptbxl] [--keep DIR]
    python benchmarks/generate.py --ecgs 2000 21799 --skip-measure-run --sources ../shared/data/ptbxl

Figures: docs/scale.md ("Generation").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import build_records, measure, source_records  # noqa: E402

FULL = 21_799  # PTB-XL v1.0.3 ECGs


def build_root(n: int, out: Path, sources: Path | None) -> Path:
    """A PTB-XL root of ``n`` ECGs copied from ``sources`` (default: the bundled sample)."""
    from ecgqa import sample

    src_root = sources or sample.paths().ptbxl_records
    srcs = source_records(sources)
    ids = np.arange(1, n + 1)
    build_records("ptbxl", ids, out, sources=sources, rates=(500,))
    db = pd.read_csv(src_root / "ptbxl_database.csv", index_col="ecg_id")
    src_ids = [int(s.name.split("_")[0]) for s in srcs]
    rows = []
    for k in ids:  # build_records copies srcs[k % len(srcs)] to id k
        src_id = src_ids[int(k) % len(srcs)]
        row = db.loc[src_id].to_dict()
        row["ecg_id"] = int(k)
        row["patient_id"] = float(row["patient_id"]) + 1_000_000 * (int(k) // len(srcs))
        row["filename_hr"] = f"records500/{int(k) // 1000 * 1000:05d}/{int(k):05d}_hr"
        rows.append(row)
    meta = pd.DataFrame(rows)
    meta = meta[["ecg_id", *[c for c in meta.columns if c != "ecg_id"]]]
    meta.to_csv(out / "ptbxl_database.csv", index=False)
    (out / "scp_statements.csv").write_bytes((src_root / "scp_statements.csv").read_bytes())
    return out


def _measure_one(path: str) -> bool:
    from ecgqa.data.attributes import measure_record

    m = measure_record(path)
    return m is not None and m.rr is not None


def probe(root: Path, n: int, procs: list[int]) -> dict[int, float]:
    """ECGs/s of ``measure_record`` over the first ``n`` records with each worker count."""
    from concurrent.futures import ProcessPoolExecutor

    from mapping.sources import ptbxl_record_path

    paths = [str(root / ptbxl_record_path(i)) for i in range(1, n + 1)]
    _measure_one(paths[0])  # imports (NeuroKit2, scipy) once, outside the timing
    out = {}
    for p in procs:
        t0 = time.perf_counter()
        if p == 1:
            ok = sum(_measure_one(x) for x in paths)
        else:
            with ProcessPoolExecutor(p) as ex:
                ok = sum(ex.map(_measure_one, paths, chunksize=4))
        out[p] = round(n / (time.perf_counter() - t0), 2)
        print(f"  measurement, {p} process(es): {out[p]} ECGs/s ({ok}/{n} with features)", flush=True)
    return out


def _cli_has_num_proc() -> bool:
    """Whether ``ecgqa generate ptbxl`` takes ``--num-proc`` (else the library is called with num_proc)."""
    import subprocess

    r = subprocess.run([sys.executable, "-m", "ecgqa", "generate", "ptbxl", "--help"], capture_output=True, text=True)
    return "--num-proc" in r.stdout


def _generate_cmd(root: Path, out: Path, *, measure: bool, num_proc: int, cli: bool) -> list[str]:
    if cli or num_proc == 1:
        cmd = [sys.executable, "-m", "ecgqa", "generate", "ptbxl", "--records", str(root), "--out", str(out), "-q"]
        return cmd + (["--no-measure"] if not measure else []) + (["--num-proc", str(num_proc)] if num_proc > 1 else [])
    code = (
        "import sys; from ecgqa.generation.engine import generate; "
        f"r = generate('ptbxl', {str(out)!r}, records={str(root)!r}, measure={measure}, progress=False, "
        f"num_proc={num_proc}); print(sum(r['n_samples'].values()), 'samples')"
    )
    return [sys.executable, "-c", code]


def _same_release(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    other = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files == other and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def run_size(n: int, work: Path, args: argparse.Namespace) -> dict:
    root = build_root(n, work / f"ptbxl-{n}", args.sources)
    log = work / f"log-{n}.txt"
    res = {"ecgs": n}
    cli = _cli_has_num_proc()
    runs = {"generate_no_measure": _generate_cmd(root, work / f"g0-{n}", measure=False, num_proc=1, cli=cli)}
    if args.num_proc > 1:
        runs[f"generate_no_measure_{args.num_proc}proc"] = _generate_cmd(
            root, work / f"g0-{n}-np", measure=False, num_proc=args.num_proc, cli=cli
        )
    if not args.skip_measure_run:
        runs["generate"] = _generate_cmd(root, work / f"g-{n}", measure=True, num_proc=args.num_proc, cli=cli)
    for name, cmd in runs.items():
        r = measure(name, cmd, log)  # exits naming the run if it fails
        res[name] = {
            "wall_s": r.wall_s,
            "cpu_s": r.cpu_s,
            "peak_tree_mb": r.peak_tree_mb,
            "peak_main_anon_mb": r.peak_main_anon_mb,
            "load": r.load_before,
        }
        print(
            f"  {name}: {r.wall_s} s wall, {r.cpu_s} s CPU, peak {r.peak_tree_mb} MB (tree PSS), "
            f"main heap {r.peak_main_anon_mb} MB",
            flush=True,
        )
    if args.num_proc > 1:
        res["num_proc_identical"] = _same_release(work / f"g0-{n}", work / f"g0-{n}-np")
        print(f"  --num-proc {args.num_proc} wrote the same files byte for byte: {res['num_proc_identical']}")
    release = work / (f"g0-{n}" if args.skip_measure_run else f"g-{n}")
    report = json.loads((release / "generation.json").read_text())
    res["samples"] = sum(report["n_samples"].values())
    mapped, prepared = work / f"m-{n}", work / f"p-{n}"
    py = [sys.executable, "-m", "ecgqa"]
    np_ = str(args.num_proc)
    for name, cmd in {
        "map": [*py, "map", "ptbxl", str(release), "--records", str(root), "--out", str(mapped), "-q"],
        "prepare": [*py, "prepare", str(mapped), "--out", str(prepared), "--num-proc", np_, "-q"],
    }.items():
        r = measure(name, cmd, log)
        res[name] = {"wall_s": r.wall_s, "cpu_s": r.cpu_s, "peak_tree_mb": r.peak_tree_mb, "load": r.load_before}
        print(f"  {name}: {r.wall_s} s wall, {r.cpu_s} s CPU, peak {r.peak_tree_mb} MB", flush=True)
    base = {k: res["map"][k] + res["prepare"][k] for k in ("wall_s", "cpu_s")}
    res["ratio_to_map_prepare"] = {}
    for name in runs:
        ratio = {k: round(res[name][k] / max(base[k], 1e-9), 2) for k in ("wall_s", "cpu_s")}
        res["ratio_to_map_prepare"][name] = ratio
        print(f"  {name} / (map + prepare): x{ratio['wall_s']} wall, x{ratio['cpu_s']} CPU", flush=True)
    if "generate" in res:
        gm, g0 = res["generate"], res["generate_no_measure"]
        res["measure_s"] = round(gm["wall_s"] - g0["wall_s"], 2)
        res["measure_ecgs_per_s"] = round(n / max(res["measure_s"], 1e-9), 2)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ecgs", type=int, nargs="+", default=[500, 2000], help="sizes to run (default 500 2000)")
    p.add_argument(
        "--num-proc", type=int, default=2, help="generate's and prepare's processes and the probe's max workers"
    )
    p.add_argument(
        "--skip-measure-run",
        action="store_true",
        help="no full generate (signal measurement): only --no-measure runs; map + prepare read their output",
    )
    p.add_argument("--probe", type=int, default=100, help="records for the in-process measurement probe")
    p.add_argument("--sources", type=Path, help="PTB-XL root whose records500/ records are copied")
    p.add_argument("--keep", type=Path, help="build here and keep everything (default: a temporary folder)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="ecgqa-generate-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    out = {"machine": {"cpus": os.cpu_count(), "load_start": os.getloadavg()[0]}, "sizes": []}
    for n in sorted(args.ecgs):
        print(f"{n} ECGs:", flush=True)
        out["sizes"].append(run_size(n, work, args))
    root = work / f"ptbxl-{min(args.ecgs)}"
    print(f"measurement probe over {min(args.probe, min(args.ecgs))} records:", flush=True)
    out["probe_ecgs_per_s"] = probe(root, min(args.probe, min(args.ecgs)), sorted({1, args.num_proc}))
    big = out["sizes"][-1]
    rate = out["probe_ecgs_per_s"][max(out["probe_ecgs_per_s"])]
    # the rest (labels, sampling, writing): the slope between the two largest sizes (small sizes are
    # dominated by start-up), extrapolated linearly; samples per ECG fall with size (the caps), so this is high
    if len(out["sizes"]) > 1:
        small = out["sizes"][-2]
        dt = big["generate_no_measure"]["wall_s"] - small["generate_no_measure"]["wall_s"]
        rest = max(dt, 0.0) / (big["ecgs"] - small["ecgs"])
    else:
        rest = big["generate_no_measure"]["wall_s"] / big["ecgs"]
    base = big["generate_no_measure"]["wall_s"] + (FULL - big["ecgs"]) * rest
    sequential_rate = big.get("measure_ecgs_per_s") or out["probe_ecgs_per_s"][1]
    out["full_ptbxl_estimate_min"] = {
        "rest_s_per_ecg": round(rest, 4),
        "sequential": round((FULL / sequential_rate + base) / 60, 1),
        f"{max(out['probe_ecgs_per_s'])}_processes": round((FULL / rate + base) / 60, 1),
    }
    if big["ecgs"] >= FULL and "generate" in big:  # measured at full size: no extrapolation needed
        out["full_ptbxl_measured_min"] = round(big["generate"]["wall_s"] / 60, 1)
        del out["full_ptbxl_estimate_min"]
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
