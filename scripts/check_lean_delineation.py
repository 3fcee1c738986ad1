"""Compare the lean Q / S search of ``ecgqa.data.features`` with NeuroKit2's own over every record of a folder.

    python scripts/check_lean_delineation.py /path/to/ptbxl/records500        # 500 Hz records
    python scripts/check_lean_delineation.py /path/to/ptbxl/records100        # 100 Hz, resampled to 500 Hz

Every wave point of ``delineate(lead II, lean=True)`` must equal ``delineate(lead II, lean=False)`` (NaN where
NaN; a delineation error must be the same error). Prints the records that differ and a summary line; exit
status 1 when any differs. Rerun after a NeuroKit2 upgrade before updating ``features.LEAN_VERIFIED``.
``tests/data/test_features_lean.py`` runs the same comparison on the bundled records.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np


def _delineate(x: np.ndarray, lean: bool):
    from ecgqa.data import features as F

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            return F.delineate(x, lean=lean)
        except Exception as e:  # noqa: BLE001 - the same failure on both paths is part of the identity
            return type(e).__name__, str(e)


def _same(a, b) -> bool:
    if isinstance(a[0], str) or isinstance(b[0], str):
        return a == b
    if not np.array_equal(a[0], b[0]) or a[1].keys() != b[1].keys():
        return False
    return all(
        np.array_equal(np.asarray(a[1][k], dtype=float), np.asarray(b[1][k], dtype=float), equal_nan=True)
        and len(a[1][k]) == len(b[1][k])
        for k in a[1]
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="a folder of WFDB records (searched recursively for .hea)")
    args = p.parse_args()
    from ecgqa.data import features as F
    from ecgqa.data.records import read_record, resample

    if not F.lean_available():
        print("the installed NeuroKit2 differs from LEAN_VERIFIED: checking anyway (lean path forced)")
        F._lean_ok = True
    headers = sorted(args.folder.rglob("*.hea"))
    n = differ = errors = beats = 0
    cpu = {True: 0.0, False: 0.0}
    rates = set()
    for header in headers:
        rec = read_record(header.with_suffix(""))
        rates.add(rec.fs)
        x = np.asarray(rec.signal[1], dtype=np.float64)
        if round(rec.fs) != F.FS:
            x = resample(x, round(rec.fs), F.FS).astype(np.float64)
        got = {}
        for lean in (False, True):
            t0 = time.process_time()
            got[lean] = _delineate(x, lean)
            cpu[lean] += time.process_time() - t0
        n += 1
        if isinstance(got[False][0], str):
            errors += 1
        else:
            beats += len(got[False][0])
        if not _same(got[True], got[False]):
            differ += 1
            print(f"DIFFERS: {header.with_suffix('')}")
    print(
        f"{args.folder} ({'/'.join(f'{r:g}' for r in sorted(rates))} Hz): {n} records, {beats} beats, {differ} differ, "
        f"{errors} delineation errors (the same on both paths); CPU NeuroKit2 {cpu[False]:.1f} s, lean "
        f"{cpu[True]:.1f} s ({cpu[False] / max(cpu[True], 1e-9):.2f}x)"
    )
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
