"""``ecgqa score``: score any model's answers on a prepared split (library: ``ecgqa.evaluation.score``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ecgqa.cli.common import print_report, resolve_split
from ecgqa.evaluation.score import MISSING, SAMPLES


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--data", type=Path, required=True, help="prepared QA folder written by `ecgqa prepare`")
    parser.add_argument(
        "--split", help="which split the answers are for (default: test, else the held-out split the data has)"
    )
    parser.add_argument(
        "--answers",
        type=Path,
        required=True,
        help='JSONL: {"sample_id": N, "reply": "text"} or {"sample_id": N, "answer": '
        '["class", ...]} per line (or a predictions.jsonl of evaluate / llm-eval)',
    )
    parser.add_argument("--out", type=Path, required=True, help="report folder to write")
    parser.add_argument(
        "--sample",
        choices=SAMPLES,
        default="all",
        help="which questions are scored: all of the split (default), or the paper's published LLM "
        "sample (PTB-XL test only)",
    )
    parser.add_argument(
        "--missing",
        choices=MISSING,
        default="error",
        help="questions without an answer line: error (default), skip (score the answered ones), "
        "wrong (count them as wrong); the report counts them either way",
    )
    parser.add_argument("--name", help="the model's name in the report (default: the answers file's name)")
    parser.add_argument(
        "--control",
        action="append",
        default=[],
        metavar="[NAME=]FILE",
        help="a control's answers in the same formats (repeatable), e.g. shuffled-ecg=FILE (the same model asked "
        "each question about another ECG) or question-only=FILE (no ECG); the report compares the model with "
        "each by sample: EM, balanced accuracy, paired bootstrap 95%% CI over ECGs and a verdict",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ecgqa.evaluation import score as stage  # the stage, imported only when the command runs

    controls = {}
    for spec in args.control:
        name, sep, file = spec.partition("=")
        if not sep:
            name, file = Path(spec).stem, spec
        if not name or not file:
            raise ValueError(f"--control {spec!r}: expected NAME=FILE or FILE")
        if name in controls:
            raise ValueError(f"--control {name!r} given twice")
        controls[name] = Path(file)
    report = stage.score(
        args.data,
        resolve_split(args),
        args.answers,
        args.out,
        sample=args.sample,
        missing=args.missing,
        name=args.name,
        controls=controls,
    )
    print(
        f"{report['model']} on {report['split']} ({report['sampling']['sample']}): EM {100 * report['em']:.1f} % over "
        f"{report['n']} questions; {report['n_missing']} unanswered"
        f"{' (counted wrong)' if report['missing_policy'] == 'wrong' and report['n_missing'] else ''}, "
        f"{report['n_no_match']} replies matched no option"
    )
    print_report(report, args.out)
    return 0
