"""Fixtures of the LLM harness tests: the bundled sample's grounding classes and questions, its records read
with wfdb, one question of every type, and a real local chat-completions server (tests/fake_llm_server.py)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import wfdb

from llm_eval import sampling
from llm_eval.grounding import Reading
from llm_eval.sampling import Question
from tests.fake_llm_server import FakeLLM, FakeServer
from tests.llm_eval.llm_eval_helpers import synthetic
from tests.llm_eval.paper_helpers import LEAD_OPTIONS


@pytest.fixture(scope="module")
def grounding_classes(sample_paths) -> list[str]:
    with (sample_paths.grounding / "ptbxl" / "grounding_class.csv").open() as f:
        return [r["class"] for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def train_questions(sample_paths) -> list[Question]:
    return sampling.questions_from_release(sample_paths.ptbxl_release, "train")


@pytest.fixture(scope="module")
def valid_questions(sample_paths) -> list[Question]:
    return sampling.questions_from_release(sample_paths.ptbxl_release, "valid")


@pytest.fixture(scope="module")
def signals(sample_paths):
    """ECG id → read-only (12, 5000) array read with wfdb directly; any write into it raises."""
    cache: dict[int, np.ndarray] = {}

    def signal_of(reading: Reading) -> np.ndarray:
        if reading.ecg_id not in cache:
            path = (
                sample_paths.ptbxl_records
                / "records500"
                / f"{reading.ecg_id // 1000 * 1000:05d}"
                / f"{reading.ecg_id:05d}_hr"
            )
            sig, _ = wfdb.rdsamp(str(path))
            arr = np.ascontiguousarray(sig.T.astype(np.float32))
            arr.flags.writeable = False
            cache[reading.ecg_id] = arr
        return cache[reading.ecg_id]

    signal_of.cache = cache
    return signal_of


@pytest.fixture
def server():
    with FakeServer(FakeLLM()) as s:
        yield s


@pytest.fixture(scope="module")
def every_type(train_questions, valid_questions) -> dict[str, Question]:
    """One question per question type: the real sample's two types plus synthetic ones for the rest."""
    nums = ["p duration", "pr interval", "qrs duration", "qt corrected", "qt interval", "rr interval"]
    return {
        "single-verify": next(q for q in train_questions if "in lead" in q.question),
        "single-choose": synthetic(
            "single-choose",
            "Which does this ECG show, left axis deviation or right axis deviation?",
            ["left axis deviation", "right axis deviation"],
            [],
            attribute_type="heart_axis",
        ),
        "single-query": synthetic(
            "single-query", "Which leads does this ECG show baseline drift in?", LEAD_OPTIONS, ["lead V1", "lead II"]
        ),
        "comparison_consecutive-verify": synthetic(
            "comparison_consecutive-verify",
            "Does the recent ECG show any changes compared to the previous ECG?",
            ["no", "yes"],
            ["yes"],
            ecg_ids=(16, 17),
            attribute_type="scp_code",
        ),
        "comparison_consecutive-query": synthetic(
            "comparison_consecutive-query",
            "What numeric features of the recent ECG have become abnormal compared to the previous ECG?",
            nums,
            [],
            ecg_ids=(16, 17),
            attribute_type="numeric_feature",
        ),
        "comparison_irrelevant-verify": synthetic(
            "comparison_irrelevant-verify",
            "Does the second ECG show sinus rhythm in lead V2 that the first ECG does not?",
            ["no", "yes"],
            ["no"],
            ecg_ids=(16, 17),
            attribute_type="scp_code",
        ),
        "comparison_irrelevant-query": valid_questions[0],
    }
