"""ecgqa: question answering over 12-lead ECGs (the ECG-QA benchmark)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # ``ecgqa.load`` pulls in torch and transformers; resolving it lazily keeps ``import ecgqa`` (and the CLI) light.
    if name == "load":
        from ecgqa.predictor import load

        return load
    if name == "score":  # the function (ecgqa.scorer.score); the module is not named `score` so it cannot shadow it
        from ecgqa.scorer import score

        return score
    raise AttributeError(f"module 'ecgqa' has no attribute {name!r}")
