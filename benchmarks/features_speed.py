"""Speed of the signal measurement ``ecgqa generate`` runs per ECG, against the path it replaced, in the same run.

Over N real records read into memory first (``--sources``: a PTB-XL root; default the bundled sample):

1. ``numeric_features`` (``ecgqa.data.features``): the lean Q / S search (default) vs NeuroKit2's own
   (``signal_findpeaks`` + ``ecg_segment``, forced by marking the lean path unavailable);
2. ``measure_ecg`` (``ecgqa.data.measure``, what ``generate`` calls per record): now (lean, lead-II R peaks
   shared with the features) vs before (NeuroKit2's Q / S search, R peaks detected twice);
3. ``measure_records`` (record reading included) in 1 and ``--num-proc`` processes: ECGs/s.

1 and 2 are CPU seconds per ECG (``time.process_time``), the two variants interleaved record by record so
that load from other work on the machine falls on both alike; the ratio is the figure to quote. Each pair
is also checked for identical results. 3 is wall time (what a pool buys depends on free cores).

    python benchmarks/features_speed.py [--ecgs 100] [--num-proc 2] [--sources /path/to/ptbxl] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial
from pathlib import Path


def _timed_pair(records, now, before) -> tuple[float, float, int]:
    """CPU s per ECG of ``now`` and ``before`` (interleaved), and how many records gave different results."""
    from ecgqa.data import features as F

    t_now = t_before = 0.0
    differ = 0
    for i, (sig, fs) in enumerate(records):
        order = (True, False) if i % 2 == 0 else (False, True)
        got = {}
        for lean in order:
            F._lean_ok = None if lean else False  # False: lean_available() says no, NeuroKit2's own search runs
            t0 = time.process_time()
            got[lean] = now(sig, fs) if lean else before(sig, fs)
            dt = time.process_time() - t0
            if lean:
                t_now += dt
            else:
                t_before += dt
        differ += got[True] != got[False]
    F._lean_ok = None
    return t_now / len(records), t_before / len(records), differ


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ecgs", type=int, default=100, help="records to measure (default 100)")
    p.add_argument("--num-proc", type=int, default=2, help="processes for the pooled measure_records run")
    p.add_argument("--sources", type=Path, help="PTB-XL root (records500/); default: the bundled sample")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()

    from ecgqa import sample
    from ecgqa.data import features as F
    from ecgqa.data.attributes import measure_records
    from ecgqa.data.measure import measure_ecg
    from ecgqa.data.records import read_record

    root = args.sources or sample.paths().ptbxl_records
    paths = sorted((root / "records500").glob("*/*_hr.hea"))[: args.ecgs]
    paths = [h.with_suffix("") for h in paths]
    records = [(read_record(h).signal, 500) for h in paths]
    assert F.lean_available(), "the installed NeuroKit2 is not the one the lean path was verified against"
    F.numeric_features(*records[0])  # imports, outside the timing
    out = {"machine": {"cpus": os.cpu_count(), "load_start": round(os.getloadavg()[0], 2)}, "ecgs": len(records)}

    now, before, differ = _timed_pair(records, F.numeric_features, F.numeric_features)
    out["numeric_features_ms"] = {"lean": round(1e3 * now, 1), "neurokit": round(1e3 * before, 1)}
    out["numeric_features_speedup"] = round(before / now, 2)
    out["numeric_features_differ"] = differ
    print(f"numeric_features: {1e3 * now:.1f} ms/ECG lean vs {1e3 * before:.1f} ms/ECG NeuroKit2's Q/S search "
          f"(CPU): {before / now:.2f}x; {differ} of {len(records)} records differ", flush=True)  # fmt: skip

    now, before, differ = _timed_pair(records, measure_ecg, partial(measure_ecg, share_r_peaks=False))
    out["measure_ecg_ms"] = {"now": round(1e3 * now, 1), "before": round(1e3 * before, 1)}
    out["measure_ecg_speedup"] = round(before / now, 2)
    out["measure_ecg_differ"] = differ
    print(f"measure_ecg: {1e3 * now:.1f} ms/ECG now vs {1e3 * before:.1f} ms/ECG before (CPU): "
          f"{before / now:.2f}x; {differ} of {len(records)} records differ", flush=True)  # fmt: skip

    out["measure_records_ecgs_per_s"] = {}
    for n in sorted({1, args.num_proc}):
        t0 = time.perf_counter()
        measure_records(paths, n, progress=False)
        rate = len(paths) / (time.perf_counter() - t0)
        out["measure_records_ecgs_per_s"][n] = round(rate, 1)
        print(f"measure_records, {n} process(es): {rate:.1f} ECGs/s (wall, reading included)", flush=True)
    out["machine"]["load_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
