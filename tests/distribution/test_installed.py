"""Run by scripts/check_wheel.sh: the suite really imports the installed wheel, not the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import ecgqa
import llm_eval
import mapping

EXPECTED = os.environ.get("ECGQA_EXPECT_INSTALLED")


@pytest.mark.skipif(not EXPECTED, reason="only under scripts/check_wheel.sh (ECGQA_EXPECT_INSTALLED names the venv)")
@pytest.mark.parametrize("module", [ecgqa, llm_eval, mapping], ids=lambda m: m.__name__)
def test_imports_come_from_the_installed_wheel(module):
    where = Path(module.__file__).resolve()
    assert Path(EXPECTED).resolve() in where.parents, f"{module.__name__} imported from {where}"
    assert "site-packages" in where.parts


@pytest.mark.skipif(not EXPECTED, reason="only under scripts/check_wheel.sh")
def test_installed_package_data_is_complete():
    """Every kind of package data the code reads is in the installed package."""
    from ecgqa import sample
    from ecgqa.evaluation.paper_sample import paper_sample_ids

    root = Path(ecgqa.__file__).parent
    paths = sample.paths()
    assert len(list(Path(paths.ptbxl_records).rglob("*_hr.dat"))) == 198
    assert len(paper_sample_ids()) == 8154  # checks its sha256 on load
    for rel in ("paper_results.json", "sample/ATTRIBUTION.md", "sample/ecgqa/LICENSE", "sample/ptbxl/LICENSE.txt"):
        assert (root / rel).is_file(), rel
    assert list((root / "serve" / "static").iterdir())
    assert list((root / "data" / "vocab").glob("*.txt"))
