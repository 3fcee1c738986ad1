"""Write the numeric-feature statuses an ECG-QA release implies, for the ECGs whose records a folder holds.

    python scripts/harvest_release_statuses.py --release ecg-qa/ecgqa/ptbxl \
        --records ecgqa/sample/ptbxl --out tests/data/fixtures/release_numeric_statuses.json

``--release`` is a version folder (``template/<split>/*.json``); ``--records`` a PTB-XL root whose
``records500`` holds the ECGs to keep. The committed fixture was built from the four PTB-XL template shards
public in GitHub ``Jwoo5/ecg-qa`` at commit ``3eabbce`` (``train/120000``, ``train/260000``, ``valid/60000``,
``test/80000``; the other shards are Git LFS pointers there) and the bundled sample's 198 records.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from ecgqa.files import atomic_write
from ecgqa.generation.release_statuses import load, release_shards


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--release", type=Path, required=True)
    p.add_argument("--records", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--source", default="", help="where the release shards came from (kept in the file)")
    args = p.parse_args(argv)
    ids = {int(h.name[:5]) for h in (args.records / "records500").rglob("*_hr.hea")}
    found = load(args.release)
    shards = {
        str(s.relative_to(args.release)): hashlib.sha256(s.read_bytes()).hexdigest()
        for s in release_shards(args.release)
    }
    kept = {str(e): dict(sorted(v.items())) for e, v in sorted(found.statuses.items()) if e in ids}
    out = {
        "what": "per-(ECG, numeric feature) status implied by ECG-QA comparison questions: true = normal",
        "source": args.source,
        "shards": shards,
        "questions": found.questions,
        "contradictions": len(found.contradictions),
        "statuses": kept,
    }
    atomic_write(args.out, (json.dumps(out, indent=1) + "\n").encode())
    print(f"{args.out}: {len(kept)} ECGs, {sum(len(v) for v in kept.values())} statuses")


if __name__ == "__main__":
    main()
