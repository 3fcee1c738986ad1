"""Fixtures of the demo API tests: the served model, a second independent load of it, the prepared sample, the
app behind an httpx TestClient, and the bundled release with its answer space."""

from __future__ import annotations

import json

import pytest

from ecgqa.data.release import AnswerSpace


@pytest.fixture(scope="module")
def predictor(qa_checkpoint):
    import ecgqa

    return ecgqa.load(qa_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def direct(qa_checkpoint):
    """A second, independent load of the checkpoint: what `ecgqa.load(CKPT).answer(...)` gives."""
    import ecgqa

    return ecgqa.load(qa_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def data(prepared_qa):
    from ecgqa.data.prepared import PreparedData

    return PreparedData(prepared_qa)


@pytest.fixture(scope="module")
def client(predictor, data):
    from fastapi.testclient import TestClient

    from ecgqa.serve.app import create_app

    with TestClient(create_app(predictor, data)) as c:
        yield c


@pytest.fixture(scope="module")
def release(sample_paths):
    """Every template-variant sample of the bundled release, with its split."""
    out = []
    for path in sorted((sample_paths.ptbxl_release / "template").glob("*/*.json")):
        for s in json.loads(path.read_text()):
            out.append({**s, "split": path.parent.name})
    return out


@pytest.fixture(scope="module")
def space(sample_paths):
    return AnswerSpace.from_release(sample_paths.ptbxl_release)
