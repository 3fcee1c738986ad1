"""The demo API through the real app (httpx TestClient): the meta endpoints, answers and findings.

Expected values are computed independently: ECG signals with ``wfdb`` from the bundled records,
valid classes and counts from the release JSON, answers from a separately loaded ``ecgqa.load(CKPT)``.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections import Counter

import numpy as np
import pytest
from scipy.signal import resample_poly

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from ecgqa.data.constants import LEADS
from tests.serve.serve_helpers import RECORD, assert_same_answer, store_signal, wfdb_signal

# --------------------------------------------------------------------------- meta endpoints


@pytest.mark.slow
def test_healthz_info_and_page(client, predictor, data):
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/api/info").json()
    assert info["model_name"] == predictor.model_name
    assert info["n_classes"] == len(predictor.classes) == 103
    assert info["rate"] == predictor.rate == 500
    assert info["n_ecgs"] == len(data.ecg_ids)
    assert info["data_version"] == "ptbxl"
    page = client.get("/")
    assert page.status_code == 200 and "<title>ECG-QA demo</title>" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/api/answer", "/api/answer/upload", "/api/ecgs", "/api/examples"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


def test_ecg_list_paging_and_counts(client, data, release):
    ids = sorted(int(i) for i in data.ecg_ids)
    first = client.get("/api/ecgs", params={"limit": 150}).json()
    rest = client.get("/api/ecgs", params={"offset": 150, "limit": 150}).json()
    assert first["total"] == rest["total"] == len(ids)
    got = [e["id"] for e in first["items"] + rest["items"]]
    assert got == ids
    counts = Counter(i for s in release for i in s["ecg_id"])
    splits: dict[int, set] = {}
    for s in release:
        for i in s["ecg_id"]:
            splits.setdefault(i, set()).add(s["split"])
    for e in first["items"] + rest["items"]:
        assert e["n_questions"] == counts[e["id"]]
        assert set(e["splits"]) == splits[e["id"]]
        assert e["duration_s"] == 10.0
    assert client.get("/api/ecgs", params={"limit": 0}).status_code == 422
    assert client.get("/api/ecgs", params={"offset": -1}).status_code == 422


def test_ecg_signal_is_the_record_downsampled(client, sample_paths):
    body = client.get(f"/api/ecgs/{RECORD}", params={"rate": 100}).json()
    sig, fs = wfdb_signal(sample_paths, RECORD)
    expected = resample_poly(sig, 100, fs, axis=-1)
    assert body["leads"] == list(LEADS) and body["rate"] == 100 and body["n_samples"] == 1000
    got = np.array(body["values"])
    assert got.shape == (12, 1000)
    np.testing.assert_allclose(got, expected, atol=0.01)  # the store keeps float16 mV


def test_plot_png(client):
    from matplotlib.image import imread

    r = client.get(f"/api/ecgs/{RECORD}/plot.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    image = imread(io.BytesIO(r.content))
    assert image.shape[1] > 1.5 * image.shape[0]  # the landscape 3x4 + rhythm layout
    reddish = (image[..., 0] > 0.85) & (image[..., 1] < 0.85)  # the ECG-paper grid
    dark = image[..., :3].max(axis=-1) < 0.3  # the traces
    assert reddish.mean() > 0.02 and dark.mean() > 0.002
    assert client.get("/api/ecgs/424242/plot.png").status_code == 404


def test_examples_come_from_the_release(client, release, space):
    examples = client.get("/api/examples").json()
    assert {e["question_type"] for e in examples} == {s["question_type"] for s in release}
    by_question = {(s["question"], tuple(s["ecg_id"])): s for s in release}
    for e in examples:
        s = by_question[(e["question"], tuple(e["ecg_ids"]))]
        assert e["answer"] == [space.classes[i] for i in space.encode(s["answer"])]
        assert e["split"] == s["split"]
    only = client.get("/api/examples", params={"question_type": "single-verify"}).json()
    assert only and all(e["question_type"] == "single-verify" for e in only)


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize("qtype", ["single-verify", "comparison_irrelevant-query"])
def test_answer_equals_direct_predictor(client, direct, data, release, space, qtype):
    samples = [s for s in release if s["question_type"] == qtype][:3]
    for s in samples:
        r = client.post("/api/answer", json={"ecg_ids": s["ecg_id"], "question": s["question"]})
        assert r.status_code == 200, r.text
        body = r.json()
        valid = [space.classes[i] for i in space.valid_classes(s)]
        expected = direct.answer([store_signal(data, i) for i in s["ecg_id"]], s["question"], valid)
        assert_same_answer(body, expected)
        assert body["question_type"] == qtype and body["match"]["source"] == "dataset"
        assert body["match"]["template_id"] == s["template_id"]
        assert body["ecg_ids"] == s["ecg_id"]
        assert body["timing"]["total_ms"] >= body["timing"]["inference_ms"] > 0


def test_reworded_question_borrows_its_template(client, space, release):
    s = next(x for x in release if x["question"] == "Does this ECG show static noise in lead aVL?")
    r = client.post(
        "/api/answer", json={"ecg_ids": [RECORD], "question": "does this ECG show any static noise in lead aVL"}
    )
    body = r.json()
    assert body["match"]["source"] == "similar"
    assert body["match"]["template_id"] == s["template_id"] and body["question_type"] == "single-verify"
    assert body["valid_classes"] == [space.classes[i] for i in space.valid_classes(s)]


def test_unrecognised_question_uses_every_class(client, direct, data):
    q = "Is the patient likely to enjoy jazz music?"
    body = client.post("/api/answer", json={"ecg_ids": [RECORD], "question": q}).json()
    assert body["match"]["source"] == "fallback" and body["question_type"] is None
    assert_same_answer(body, direct.answer(store_signal(data, RECORD), q, None))
    assert len(body["valid_classes"]) == 103
    # said plainly, and before the answer (issue 24: "no" to "Is there atrial fibrillation?" looked like a reply)
    assert body["recognised"] is False and "not one the model was trained on" in body["warning"]
    assert list(body).index("warning") < list(body).index("answer")
    known = client.post("/api/answer", json={"ecg_ids": [RECORD], "question": "Does this ECG show baseline drift?"})
    assert known.json()["recognised"] is True and known.json()["warning"] is None


def test_concurrent_requests_are_batched_and_correct(predictor, data, direct, release, space):
    from ecgqa.serve.app import create_app

    app = create_app(predictor, data)
    samples = [s for s in release if s["question_type"] == "single-verify"][:8]

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await asyncio.gather(
                *(c.post("/api/answer", json={"ecg_ids": s["ecg_id"], "question": s["question"]}) for s in samples)
            )

    responses = asyncio.run(main())
    assert all(r.status_code == 200 for r in responses)
    for s, r in zip(samples, responses, strict=False):
        valid = [space.classes[i] for i in space.valid_classes(s)]
        assert_same_answer(r.json(), direct.answer(store_signal(data, s["ecg_id"][0]), s["question"], valid))
    assert max(r.json()["timing"]["batch_size"] for r in responses) > 1


class _Gated:
    """Delegates to the real predictor, but answers only once ``gate`` is set (by another request)."""

    def __init__(self, inner, gate: threading.Event):
        self.inner, self.gate, self.waited = inner, gate, None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def answer_batch(self, items, batch_size=32):
        self.waited = self.gate.wait(timeout=20)
        return self.inner.answer_batch(items, batch_size=batch_size)


def test_inference_does_not_block_the_event_loop(predictor, data):
    """/healthz is served while an answer is being computed (the model runs in a worker thread)."""
    from ecgqa.serve.app import create_app
    from ecgqa.serve.routes import get_predictor

    gate = threading.Event()
    gated = _Gated(predictor, gate)
    app = create_app(predictor, data)
    app.dependency_overrides[get_predictor] = lambda: gated  # the model reaches endpoints as a dependency

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            answer = asyncio.create_task(c.post("/api/answer", json={"ecg_ids": [RECORD], "question": "Any noise?"}))
            await asyncio.sleep(0.05)
            health = await c.get("/healthz")
            gate.set()
            return health, await answer

    health, answer = asyncio.run(main())
    assert health.status_code == 200 and answer.status_code == 200
    assert gated.waited is True


def test_question_index_choose_options_and_fallback(space, data, release):
    """A reworded choose question takes the classes it names (longest first: "lead II" is not "lead I")."""
    from ecgqa.serve.questions import QuestionIndex

    index = {c: i for i, c in enumerate(space.classes)}
    rows = [
        {
            "question": "Which lead shows static noise, lead V1 or lead aVR?",
            "question_type": "single-choose",
            "attribute_type": "noise",
            "template_id": 900,
            "ecg_id": [RECORD],
            "valid_classes": sorted([index["lead V1"], index["lead aVR"]]),
        },
        {
            "question": "Which lead shows static noise, lead III or lead I?",
            "question_type": "single-choose",
            "attribute_type": "noise",
            "template_id": 900,
            "ecg_id": [RECORD],
            "valid_classes": sorted([index["lead III"], index["lead I"], index["lead II"]]),
        },
    ]
    qi = QuestionIndex.from_rows(list(space.classes), rows)
    m = qi.match("which lead shows static noise: lead II or lead I")
    assert m.source == "similar" and m.question_type == "single-choose" and m.n_ecgs == 1
    assert [space.classes[c] for c in m.valid_classes] == ["lead I", "lead II"]
    exact = qi.match("WHICH lead shows static noise,  lead V1 or lead aVR")
    assert exact.source == "dataset" and exact.valid_classes == rows[0]["valid_classes"]
    assert qi.match("tell me a joke").source == "fallback"

    from_data = QuestionIndex.from_prepared(data)
    s = next(x for x in release if x["question"] == "Does this ECG show baseline drift?")
    m = from_data.match("Does this ECG show baseline drift?")
    assert m.source == "dataset" and m.valid_classes == space.valid_classes(s)
    assert m.template_id == s["template_id"]


def test_create_app_refuses_a_mismatched_model(predictor, data):
    from ecgqa.serve.app import create_app

    class Proxy:
        def __init__(self, **attrs):
            self.__dict__.update(attrs)

        def __getattr__(self, name):
            return getattr(predictor, name)

    with pytest.raises(ValueError, match="needs a QA checkpoint"):
        create_app(Proxy(task="upperbound"), data)
    with pytest.raises(ValueError, match="predicts 50 answer classes that differ from the 103"):
        create_app(Proxy(classes=list(predictor.classes)[:50]), data)
    # one rate policy (ecgqa/checkpoint.py): prepared data at another rate is refused, never resampled
    with pytest.raises(ValueError, match=r"re-prepare with `ecgqa prepare \.\.\. --rate 250"):
        create_app(Proxy(rate=250, signal_length=2500), data)


# --------------------------------------------------------------------------- findings (issue 12)


@pytest.mark.slow
def test_findings_are_the_attribute_classifiers_own_output(predictor, data, upperbound_checkpoint):
    """GET /api/ecgs/{id}/findings: the classes an upperbound classifier (trained in this session)
    scores above the threshold for that ECG, with the scores a separate load of it gives."""
    import ecgqa
    from ecgqa.data.records import fit_length, resample
    from ecgqa.serve.app import create_app

    served = ecgqa.load(upperbound_checkpoint, device="cpu")
    separate = ecgqa.load(upperbound_checkpoint, device="cpu")
    ids = [int(e) for e in np.asarray(data.ecg_ids)[:3]]
    with TestClient(create_app(predictor, data, attributes=served)) as c:
        assert c.get("/api/info").json()["attributes_model"] == served.model_name
        for ecg_id in ids:
            r = c.get(f"/api/ecgs/{ecg_id}/findings")
            assert r.status_code == 200, r.text
            body = r.json()
            signal = fit_length(resample(store_signal(data, ecg_id), data.rate, separate.rate), separate.signal_length)
            scores = separate.classify(signal)[0]
            expected = sorted(
                ((separate.classes[i], float(s)) for i, s in enumerate(scores) if s > 0.5), key=lambda kv: -kv[1]
            )
            assert [f["name"] for f in body["findings"]] == [n for n, _ in expected]
            for f, (_, score) in zip(body["findings"], expected, strict=False):
                assert f["score"] == pytest.approx(score, abs=1e-5)
            assert body["threshold"] == 0.5 and body["n_classes"] == len(separate.classes)
        assert c.get("/api/ecgs/424242/findings").status_code == 404
    # a demo without an attribute classifier says how to get one
    with TestClient(create_app(predictor, data)) as c:
        r = c.get(f"/api/ecgs/{ids[0]}/findings")
        assert r.status_code == 404 and "--attributes" in r.json()["detail"]
        assert c.get("/api/info").json()["attributes_model"] is None


def test_findings_of_a_model_at_another_rate_resample_the_ecg(predictor, data, upperbound_checkpoint):
    """The quickstart's classifier runs at 100 Hz on 500 Hz data: the ECG is resampled as an input."""
    import ecgqa
    from ecgqa.data.records import fit_length, resample
    from ecgqa.serve.app import create_app

    inner = ecgqa.load(upperbound_checkpoint, device="cpu")
    seen = []

    class At100Hz:
        task, classes, model_name, rate, signal_length = "upperbound", inner.classes, "x", 100, 1000

        def classify(self, ecgs):
            seen.append(np.asarray(ecgs).shape)
            return inner.classify(fit_length(resample(np.asarray(ecgs), 100, inner.rate), inner.signal_length))

    with TestClient(create_app(predictor, data, attributes=At100Hz())) as c:
        assert c.get(f"/api/ecgs/{RECORD}/findings").status_code == 200
    assert seen == [(12, 1000)]
