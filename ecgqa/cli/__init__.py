"""The ``ecgqa`` command: the front door. One module per subcommand in this folder, each with
``configure(parser)`` (setting ``func``) and ``run(args)``, nothing else; a command imports its stage inside
``run`` so that ``ecgqa --help`` and argument errors never import torch."""

from __future__ import annotations

import argparse
import importlib

from ecgqa import __version__
from ecgqa.cli.common import dispatch

#: name → (module, one-line help). Adding a stage means adding one row here.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("ecgqa.cli.quickstart", "run the main job on the bundled sample"),
    "generate": ("ecgqa.cli.generate", "generate ECG-QA questions from ECG labels, or check a release's answers"),
    "map": ("ecgqa.cli.map", "join ECG-QA questions to local PTB-XL / MIMIC-IV-ECG records"),
    "prepare": (
        "ecgqa.cli.prepare",
        "build a prepared dataset (questions as Arrow + one signal store) for qa or upperbound",
    ),
    "train": ("ecgqa.cli.train", "train a QA model or an upperbound classifier on a prepared directory"),
    "pretrain": ("ecgqa.cli.pretrain", "W2V+CMSC+RLM self-supervised pretraining of the w2v-cmsc-rlm ECG encoder"),
    "convert-fairseq": (
        "ecgqa.cli.convert_fairseq",
        "fairseq-signals / ECG-FM checkpoint (.pt) -> w2v-cmsc-rlm folder",
    ),
    "evaluate": ("ecgqa.cli.evaluate", "exact-match report of a checkpoint on a prepared split"),
    "report": ("ecgqa.cli.report", "tabulate evaluation reports side by side (Markdown)"),
    "score": (
        "ecgqa.cli.score",
        "score any model's answers (JSONL: free-text replies or class names) on a prepared split",
    ),
    "llm-eval": (
        "ecgqa.cli.llm_eval",
        "evaluate an OpenAI-compatible (vision) model: classifier findings, images, features",
    ),
    "render": (
        "ecgqa.cli.render",
        "draw a 12-lead ECG as a clinical printout (PNG/SVG) from a record or prepared data",
    ),
    "serve": ("ecgqa.cli.serve", "HTTP demo: a web page and API to ask questions about ECGs with a trained model"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecgqa", description="Question answering over 12-lead ECGs (ECG-QA).")
    parser.add_argument("--version", action="version", version=f"ecgqa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        importlib.import_module(module).configure(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser().parse_args(argv))
