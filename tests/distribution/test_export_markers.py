"""The Hub exports share one marker file (``ecgqa.distribution.MARKER``) told apart by its ``kind``
(``ecgqa.files.marker_kind``): an export replaces its own earlier output, never the other export's."""

from __future__ import annotations

import json

import pytest

from ecgqa.distribution import CHECKPOINT_KIND, DATASET_KIND, MARKER
from ecgqa.distribution.hub_dataset import export_dataset
from ecgqa.files import OutputDirError, claim_output_dir, marker_kind


def test_marker_kind_reads_the_kind(tmp_path):
    marker = tmp_path / MARKER
    is_dataset = marker_kind(DATASET_KIND)
    assert not is_dataset(marker)  # absent
    for text, want in (
        (json.dumps({"kind": DATASET_KIND}), True),
        (json.dumps({"kind": CHECKPOINT_KIND}), False),
        (json.dumps(["kind"]), False),
        ("{not json", False),
    ):
        marker.write_text(text)
        assert is_dataset(marker) is want, text
    assert marker_kind("qa", "upperbound")(marker.with_name("x")) is False


def test_a_dataset_export_is_replaced_by_itself_only(tmp_path, prepared_qa):
    out = tmp_path / "hub"
    export_dataset([prepared_qa], out, signals="none", progress=False)
    assert json.loads((out / MARKER).read_text())["kind"] == DATASET_KIND
    with pytest.raises(OutputDirError, match=f"its {MARKER} was not written by this tool"):
        claim_output_dir(out, marker=MARKER, what="Hub checkpoint", is_ours=marker_kind(CHECKPOINT_KIND))
    export_dataset([prepared_qa], out, signals="none", progress=False)  # its own output: replaced
    assert (out / "README.md").is_file()
