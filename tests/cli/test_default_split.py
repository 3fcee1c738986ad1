"""--split left out: the bundled sample has no ``test`` split, so evaluate / score / llm-eval take the held-out
split it has and say so; an explicit --split is never changed."""

from __future__ import annotations

import argparse

from ecgqa.cli import build_parser
from ecgqa.cli.common import resolve_split
from ecgqa.data.prepared import read_meta


def test_bundled_sample_defaults_to_its_held_out_split_and_says_so(prepared_qa, capsys):
    splits = list(read_meta(prepared_qa).splits)
    assert "test" not in splits and "valid" in splits  # what makes the default matter
    for command in (
        ["score", "--data", str(prepared_qa), "--answers", "a.jsonl", "--out", "o"],
        ["llm-eval", "--data", str(prepared_qa), "--model", "m", "--input", "none", "--out", "o"],
        ["evaluate", "--checkpoint", "c", "--data", str(prepared_qa), "--out", "o"],
    ):
        args = build_parser().parse_args(command)
        assert args.split is None, command[0]
        assert resolve_split(args) == "valid", command[0]
        assert "has no 'test' split" in capsys.readouterr().err, command[0]


def test_explicit_split_is_kept_and_unprepared_data_is_left_to_the_stage(prepared_qa, tmp_path, capsys):
    assert resolve_split(argparse.Namespace(split="train", data=prepared_qa)) == "train"
    assert resolve_split(argparse.Namespace(split="test", data=prepared_qa)) == "test"  # the stage names the splits
    # not a prepared folder: the default stays test and the stage's own error names what is wrong with --data
    assert resolve_split(argparse.Namespace(split=None, data=tmp_path / "missing")) == "test"
    assert capsys.readouterr().err == ""
