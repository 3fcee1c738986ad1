"""``ecgqa render``: draw a 12-lead ECG as a clinical printout (library: ``ecgqa.render``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ecgqa.render import FORMATS, LAYOUTS


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "record",
        nargs="?",
        type=Path,
        default=None,
        help="a WFDB record (path without extension; any lead order, any rate)",
    )
    parser.add_argument("--data", type=Path, default=None, help="a prepared directory (instead of a record)")
    parser.add_argument("--ecg-id", type=int, default=None, help="the ECG to draw from --data")
    parser.add_argument(
        "--out", type=Path, default=None, help="output file, .png or .svg (default: <record name or ECG id>.png here)"
    )
    parser.add_argument("--layout", choices=list(LAYOUTS), default="3x4")
    parser.add_argument("--dpi", type=int, default=100)
    parser.add_argument("--speed", type=float, default=25.0, help="paper speed, mm/s")
    parser.add_argument("--gain", type=float, default=10.0, help="amplitude scale, mm/mV")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of paper")
    parser.add_argument("--grey", action="store_true", help="greyscale instead of the red ECG-paper grid")
    parser.add_argument("--title", default=None, help="title printed at the top (default: the record or ECG id)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ecgqa import render as stage  # the stage, imported only when the command runs

    if (args.record is None) == (args.data is None):
        raise ValueError("give either a WFDB record path or --data PREPARED --ecg-id ID")
    if args.record is not None:
        from ecgqa.data.records import read_record

        rec = read_record(args.record)
        signal, fs, name = rec.signal, rec.fs, args.record.name
    else:
        if args.ecg_id is None:
            raise ValueError("--data needs --ecg-id (the ECG to draw)")
        from ecgqa.data.prepared import PreparedData

        data = PreparedData(args.data)
        try:
            row = data.row_of(args.ecg_id)
        except KeyError as e:
            raise ValueError(str(e).strip("'\"")) from None
        signal, fs, name = data.signals[row], data.rate, f"ECG {args.ecg_id}"
    out = args.out or Path(f"{name.replace(' ', '-')}.png")
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"--out {out}: the file name must end in .png or .svg")
    data_bytes = stage.render_ecg(
        signal,
        fs,
        layout=args.layout,
        speed=args.speed,
        gain=args.gain,
        dpi=args.dpi,
        color=not args.grey,
        fmt=fmt,
        title=args.title or name,
        seconds=args.seconds,
    )
    from ecgqa.files import atomic_write

    atomic_write(out, data_bytes)
    print(f"wrote {out} ({args.layout}, {args.speed:g} mm/s, {args.gain:g} mm/mV, {args.dpi} dpi)", file=sys.stderr)
    return 0
