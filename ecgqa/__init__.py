"""ecgqa: question answering over 12-lead ECGs (the ECG-QA benchmark)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any

__version__ = "0.1.0"

#: Modules that moved into the package's rooms: the old import path still works, with a warning naming the new one.
MOVED: dict[str, str] = {
    "ecgqa.constants": "ecgqa.data.constants",
    "ecgqa.leads": "ecgqa.data.leads",
    "ecgqa.release": "ecgqa.data.release",
    "ecgqa.records": "ecgqa.data.records",
    "ecgqa.prepared": "ecgqa.data.prepared",
    "ecgqa.prepare": "ecgqa.data.prepare",
    "ecgqa.upperbound_labels": "ecgqa.data.upperbound_labels",
    "ecgqa.attributes": "ecgqa.data.attributes",
    "ecgqa.measure": "ecgqa.data.measure",
    "ecgqa.vocab": "ecgqa.data.vocab",
    "ecgqa.losses": "ecgqa.models.losses",
    "ecgqa.train": "ecgqa.training.train",
    "ecgqa.pretrain": "ecgqa.training.pretrain",
    "ecgqa.recipes": "ecgqa.training.recipes",
    "ecgqa.fairseq_import": "ecgqa.training.fairseq_import",
    "ecgqa.metrics": "ecgqa.evaluation.metrics",
    "ecgqa.replies": "ecgqa.evaluation.replies",
    "ecgqa.evaluate": "ecgqa.evaluation.evaluate",
    "ecgqa.scorer": "ecgqa.evaluation.score",
    "ecgqa.report": "ecgqa.evaluation.report",
    "ecgqa.paper_sample": "ecgqa.evaluation.paper_sample",
    "ecgqa.cliutil": "ecgqa.cli.common",
    "ecgqa.prepare_cli": "ecgqa.cli.prepare",
    "ecgqa.serve.cli": "ecgqa.cli.serve",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old import path (``ecgqa.prepared``) to the module's new home (``ecgqa.data.prepared``)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> Any:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        sys.modules[spec.name] = module
        return module

    def exec_module(self, module: Any) -> None:
        pass


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())


def __getattr__(name: str) -> Any:
    # ``ecgqa.load`` pulls in torch and transformers; resolving it lazily keeps ``import ecgqa`` (and the CLI) light.
    if name == "load":
        from ecgqa.predictor import load

        return load
    # the function (ecgqa.evaluation.score.score); the module is not named `score` so it cannot shadow it
    if name == "score":
        from ecgqa.evaluation.score import score

        return score
    if name == "generate":  # ecgqa.generation.engine.generate; pandas/tqdm load only when it is used
        from ecgqa.generation.engine import generate

        return generate
    raise AttributeError(f"module 'ecgqa' has no attribute {name!r}")
