"""Licence, citation and dependency metadata: what `pip install ecgqa` and a citation manager read."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent


def test_citation_cff_is_valid_cff_1_2_and_cites_the_sources():
    jsonschema = pytest.importorskip("jsonschema")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    schema = json.loads((HERE / "cff-1.2.0.schema.json").read_text())  # the CFF 1.2.0 schema, unchanged
    jsonschema.Draft7Validator(schema).validate(cff)
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["license"] == "MIT"
    refs = {r["title"]: r for r in cff["references"]}
    ecgqa = refs["ECG-QA: A Comprehensive Question Answering Dataset Combined With Electrocardiogram"]
    assert ecgqa["year"] == 2023 and [a["family-names"] for a in ecgqa["authors"]][0] == "Oh"
    ptbxl = refs["PTB-XL, a large publicly available electrocardiography dataset"]
    assert (
        ptbxl["year"] == 2020
        and ptbxl["journal"] == "Scientific Data"
        and ptbxl["authors"][0]["family-names"] == "Wagner"
    )


def test_dependencies_have_floors_and_no_caps():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"]
    for dep in deps:
        assert ">=" in dep, f"{dep}: give the lowest version known to work"
        assert "<" not in dep.replace(">=", "") and "==" not in dep, (
            f"{dep}: no upper cap without a known incompatibility"
        )
    torch = next(d for d in deps if re.match(r"torch\b", d))
    assert torch == "torch>=2.6"  # a lower bound only: an installed CUDA or newer torch is kept
    assert project["license"] == "MIT AND CC-BY-4.0"
    if (ROOT / "ecgqa").is_dir():  # a checkout (scripts/check_wheel.sh runs the tests without the packages)
        for path in project["license-files"]:
            assert (ROOT / path).is_file(), path
    assert "MIT License" in (ROOT / "LICENSE").read_text()


def test_bundled_data_carries_its_licences():
    from ecgqa import sample

    root = sample.paths().root
    attribution = (root / "ATTRIBUTION.md").read_text()
    for needle in ("CC BY 4.0", "Wagner", "Oh, J.", "ecgqa/LICENSE", "ptbxl/LICENSE.txt"):
        assert needle in attribution
    for lic in (root / "ecgqa" / "LICENSE", root / "ptbxl" / "LICENSE.txt"):
        assert "Attribution 4.0 International" in lic.read_text()
