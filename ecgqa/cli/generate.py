"""``ecgqa generate ptbxl|physionet|code15|table|check``: ECG-QA questions from labels (see docs/generate.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder (the release layout + generation.json)")
    p.add_argument("--seed", type=int, default=42, help="seed of the split, the sampling and the pairs (default 42)")
    p.add_argument(
        "--caps",
        choices=["release", "none"],
        default="release",
        help="release: the release's caps and grouping rules (default); none: every question each template allows",
    )
    p.add_argument(
        "--balanced",
        action="store_true",
        help="training sets where learning shows: yes = no per verify question, capped answer sets for choose/query",
    )
    p.add_argument("--splits", type=Path, help="folder with the release's {train,valid,test}_ecgs.tsv: use that split")
    p.add_argument(
        "--no-measure",
        action="store_true",
        help="do not measure the signals: numeric-feature and heart-axis templates are skipped (fast)",
    )
    _num_proc(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _num_proc(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--num-proc",
        type=int,
        default=1,
        metavar="N",
        help="measure the records in N processes (default 1; the output does not depend on N)",
    )


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    p = sub.add_parser("ptbxl", help="PTB-XL (faithful to the ECG-QA release)")
    p.add_argument("--records", type=Path, required=True, help="PTB-XL root (records500/, ptbxl_database.csv)")
    p.add_argument("--metadata", type=Path, help="ptbxl_database.csv (default: ROOT/ptbxl_database.csv)")
    p.add_argument(
        "--statuses",
        choices=["measured", "release"],
        default="measured",
        help="numeric normal/abnormal statuses: measured (default) or, where --release covers an ECG, the "
        "statuses its comparison questions imply (counted apart in generation.json, left_out.release_statuses)",
    )
    p.add_argument("--release", type=Path, help="ECG-QA version folder (ecgqa/ptbxl) for --statuses release")
    _common(p)
    p = sub.add_parser("physionet", help="PhysioNet Challenge 2020/2021 WFDB records (# Dx: SNOMED CT codes)")
    p.add_argument("--records", type=Path, required=True, help="folder of WFDB records (.hea with # Dx: lines)")
    _common(p)
    p = sub.add_parser("code15", help="CODE-15%% (exams.csv + HDF5 tracings)")
    p.add_argument("--records", type=Path, required=True, help="CODE-15%% folder (exams.csv, exams_part*.hdf5)")
    _common(p)
    p = sub.add_parser("table", help="a generic CSV/Parquet table of ECGs and labels")
    p.add_argument("table", type=Path, help="CSV or Parquet: ecg_id, patient_id, recorded_at, record, labels…")
    p.add_argument("--label-map", type=Path, help="JSON: your label column → ECG-QA class name")
    _common(p)
    p = sub.add_parser("check", help="recompute a release's answers and report agreement per template")
    p.add_argument("--release", type=Path, required=True, help="ECG-QA release folder (ecgqa/ptbxl or its parent)")
    p.add_argument("--records", type=Path, required=True, help="PTB-XL root holding records500/")
    p.add_argument("--metadata", type=Path, help="ptbxl_database.csv (default: ROOT/ptbxl_database.csv)")
    p.add_argument("--json", type=Path, help="also write the full report (all disagreeing ids) here")
    p.add_argument("--no-measure", action="store_true", help="skip the signal measurements (numeric / axis)")
    _num_proc(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ecgqa.data.attributes import AttributesError
    from ecgqa.data.release import ReleaseError
    from ecgqa.files import OutputDirError
    from ecgqa.generation.answers import AnswerError
    from ecgqa.generation.ptbxl import InputError
    from ecgqa.generation.release_statuses import ReleaseStatusError
    from ecgqa.generation.sampling import SplitError

    try:
        from ecgqa.generation.ptbxl import check_num_proc

        check_num_proc(args.num_proc)  # before anything is read or measured
        if args.dataset == "check":
            return _check(args)
        return _generate(args)
    except (
        AttributesError,
        ReleaseError,
        OutputDirError,
        AnswerError,
        InputError,
        SplitError,
        ReleaseStatusError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2  # bad input, as every command answers it (ecgqa/cli/common.py)


def _generate(args: argparse.Namespace) -> int:
    from ecgqa.generation.engine import generate, left_out_lines
    from ecgqa.generation.sampling import read_release_split

    progress, measure, num_proc = not args.quiet, not args.no_measure, args.num_proc
    if args.dataset == "ptbxl":
        from ecgqa.generation.ptbxl import InputError, read_ptbxl

        inp, left_out = read_ptbxl(args.records, args.metadata, measure=measure, progress=progress, num_proc=num_proc)
        if args.statuses == "release":
            from ecgqa.generation.release_statuses import use_release_statuses

            if args.release is None:
                raise InputError("--statuses release needs --release (the ECG-QA version folder, e.g. ecgqa/ptbxl)")
            left_out = {**left_out, "release_statuses": use_release_statuses(inp, args.release)}
    else:
        from ecgqa.generation import datasets  # the other datasets' readers

        inp, left_out = datasets.read(args)
    report = generate(
        inp,
        args.out,
        seed=args.seed,
        caps=args.caps,
        balanced=args.balanced,
        split_of=read_release_split(args.splits) if args.splits else None,
        measure=measure,
        progress=progress,
        left_out=left_out,
        num_proc=num_proc,
    )
    n = report["n_samples"]
    print(
        f"wrote {sum(n.values())} samples ({', '.join(f'{k} {v}' for k, v in n.items())}) over "
        f"{sum(report['n_ecgs'].values())} ECGs into {args.out}; "
        f"{len(report['skipped_templates'])} templates skipped (see generation.json)"
    )
    for line in left_out_lines(report.get("left_out")):  # never a silent skip: said even under -q
        print(line, file=sys.stderr)
    return 0


def _check(args: argparse.Namespace) -> int:
    from ecgqa.files import atomic_write_json
    from ecgqa.generation.check import check_release, disagreements, table

    report = check_release(
        args.release,
        args.records,
        args.metadata,
        measure=not args.no_measure,
        progress=not args.quiet,
        num_proc=args.num_proc,
    )
    print(f"{report['samples_checked']} release samples over {report['ecgs']} ECGs with records")
    print(table(report))
    for line in disagreements(report):
        print(line)
    if args.json:
        atomic_write_json(args.json, report)
        print(f"report: {args.json}", file=sys.stderr)
    if not report["samples_checked"]:
        print(json.dumps({"warning": "no release sample has all its ECGs under --records"}), file=sys.stderr)
    return 0
