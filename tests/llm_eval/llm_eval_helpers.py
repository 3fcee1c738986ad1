"""Helpers of the LLM harness tests (tests/llm_eval/test_llm_eval_*.py): the key the local server expects, a
stand-in grounding classifier, synthetic questions and a store that closes on leaving a `with` block."""

from __future__ import annotations

import numpy as np

from ecgqa.data.constants import QUESTION_TYPES
from tests.llm_eval.paper_helpers import q

KEY = "sk-test-DO-NOT-LEAK-0123456789"


class StandInClassifier:
    """A deterministic function of the (masked) signal, with the upperbound predictor's interface."""

    def __init__(self, classes: list[str]):
        self.classes = classes
        self.W = np.random.default_rng(0).normal(size=(len(classes), 24))
        self.rows = 0

    def classify(self, ecgs: np.ndarray, lead_masks: np.ndarray | None = None, batch_size: int = 64) -> np.ndarray:
        x = np.array(ecgs, dtype=np.float64)
        if lead_masks is not None:
            x[~np.asarray(lead_masks, bool)] = 0.0
        self.rows += len(x)
        feats = np.concatenate([x.std(-1), np.abs(np.diff(x, axis=-1)).mean(-1) * 10], axis=1)
        return 1 / (1 + np.exp(-(feats @ self.W.T * 4 - 0.3)))


def synthetic(qtype: str, question: str, options: list[str], answer: list[str], ecg_ids=(16,), attribute_type="noise"):
    return q(900000 + QUESTION_TYPES.index(qtype), qtype, question, options, answer, ecg_ids, attribute_type)


class _closing:
    def __init__(self, store):
        self.store = store

    def __enter__(self):
        return self.store

    def __exit__(self, *exc):
        self.store.close()
