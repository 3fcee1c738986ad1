"""Fixtures of the data tests (tests/data/test_prepare_*.py): a hand-made release over real records."""

from __future__ import annotations

import pytest

from ecgqa.data.prepare import prepare
from mapping.mapper import map_release
from tests.data.prepare_helpers import copy_ptbxl_records, make_release, qa


@pytest.fixture(scope="session")
def handmade(tmp_path_factory, sample_paths):
    """Question types absent from the sample, mapped onto real bundled records."""
    tmp = tmp_path_factory.mktemp("handmade")
    samples = [
        qa(
            1,
            41,
            "single-choose",
            "numeric_feature",
            "Which range does the qt interval of this ECG fall in, above the normal range or within the normal range?",
            ["within the normal range"],
            [2],
            ["above the normal range of qt interval", "within the normal range of qt interval"],
        ),
        qa(
            2,
            22,
            "single-choose",
            "heart_axis",
            "Which heart axis does this ECG show, left axis deviation or normal heart axis?",
            ["left axis deviation"],
            [5],
            ["normal heart axis", "left axis deviation"],
        ),
        qa(
            3, 7, "single-query", "scp_code", "What rhythm does this ECG show?", ["sinus rhythm"], [2], ["sinus rhythm"]
        ),
        qa(
            4,
            24,
            "single-query",
            "stage_of_infarction",
            "What stage of myocardial infarction does this ECG show?",
            ["none"],
            [5],
            ["early stage of myocardial infarction"],
        ),
        qa(
            5,
            43,
            "comparison_consecutive-verify",
            "scp_code",
            "Does the recent ECG show any symptoms that were not in the previous ECG?",
            ["no"],
            [2, 5],
            None,
        ),
    ]
    release = make_release(tmp / "release", sample_paths.ptbxl_release, {"train": samples})
    records = copy_ptbxl_records(tmp / "ptbxl", sample_paths.ptbxl_records, [2, 5])
    mapped = tmp / "mapped"
    map_release("ptbxl", release, records, mapped, progress=False)
    out = tmp / "prepared"
    prepare(mapped, out, num_proc=2, progress=False)  # a real process pool
    return release, records, mapped, out, samples
