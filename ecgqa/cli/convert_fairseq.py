"""``ecgqa convert-fairseq``: a fairseq-signals / ECG-FM checkpoint to a w2v-cmsc-rlm folder.

The library side is ``ecgqa.training.fairseq_import``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("checkpoint", type=Path, help="fairseq-signals / ECG-FM checkpoint (.pt)")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument(
        "--classes",
        default=None,
        metavar="CSV_OR_VERSION",
        help="names of a fine-tuned head's labels, in index order: a grounding_class.csv or a bundled "
        "version (ptbxl, mimic-iv-ecg); default label_0, label_1, ...",
    )
    parser.set_defaults(func=run)
    return parser


def _class_names(spec: str) -> list[str]:
    from ecgqa.data.upperbound_labels import bundled_grounding_classes, read_grounding_classes
    from ecgqa.training import fairseq_import as stage  # the stage, imported only when the command runs

    p = Path(spec)
    if p.is_file():
        return read_grounding_classes(p)
    bundled = bundled_grounding_classes(spec) if "/" not in spec and "\\" not in spec else None
    if bundled is None or not bundled.is_file():
        versions = sorted(
            q.parent.name for q in bundled_grounding_classes("x").parent.parent.glob("*/grounding_class.csv")
        )
        raise stage.FairseqCheckpointError(
            f"--classes {spec}: no such file, nor a bundled class list ({', '.join(versions)}); "
            "give a grounding_class.csv (columns index,class) or one of those names"
        )
    return read_grounding_classes(bundled)


def run(args: argparse.Namespace) -> int:
    from ecgqa.training import fairseq_import as stage  # the stage, imported only when the command runs

    classes = _class_names(args.classes) if args.classes else None
    out, keymap = stage.convert(args.checkpoint, args.out, classes=classes)
    print(f"{args.checkpoint} -> {out}: {keymap.summary()}")
    for name, why in _grouped(keymap.dropped):
        print(f"  dropped {name}: {why}")
    return 0


def _grouped(dropped: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    """Dropped keys grouped by module (``quantizer.*``) for a short listing."""
    seen: dict[str, str] = {}
    for key, why in dropped.items():
        seen.setdefault(key.rsplit(".", 1)[0] + ".*" if "." in key else key, why)
    yield from seen.items()
