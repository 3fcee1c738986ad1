"""Rebuild the bundled sample (``ecgqa/sample/``) from a PTB-XL root and an ECG-QA release.

The sample keeps every ECG-QA question whose ``ecg_id`` values are all present in the given
PTB-XL root, with the release CSVs, the records those questions need and their metadata rows,
laid out exactly like the real releases. Run it only when the sample itself must change:

    python scripts/build_sample.py --ptbxl ../shared/data/ptbxl --ecgqa ../shared/data/ecgqa
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pandas as pd

from mapping.sources import ptbxl_record_path

SAMPLE = Path(__file__).resolve().parents[1] / "ecgqa" / "sample"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ptbxl", type=Path, required=True, help="PTB-XL root (records500/, ptbxl_database.csv)")
    parser.add_argument("--ecgqa", type=Path, required=True, help="ECG-QA release root (ptbxl/, mimic-iv-ecg/)")
    parser.add_argument("--rates", type=int, nargs="+", default=[500], help="record rates to bundle")
    args = parser.parse_args()

    if SAMPLE.joinpath("ecgqa").exists():
        shutil.rmtree(SAMPLE / "ecgqa")
    if SAMPLE.joinpath("ptbxl").exists():
        shutil.rmtree(SAMPLE / "ptbxl")

    available = {int(p.name[:5]) for p in (args.ptbxl / "records500").glob("*/*_hr.hea")}
    needed: set[int] = set()
    for version in ("ptbxl", "mimic-iv-ecg"):
        src, dst = args.ecgqa / version, SAMPLE / "ecgqa" / version
        dst.mkdir(parents=True)
        for f in sorted(src.glob("*.csv")) + sorted(src.glob("*.tsv")):
            shutil.copy2(f, dst / f.name)
        if version != "ptbxl":
            continue
        for shard in sorted(src.glob("*/*/*.json")):
            samples = json.loads(shard.read_text())
            kept = [s for s in samples if all(i in available for i in s["ecg_id"])]
            out = dst / shard.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(kept))
            needed.update(i for s in kept for i in s["ecg_id"])
            print(f"{shard.relative_to(src)}: kept {len(kept)} of {len(samples)}")
    shutil.copytree(args.ecgqa / "grounding", SAMPLE / "ecgqa" / "grounding")
    shutil.copy2(args.ecgqa / "LICENSE", SAMPLE / "ecgqa" / "LICENSE")

    ptb = SAMPLE / "ptbxl"
    ptb.mkdir()
    for rate in args.rates:
        for ecg_id in sorted(needed):
            rel = ptbxl_record_path(ecg_id, rate)
            (ptb / rel).parent.mkdir(parents=True, exist_ok=True)
            for ext in (".hea", ".dat"):
                shutil.copy2(args.ptbxl / (rel + ext), ptb / (rel + ext))
    db = pd.read_csv(args.ptbxl / "ptbxl_database.csv")
    db[db["ecg_id"].isin(needed)].to_csv(ptb / "ptbxl_database.csv", index=False)
    for name in ("scp_statements.csv", "LICENSE.txt"):
        shutil.copy2(args.ptbxl / name, ptb / name)
    print(f"{len(needed)} ECGs at {args.rates} Hz")


if __name__ == "__main__":
    main()
