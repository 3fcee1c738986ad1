"""Property-based fuzzing of the demo API from its own OpenAPI schema (schemathesis): no 5xx, ever.

Bounded to 50 generated requests per operation so it stays within the test-time budget. The
operations are driven with plain hypothesis `@given` rather than schemathesis' pytest plugin, which
follows pytest's internals too closely to survive pytest upgrades.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzz_schema(qa_checkpoint, prepared_qa):
    import ecgqa
    from ecgqa.data.prepared import PreparedData
    from ecgqa.serve.app import create_app

    app = create_app(ecgqa.load(qa_checkpoint, device="cpu"), PreparedData(prepared_qa))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _check(case) -> None:
    response = case.call()
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
    if response.status_code == 200 and case.path == "/api/answer":
        body = response.json()
        assert set(body["answer"]) <= set(body["valid_classes"])
        assert all(0.0 <= s["score"] <= 1.0 for s in body["scores"])
    if response.status_code >= 400:
        assert isinstance(response.json()["detail"], str)  # the page shows it as it is


def test_no_server_errors(fuzz_schema):
    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    paths = {op.path for op in operations}
    assert {"/api/answer", "/api/ecgs", "/api/ecgs/{ecg_id}", "/api/examples"} <= paths
    for operation in operations:
        fuzz = settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)(
            given(case=operation.as_strategy())(_check)
        )
        fuzz()
