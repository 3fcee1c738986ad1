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
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="QA checkpoint folder (`ecgqa train` output); default: the quickstart model",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="prepared QA directory whose ECGs and questions to offer; default: the quickstart data",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument(
        "--quickstart-out",
        type=Path,
        default=QUICKSTART_OUT,
        help="where the quickstart run lives (or is built) when --checkpoint/--data are not given",
    )
    parser.add_argument(
        "--attributes",
        type=Path,
        default=None,
        help="attribute classifier checkpoint (upperbound/attributes task) whose findings the page "
        "shows for the chosen ECG; default: the quickstart's, when it has one",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=None,
        help="seconds a client may take to send a request's headers (default 10)",
    )
    parser.add_argument(
        "--body-timeout", type=float, default=None, help="seconds a client may take to send a request body (default 30)"
    )
    parser.add_argument(
        "--keep-alive", type=int, default=None, help="seconds an idle connection stays open (default 15)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings-only server log")
    parser.set_defaults(func=run)
    return parser


def demo_paths(out: Path, quiet: bool = False) -> tuple[Path, Path, Path | None]:
    """The quickstart's QA checkpoint, prepared data and attribute classifier (None when it has none),
    built by ``ecgqa quickstart`` first when missing."""
    from ecgqa.quickstart import ensure_demo

    demo = ensure_demo(out, quiet=quiet)
    return Path(demo.checkpoint), Path(demo.data), demo.attributes_checkpoint


def is_loopback(host: str) -> bool:
    import ipaddress

    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    import logging

    from ecgqa import load
    from ecgqa.serve import server
    from ecgqa.serve.app import create_app
    from ecgqa.serve.middleware import BODY_SECONDS

    try:
        from ecgqa.data.prepared import PreparedData
    except ImportError:  # until ecgqa/data/prepared.py lands
        from ecgqa.data.prepared import PreparedData

    server.limit_malloc_arenas()
    if (args.checkpoint is None) != (args.data is None):
        given, missing = ("--checkpoint", "--data") if args.data is None else ("--data", "--checkpoint")
        raise ValueError(f"{given} needs {missing} too (or give neither to serve the quickstart model)")
    attributes_ckpt = args.attributes
    if args.checkpoint is not None:
        ckpt, data_dir = args.checkpoint, args.data
    else:
        ckpt, data_dir, default_attributes = demo_paths(args.quickstart_out, args.quiet)
        attributes_ckpt = attributes_ckpt or default_attributes
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    print(
        f"loading {ckpt} and {data_dir}" + (f" (findings: {attributes_ckpt})" if attributes_ckpt else ""),
        file=sys.stderr,
    )
    predictor = load(ckpt, device=args.device)
    attributes = load(attributes_ckpt, device=args.device) if attributes_ckpt else None
    loopback = is_loopback(args.host)
    app = create_app(
        predictor,
        PreparedData(data_dir),
        attributes=attributes,
        loopback_only=loopback,
        body_seconds=args.body_timeout or BODY_SECONDS,
    )
    print(f"ECG-QA demo: http://{args.host}:{args.port}/  (API docs at /docs; Ctrl-C stops)", file=sys.stderr)
    server.run_server(
        app,
        args.host,
        args.port,
        quiet=args.quiet,
        header_seconds=args.header_timeout or server.HEADER_SECONDS,
        keep_alive=args.keep_alive or server.KEEP_ALIVE_SECONDS,
    )
    return 0
