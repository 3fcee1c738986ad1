"""The demo API's error paths through the real app (httpx TestClient): bad JSON, bodies over the limit, model
failures, the reliability probe's findings (S14-S23) and browser-facing safety (issue 24, item 14)."""

from __future__ import annotations

import asyncio
import io
import logging

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from tests.serve.serve_helpers import RECORD, _header, _npy, _record_files, wfdb_signal

# --------------------------------------------------------------------------- JSON error paths


@pytest.mark.parametrize(
    "payload, status, words",
    [
        ({"ecg_ids": [RECORD], "question": ""}, 422, "question"),
        ({"ecg_ids": [RECORD], "question": "   \n "}, 422, "question"),
        ({"ecg_ids": [RECORD], "question": "x" * 501}, 422, "500 characters"),
        ({"ecg_ids": [424242], "question": "Any noise?"}, 404, "ECG 424242"),
        ({"ecg_ids": [], "question": "Any noise?"}, 422, "ecg_ids"),
        ({"ecg_ids": [1, 2, 3], "question": "Any noise?"}, 422, "ecg_ids"),
        ({"ecg_ids": [-5], "question": "Any noise?"}, 422, "ecg_ids"),
        ({"ecg_ids": [RECORD], "question": "Any noise?", "path": "/etc/passwd"}, 422, "path"),
        (
            {
                "ecg_ids": [RECORD],
                "question": "What numeric features of the second ECG are still abnormal as compared to the first ECG?",
            },
            422,
            "second ECG",
        ),
        ({"ecg_ids": [RECORD, 5], "question": "Does this ECG show static noise in lead aVL?"}, 422, "one"),
    ],
)
def test_answer_errors(client, payload, status, words):
    r = client.post("/api/answer", json=payload)
    assert r.status_code == status, r.text
    assert isinstance(r.json()["detail"], str) and words in r.json()["detail"]


