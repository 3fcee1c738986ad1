"""Dense attribute labels vs question-derived ones, and the measurement module's speed and agreement.

On the bundled sample (198 PTB-XL ECGs), split by ECG exactly as ``ecgqa quickstart`` does:

1. labels per ECG: ``--task attributes`` (PTB-XL metadata, ``ecgqa/data/attributes.py``) vs ``--task upperbound``
   (the single questions' attributes), counted over the training ECGs (known labels, all lead subsets);
2. attribute-classifier macro AUC on the held-out ECGs for both label sources at the same training budget
   (``se-wrn-quick``, 100 Hz, same steps/batch/lr/seed), both scored against the held-out ECGs' dense labels
   (entire ECG), plus the label-shuffled control, and the quickstart's setting (entire-ECG rows only);
3. measurement throughput of ``ecgqa.data.measure.measure_ecg`` (ECGs/s, one process) on the sample's records,
   with the share of values it could measure;
4. agreement of the measured normal ranges with the release's numeric-feature comparison answers
   (templates 68–70 over ECGs of the sample): exact-match of the answer set and per-feature accuracy.

    python benchmarks/attributes.py [--steps 300] [--threads 1] [--out runs/bench-attributes]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def labels_per_ecg(prepared_dir: Path, split: str = "train") -> dict[str, float]:
    from ecgqa.data.prepared import PreparedData

    table = PreparedData(prepared_dir).split(split)
    per: dict[int, int] = {}
    for ids, classes in zip(table["ecg_id"], table["label_classes"], strict=False):
        per[ids[0]] = per.get(ids[0], 0) + len(classes)
    counts = list(per.values())
    return {
        "ecgs": len(counts),
        "labels": sum(counts),
        "mean": round(statistics.mean(counts), 1),
        "median": statistics.median(counts),
        "min": min(counts),
        "max": max(counts),
    }


def measurement_throughput(record_paths: list[Path]) -> dict[str, float]:
    from ecgqa.data.measure import measure_ecg
    from ecgqa.data.records import read_record

    records = [read_record(p) for p in record_paths]
    start = time.perf_counter()
    results = [measure_ecg(r.signal, r.fs) for r in records]
    seconds = time.perf_counter() - start
    fields = ("heart_rate", "p_duration", "pr", "qrs", "qt", "qtc", "p_axis", "qrs_axis", "t_axis")
    measured = {f: round(100 * sum(getattr(m, f) is not None for m in results) / len(results), 1) for f in fields}
    return {
        "ecgs": len(records),
        "seconds": round(seconds, 2),
        "ecgs_per_s": round(len(records) / seconds, 1),
        "measured_pct": measured,
    }


def range_agreement(release_dirs: list[Path], records: dict[int, Path]) -> dict[str, object]:
    """Release answers of templates 68–70 vs the sets the measured ranges give."""
    from ecgqa.data.attributes import measure_record
    from ecgqa.data.features import FEATURES as NORMAL_RANGES
    from ecgqa.data.release import load_shard

    cache: dict[int, dict] = {}

    def ranges(ecg: int) -> dict:
        if ecg not in cache:
            m = measure_record(records[ecg])
            cache[ecg] = m.ranges() if m is not None else dict.fromkeys(NORMAL_RANGES)
        return cache[ecg]

    exact = total = feat_ok = feat_total = 0
    for folder in release_dirs:
        for shard in sorted(folder.rglob("*.json")):
            for s in load_shard(shard):
                if s["template_id"] not in (68, 69, 70) or not all(e in records for e in s["ecg_id"]):
                    continue
                first, second = (ranges(e) for e in s["ecg_id"])
                predicted = set()
                for f in NORMAL_RANGES:
                    a, b = first[f], second[f]
                    if a is None or b is None:
                        continue
                    ab1, ab2 = a != "within", b != "within"
                    hit = {68: ab1 and not ab2, 69: not ab1 and ab2, 70: ab1 and ab2}[s["template_id"]]
                    if hit:
                        predicted.add(f)
                truth = set(s["answer"]) - {"none"}
                total += 1
                exact += predicted == truth
                for f in NORMAL_RANGES:
                    feat_total += 1
                    feat_ok += (f in predicted) == (f in truth)
    return {
        "questions": total,
        "exact_match_pct": round(100 * exact / max(total, 1), 1),
        "per_feature_accuracy_pct": round(100 * feat_ok / max(feat_total, 1), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-attributes"))
    parser.add_argument("--steps", type=int, default=300, help="training budget per model (updates)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from ecgqa import sample
    from ecgqa.data.prepare import prepare
    from ecgqa.quickstart import ATTRIBUTE_MODEL, ATTRIBUTE_RATE, attribute_auc, holdout_by_ecg, rows_copy
    from ecgqa.training.train import TrainConfig, train
    from mapping.mapper import map_release

    torch.set_num_threads(args.threads)
    out: Path = args.out
    shutil.rmtree(out, ignore_errors=True)
    paths = sample.paths()
    mapped = out / "mapped" / "ptbxl"
    map_release("ptbxl", paths.ptbxl_release, paths.ptbxl_records, mapped, progress=False)
    release = out / "release" / "ptbxl"
    holdout_by_ecg(mapped, release, test_fraction=0.25, seed=args.seed)
    metadata = paths.ptbxl_records / "ptbxl_database.csv"

    results: dict[str, object] = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "threads": args.threads,
        "rate": ATTRIBUTE_RATE,
    }
    dense, sparse = out / "prepared" / "attributes", out / "prepared" / "upperbound"
    t = time.perf_counter()
    prepare(release, dense, task="attributes", rate=ATTRIBUTE_RATE, metadata=metadata, progress=False)
    results["prepare_attributes_s"] = round(time.perf_counter() - t, 1)
    prepare(release, sparse, task="upperbound", rate=ATTRIBUTE_RATE, progress=False)
    results["labels_per_ecg"] = {
        "dense (attributes)": labels_per_ecg(dense),
        "question-derived (upperbound)": labels_per_ecg(sparse),
    }
    print(json.dumps(results["labels_per_ecg"], indent=1), flush=True)

    control = rows_copy(dense, out / "prepared" / "attributes-shuffled", shuffle_seed=args.seed)
    entire = rows_copy(dense, out / "prepared" / "attributes-entire", groups=("entire",))
    entire_control = rows_copy(
        dense, out / "prepared" / "attributes-entire-shuffled", groups=("entire",), shuffle_seed=args.seed
    )
    aucs = {}
    for name, data in (
        ("dense", dense),
        ("question-derived", sparse),
        ("shuffled control", control),
        ("dense, entire rows only (quickstart)", entire),
        ("entire rows shuffled (quickstart control)", entire_control),
    ):
        ckpt = out / "checkpoints" / "".join(c if c.isalnum() else "-" for c in name)
        t = time.perf_counter()
        train(
            TrainConfig(
                data=data,
                model=ATTRIBUTE_MODEL,
                out=ckpt,
                max_steps=args.steps,
                batch_size=args.batch_size,
                lr=args.lr,
                warmup=0.05,
                seed=args.seed,
                eval_split=None,
                logging_steps=50,
                quiet=True,
            )
        )
        seconds = time.perf_counter() - t
        r = attribute_auc(ckpt, None, dense, "test", n_boot=args.bootstrap, seed=args.seed)
        aucs[name] = {
            "macro_auc": r["macro_auc"],
            "macro_ci95": r["macro_ci95"],
            "classes": len(r["classes"]),
            "held_out_ecgs": r["n_ecgs"],
            "train_s": round(seconds, 1),
        }
        print(name, json.dumps(aucs[name]), flush=True)
    results["held_out_macro_auc"] = aucs

    records = {
        int(p.name.split("_")[0]): p.with_suffix("")
        for p in sorted((paths.ptbxl_records / "records500").rglob("*_hr.hea"))
    }
    results["measurement"] = measurement_throughput(list(records.values()))
    print("measurement", json.dumps(results["measurement"]), flush=True)
    results["range_agreement"] = range_agreement([paths.ptbxl_release / "template"], records)
    print("range agreement", json.dumps(results["range_agreement"]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
