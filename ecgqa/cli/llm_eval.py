"""``ecgqa llm-eval`` (also ``python -m llm_eval``): evaluation of an OpenAI-compatible model on ECG-QA.

``--input`` picks what the model sees (``llm_eval/inputs.py``): classifier findings (the paper's
protocol, the default), a rendered ECG image, measured features, nothing (blind), or a combination.
``--prompt`` picks the wording and reply rule (the paper's, by default for the classifier input) and
``--sample`` the questions (the paper's published list, by default on PTB-XL test).

The API key is read from ``OPENAI_API_KEY`` or the environment variable ``--api-key-env`` names;
there is deliberately no option that takes the key itself (it would land in shell history and ps).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ecgqa.cli.common import dispatch, resolve_split

HELP = (
    "evaluate any OpenAI-compatible (vision) model on sampled ECG-QA questions: classifier findings, images, features"
)


def _whole(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds above 0")
    return value


def _price(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a price") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text} is not a finite price of at least 0")
    return value


def _cap(text: str) -> int | str:
    if text.strip().lower() == "none":
        return "none"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of at least 1, or none") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} would cap replies at nothing: give at least 1, or none for no cap")
    return value


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = parser
    p.add_argument("--data", type=Path, required=True, help="prepared QA directory (`ecgqa prepare`, task qa)")
    p.add_argument(
        "--input",
        default="classifier",
        metavar="KINDS",
        help="what the model sees, comma-separated: classifier (default: an upperbound classifier's "
        "findings, the paper's protocol), image (the rendered ECG), features (measured intervals, "
        "axes, amplitudes), none (question and options only); e.g. image,classifier",
    )
    p.add_argument(
        "--grounding", type=Path, help="upperbound checkpoint directory (`ecgqa train`); needed with --input classifier"
    )
    p.add_argument("--model", required=True, help="model name sent to the endpoint (e.g. gpt-4o)")
    p.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (default: OpenAI)")
    p.add_argument("--split", help="split to sample from (default: test, else the held-out split the data has)")
    p.add_argument("--out", type=Path, required=True, help="output folder (re-use it to resume)")
    p.add_argument(
        "--sample",
        choices=("paper", "draw"),
        help="which questions: paper = the ids the ECG-QA paper's LLM runs used (shipped, PTB-XL test only; "
        "the default there), draw = the seed-42 stratified 10%% draw (the default elsewhere)",
    )
    p.add_argument(
        "--prompt",
        choices=("paper", "paper-as-published", "ecgqa-v2"),
        help="prompt wording and reply rule: paper = the paper's prompt with its harness's defects fixed "
        "(default for --input classifier), paper-as-published = the harness byte for byte, defects "
        "included, ecgqa-v2 = this toolkit's wording (default and only choice for other inputs)",
    )
    p.add_argument(
        "--fraction",
        type=float,
        default=0.1,
        help="--sample draw: fraction of each qt3 key (default 0.1: with seed 42, the paper's draw)",
    )
    p.add_argument("--seed", type=int, default=42, help="--sample draw: sampling seed (default 42, the paper's)")
    p.add_argument(
        "--ids-file",
        type=Path,
        help="evaluate exactly these: sample ids (one per line, comma-separated or a JSON list), or the "
        "original harness's <split>_sampled.tsv",
    )
    p.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        metavar="NAME",
        help="NAME of the environment variable holding the API key (default OPENAI_API_KEY)",
    )
    p.add_argument("--concurrency", type=_whole(1), default=8, help="requests in flight at once (default 8)")
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=60.0,
        help="seconds a whole request may take (however slowly the reply trickles in) before it is retried "
        "(default 60)",
    )
    p.add_argument(
        "--max-retries", type=_whole(0), default=6, help="retries on 429/5xx/timeouts before giving up (default 6)"
    )
    p.add_argument(
        "--max-tokens",
        type=_cap,
        help="reply length cap, or 'none' for no cap (default 256; none with --prompt paper-as-published, as "
        "the paper)",
    )
    p.add_argument(
        "--max-completion-tokens",
        type=_whole(1),
        help="send max_completion_tokens instead of max_tokens (reasoning models: o-series, gpt-5)",
    )
    p.add_argument(
        "--no-temperature",
        action="store_true",
        help="leave temperature out of the request (models that refuse temperature=0)",
    )
    p.add_argument(
        "--image-detail",
        default="auto",
        choices=("auto", "low", "high"),
        help="the image part's detail (OpenAI: low = 85 tokens per image)",
    )
    p.add_argument("--layout", default="3x4", choices=("3x4", "6x2", "12x1", "3x1"), help="image layout (ecgqa render)")
    p.add_argument("--dpi", type=int, default=100, help="image resolution (default 100)")
    p.add_argument("--price-in", type=_price, help="price per 1M prompt tokens, for the cost estimate")
    p.add_argument("--price-out", type=_price, help="price per 1M completion tokens, for the cost estimate")
    p.add_argument("--store", type=Path, help="response store (default OUT/responses.sqlite); share it across runs")
    p.add_argument(
        "--grounding-cache",
        type=Path,
        help="classifier score cache file (default OUT/grounding_cache/…); rendered images and measured "
        "features are cached beside it",
    )
    p.add_argument("--device", help="device for the grounding classifier (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=64, help="grounding batch size")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="write every message exactly as it would be sent (OUT/prompts.jsonl, images included) and a "
        "token/cost estimate (OUT/dry_run.json); call no model",
    )
    p.add_argument(
        "--control",
        action="append",
        default=[],
        choices=("shuffled-ecg", "question-only"),
        help="also ask the same questions as a control (repeatable; into OUT/controls/NAME/): shuffled-ecg = each "
        "question with another sample's ECG input (findings, features or image), question-only = --input none; "
        "the report pairs them with the model by sample (EM, balanced accuracy, bootstrap CI over ECGs, verdict)",
    )
    p.add_argument("--control-seed", type=int, default=0, help="seed of the ECG permutation and the bootstrap")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from llm_eval.run import run_llm_eval

    report = run_llm_eval(
        args.data,
        args.grounding,
        args.model,
        args.out,
        inputs=args.input,
        split=resolve_split(args),
        fraction=args.fraction,
        seed=args.seed,
        image_detail=args.image_detail,
        layout=args.layout,
        dpi=args.dpi,
        max_completion_tokens=args.max_completion_tokens,
        omit_temperature=args.no_temperature,
        ids_file=args.ids_file,
        sample=args.sample,
        prompt=args.prompt,
        device=args.device,
        batch_size=args.batch_size,
        grounding_cache=args.grounding_cache,
        progress=not args.quiet,
        controls=tuple(args.control),
        control_seed=args.control_seed,
        base_url=args.base_url,
        api_key_env=args.api_key_env,
        concurrency=args.concurrency,
        timeout=args.timeout,
        max_retries=args.max_retries,
        price_in=args.price_in,
        price_out=args.price_out,
        store_path=args.store,
        dry_run=args.dry_run,
        **({} if args.max_tokens is None else {"max_tokens": None if args.max_tokens == "none" else args.max_tokens}),
    )
    if args.dry_run:
        return 0
    # A run with failed requests is incomplete: say so in the exit status (re-run to retry them).
    return 3 if report.get("n_failed") else 0


def main(argv: list[str] | None = None) -> int:
    parser = configure(argparse.ArgumentParser(prog="python -m llm_eval", description=HELP))
    return dispatch(parser.parse_args(argv))