def test_request_body_over_limit_is_413(client):
    from ecgqa.serve.middleware import MAX_UPLOAD_BYTES

    r = client.post(
        "/api/answer", content=b"{" + b" " * MAX_UPLOAD_BYTES + b"}", headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    big = np.zeros((12, MAX_UPLOAD_BYTES // 40), dtype=np.float64)
    r = client.post(
        "/api/answer/upload", files={"files": ("big.npy", _npy(big))}, data={"question": "Any noise?", "rate": "500"}
    )
    assert r.status_code == 413


def test_compressed_upload_that_inflates_past_the_limit_is_413(client):
    """A small .npz of zeros can decompress to gigabytes: the limit applies to what it inflates to."""
    from ecgqa.serve.middleware import MAX_UPLOAD_BYTES

    buf = io.BytesIO()
    np.savez_compressed(buf, signal=np.zeros((12, 400_000)))  # ~40 kB on the wire, 38 MB in memory
    assert len(buf.getvalue()) < MAX_UPLOAD_BYTES / 100
    for path, data in (
        ("/api/answer/upload", {"question": "Any noise?", "rate": "500"}),
        ("/api/plot", {"rate": "500"}),
    ):
        r = client.post(path, files={"files": ("bomb.npz", buf.getvalue())}, data=data)
        assert r.status_code == 413, r.text
        assert "bomb.npz" in r.json()["detail"] and "decompresses" in r.json()["detail"]


def test_model_failure_is_500_with_an_id_and_details_only_in_the_log(predictor, data, caplog):
    from ecgqa.serve.app import create_app
    from ecgqa.serve.routes import get_predictor

    class Broken:
        def __getattr__(self, name):
            return getattr(predictor, name)

        def answer_batch(self, items, batch_size=32):
            raise RuntimeError("CUDA exploded at 0xdeadbeef")

    app = create_app(predictor, data)
    app.dependency_overrides[get_predictor] = Broken
    with TestClient(app) as c, caplog.at_level(logging.ERROR, logger="ecgqa.serve"):
        r = c.post("/api/answer", json={"ecg_ids": [RECORD], "question": "Any noise?"})
    assert r.status_code == 500
    body = r.json()
    assert len(body["error_id"]) == 8 and body["error_id"] in body["detail"]
    assert "deadbeef" not in r.text
    logged = "\n".join(rec.getMessage() + str(rec.exc_info) for rec in caplog.records)
    assert body["error_id"] in logged and "deadbeef" in logged


# --------------------------------------------------------------------------- reliability (RELIABILITY-PROBE S14-S23)


def test_huge_wfdb_header_is_refused_before_parsing(client, sample_paths):
    """S14: wfdb parses headers at ~1 ms per signal line; 2,000 lines used to cost seconds of CPU."""
    import time

    dat = _record_files(sample_paths, RECORD)["00002_hr.dat"]
    many = _header("r", "00002_hr.dat", leads=[f"X{i}" for i in range(2000)])
    assert len(many) > 64 * 1024
    few_but_many = _header("r", "00002_hr.dat", leads=[f"X{i}" for i in range(40)])  # small, 40 signals
    assert len(few_but_many) < 16 * 1024
    for header, status, words in ((many, 413, "too large"), (few_but_many, 422, "40 signals")):
        t = time.perf_counter()
        r = client.post(
            "/api/answer/upload",
            files=[("files", ("r.hea", header)), ("files", ("00002_hr.dat", dat))],
            data={"question": "Any noise?"},
        )
        assert time.perf_counter() - t < 1.0
        assert r.status_code == status and words in r.json()["detail"], r.text


@pytest.mark.parametrize(
    "rate, words",
    [
        ("-500", "unsupported sampling rate"),
        ("499.5", "unsupported sampling rate"),
        ("360.4", "unsupported sampling rate"),
        ("50", "unsupported sampling rate"),
        ("nan", "unsupported sampling rate"),
        ("abc", "not a number"),
        ("", "no sampling rate"),
    ],
)
def test_wfdb_header_rates_are_checked_like_npy_rates(client, sample_paths, rate, words):
    """S22: wfdb turns -500 into its default 250 Hz and rounds 499.5 to 500; the upload is refused instead."""
    files = _record_files(sample_paths, RECORD)
    lines = files["00002_hr.hea"].decode().splitlines()
    first = lines[0].split()
    first[2] = rate
    header = ("\n".join([" ".join(f for f in first if f)] + lines[1:]) + "\n").encode()
    if rate == "":  # no rate at all: the record line ends after the signal count
        header = ("\n".join([" ".join(first[:2])] + lines[1:]) + "\n").encode()
    r = client.post(
        "/api/answer/upload",
        files=[("files", ("00002_hr.hea", header)), ("files", ("00002_hr.dat", files["00002_hr.dat"]))],
        data={"question": "Any noise?"},
    )
    assert r.status_code == 422 and words in r.json()["detail"], r.text
    # the same header with the rate written as "500/1000" (rate/counter frequency) is fine
    first[2] = "500/1000"
    ok = ("\n".join([" ".join(first)] + lines[1:]) + "\n").encode()
    r = client.post(
        "/api/answer/upload",
        files=[("files", ("00002_hr.hea", ok)), ("files", ("00002_hr.dat", files["00002_hr.dat"]))],
        data={"question": "Any noise?"},
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("value", [1e38, -3e38, 1e6])
def test_absurd_amplitudes_are_422(client, sample_paths, value):
    """S21: 1e38 mV used to come back as 200 with null scores, which reads as "none"."""
    sig, fs = wfdb_signal(sample_paths, RECORD)
    sig = sig.copy()
    sig[3, ::2] = value
    for path, data in (
        ("/api/answer/upload", {"question": "Any noise?", "rate": str(fs)}),
        ("/api/plot", {"rate": str(fs)}),
    ):
        r = client.post(path, files={"files": ("ecg.npy", _npy(sig))}, data=data)
        assert r.status_code == 422 and "millivolts" in r.json()["detail"], r.text


def test_non_finite_model_output_is_422(predictor, data):
    """S21: a model whose scores come back NaN does not answer "none"."""
    from ecgqa.predictor import Answer
    from ecgqa.serve.app import create_app
    from ecgqa.serve.routes import get_predictor

    class NaNScores:
        def __getattr__(self, name):
            return getattr(predictor, name)

        def answer_batch(self, items, batch_size=32):
            return [
                Answer(answer=[], scores={c: float("nan") for c in valid}, valid_classes=list(valid))
                for _, _, valid in items
            ]

    app = create_app(predictor, data)
    app.dependency_overrides[get_predictor] = NaNScores
    with TestClient(app) as c:
        r = c.post("/api/answer", json={"ecg_ids": [RECORD], "question": "Any noise?"})
    assert r.status_code == 422 and "no finite score" in r.json()["detail"]


@pytest.mark.slow
def test_npz_with_many_members_is_a_short_422(client):
    """S23: 40,000 members used to be listed in the reply (~300 kB)."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for i in range(40_000):
            z.writestr(f"{i}.npy", b"")
    assert len(buf.getvalue()) < 5 * 2**20  # under the upload limit: the .npz itself is opened
    r = client.post(
        "/api/answer/upload",
        files={"files": ("many.npz", buf.getvalue())},
        data={"question": "Any noise?", "rate": "500"},
    )
    assert r.status_code == 422 and "40000 arrays" in r.json()["detail"], r.text[:300]
    assert len(r.content) < 500


@pytest.mark.parametrize(
    "host, allowed",
    [
        ("127.0.0.1:8000", True),
        ("localhost:8000", True),
        ("localhost", True),
        ("[::1]:8000", True),
        ("127.1.2.3", True),
        ("app.localhost:8000", True),
        ("evil.example.com", False),
        ("evil.example.com:8000", False),
        ("127.0.0.1.evil.com", False),
        ("", False),
        ("[::ffff:10.0.0.1]:80", False),
        ("10.0.0.1:8000", False),
    ],
)
def test_loopback_app_refuses_other_host_names(predictor, data, host, allowed):
    """S19 (DNS rebinding): bound to loopback, the app answers only requests for loopback names."""
    from ecgqa.serve.app import create_app

    with TestClient(create_app(predictor, data, loopback_only=True)) as c:
        r = c.get(f"/api/ecgs/{RECORD}", headers={"host": host})
    assert (r.status_code == 200) == allowed, (host, r.status_code)
    if not allowed:
        assert r.status_code == 400 and "loopback" in r.json()["detail"] and "values" not in r.text


def test_unfinished_bodies_share_a_memory_budget_and_a_deadline():
    """S15: BodyLimit bounds what slow uploads hold together (503) and how long one may take (408)."""
    from ecgqa.serve.middleware import BodyLimit

    seen = []

    async def app(scope, receive, send):
        message = await receive()
        seen.append(len(message["body"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limit = BodyLimit(app, max_bytes=4_000_000, body_seconds=0.5, budget_bytes=5_000_000)

    def scope():
        return {"type": "http", "method": "POST", "headers": []}

    async def main():
        stall = asyncio.Event()

        first = [b"x" * 3_000_000]  # 3 MB, then nothing more for a long time

        async def slow_receive():
            if first:
                return {"type": "http.request", "body": first.pop(), "more_body": True}
            await stall.wait()
            return {"type": "http.disconnect"}

        sent: dict[str, list] = {"slow": [], "second": []}

        async def send_to(name):
            async def send(message):
                sent[name].append(message)

            return send

        slow = asyncio.create_task(limit(scope(), slow_receive, await send_to("slow")))
        await asyncio.sleep(0.05)
        assert limit.buffered == 3_000_000

        async def second_receive():
            return {"type": "http.request", "body": b"y" * 2_500_000, "more_body": False}

        await limit(scope(), second_receive, await send_to("second"))
        await slow  # its deadline (0.5 s) ends it
        return sent

    sent = asyncio.run(main())
    assert sent["second"][0]["status"] == 503  # 3 MB + 2.5 MB > the 5 MB budget
    assert sent["slow"][0]["status"] == 408
    assert limit.buffered == 0 and seen == []


@pytest.mark.slow  # renders 24 plots: seconds on a loaded machine
def test_threads_stay_bounded_under_concurrent_load(predictor, data):
    """S17: threads rose 6 -> 78 under load (a pool thread per request, each with its own torch and
    matplotlib state). Models run on one thread, plots on a bounded pool."""
    import psutil
    import torch

    from ecgqa.serve.app import WORKER_THREADS, create_app
    from ecgqa.serve.service import MODEL_THREADS

    ids = sorted(int(e) for e in np.asarray(data.ecg_ids))[:24]
    app = create_app(predictor, data)
    proc = psutil.Process()

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            before = proc.num_threads()
            jobs = [c.get(f"/api/ecgs/{e}/plot.png") for e in ids]
            jobs += [c.post("/api/answer", json={"ecg_ids": [e], "question": "Any noise?"}) for e in ids]
            responses = await asyncio.gather(*jobs)
            return before, proc.num_threads(), responses

    before, after, responses = asyncio.run(main())
    assert all(r.status_code == 200 for r in responses)
    # the model thread with torch's intra-op team, plus the bounded worker pool
    bound = WORKER_THREADS + MODEL_THREADS * (1 + torch.get_num_threads()) + 2
    assert after - before <= bound, (before, after, bound)


# --------------------------------------------------------------------------- browser-facing safety (issue 24, item 14)


def test_every_response_carries_the_security_headers(client):
    for path in ("/", "/static/app.js", "/api/info", "/api/ecgs/424242", "/docs"):
        r = client.get(path)
        csp = r.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp, (path, csp)
        assert r.headers.get("x-content-type-options") == "nosniff", path
    page_csp = client.get("/").headers["content-security-policy"]
    assert "script-src 'self';" in page_csp and "unsafe-inline" not in page_csp
    r = client.post("/api/answer", json={"ecg_ids": [], "question": "x"})  # an error response too
    assert r.status_code == 422 and r.headers.get("x-content-type-options") == "nosniff"


@pytest.mark.parametrize(
    "headers, allowed",
    [
        ({}, True),  # curl, scripts: no Origin
        ({"Origin": "http://testserver"}, True),  # the demo's own page
        ({"Origin": "http://testserver:80"}, True),
        ({"Origin": "https://evil.example"}, False),
        ({"Origin": "http://testserver.evil.example"}, False),
        ({"Origin": "http://testserver:8001"}, False),
        ({"Origin": "null"}, False),  # sandboxed frames, file:// pages
        ({"Sec-Fetch-Site": "cross-site"}, False),
        ({"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}, True),
    ],
)
def test_cross_origin_writes_are_refused(client, sample_paths, headers, allowed):
    sig, fs = wfdb_signal(sample_paths, RECORD)
    requests = [
        lambda: client.post("/api/answer", json={"ecg_ids": [RECORD], "question": "Any noise?"}, headers=headers),
        lambda: client.post(
            "/api/answer/upload",
            files={"files": ("ecg.npy", _npy(sig))},
            data={"question": "Any noise?", "rate": str(fs)},
            headers=headers,
        ),
        lambda: client.post(
            "/api/plot", files={"files": ("ecg.npy", _npy(sig))}, data={"rate": str(fs)}, headers=headers
        ),
    ]
    for send in requests:
        r = send()
        if allowed:
            assert r.status_code == 200, r.text
        else:
            assert r.status_code == 403, r.text
            assert "cross-origin request refused" in r.json()["detail"]
    # reading stays open to any client (GET changes nothing)
    assert client.get("/api/info", headers=headers).status_code == 200
