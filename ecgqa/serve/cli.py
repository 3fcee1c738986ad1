"""``ecgqa serve``: the HTTP demo (page at /, API docs at /docs).

With no arguments it serves the quickstart model on the bundled sample, running ``ecgqa quickstart``
first when its checkpoint is missing. Heavy imports (torch, FastAPI, uvicorn) stay inside ``run``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

QUICKSTART_OUT = Path("runs/quickstart")


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="QA checkpoint folder (`ecgqa train` output); default: the quickstart model")
    parser.add_argument("--data", type=Path, default=None,
                        help="prepared QA directory whose ECGs and questions to offer; default: the quickstart data")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--quickstart-out", type=Path, default=QUICKSTART_OUT,
                        help="where the quickstart run lives (or is built) when --checkpoint/--data are not given")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings-only server log")
    parser.set_defaults(func=run)
    return parser


def quickstart_paths(out: Path) -> tuple[Path, Path]:
    """Where ``ecgqa quickstart --out OUT`` writes its fusion checkpoint and its prepared QA data."""
    from ecgqa import quickstart

    model = getattr(quickstart, "MODELS", ("fusion-small",))[0]
    return out / "checkpoints" / model, out / "prepared" / "ptbxl-template-qa"


def ensure_quickstart(out: Path, quiet: bool = False) -> tuple[Path, Path]:
    """The quickstart checkpoint and prepared data, built by ``ecgqa quickstart`` first when missing."""
    from ecgqa import quickstart

    ckpt, data = quickstart_paths(out)
    if (ckpt / "config.json").is_file() and (data / "meta.json").is_file():
        return ckpt, data
    model = ckpt.name
    print(f"no quickstart model in {out}: building it first with `ecgqa quickstart --out {out} --models {model}` "
          "(a few minutes on a CPU; later starts reuse it)", file=sys.stderr, flush=True)
    parser = argparse.ArgumentParser(prog="ecgqa quickstart")
    quickstart.configure(parser)
    argv = ["--out", str(out)] + (["--models", model] if "--models" in parser._option_string_actions else [])
    args = parser.parse_args(argv + (["--quiet"] if quiet else []))
    code = args.func(args)
    if code or not (ckpt / "config.json").is_file() or not (data / "meta.json").is_file():
        raise RuntimeError(f"`ecgqa quickstart --out {out}` did not produce {ckpt} and {data} (exit {code}); "
                           "see its messages above, or pass --checkpoint CKPT --data PREPARED")
    return ckpt, data


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from ecgqa import load
    from ecgqa.data import PreparedData
    from ecgqa.serve.app import create_app

    if (args.checkpoint is None) != (args.data is None):
        given, missing = ("--checkpoint", "--data") if args.data is None else ("--data", "--checkpoint")
        raise ValueError(f"{given} needs {missing} too (or give neither to serve the quickstart model)")
    if args.checkpoint is not None:
        ckpt, data_dir = args.checkpoint, args.data
    else:
        ckpt, data_dir = ensure_quickstart(args.quickstart_out, args.quiet)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"loading {ckpt} and {data_dir}", file=sys.stderr)
    predictor = load(ckpt, device=args.device)
    app = create_app(predictor, PreparedData(data_dir))
    print(f"ECG-QA demo: http://{args.host}:{args.port}/  (API docs at /docs; Ctrl-C stops)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info")
    return 0
