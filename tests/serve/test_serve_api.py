"""The demo API through the real app (httpx TestClient): every endpoint and every error path.

Expected values are computed independently: ECG signals with ``wfdb`` from the bundled records,
valid classes and counts from the release JSON, answers from a separately loaded ``ecgqa.load(CKPT)``.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections import Counter
from typing import Any

import numpy as np
import pytest
import wfdb
from scipy.signal import resample_poly

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from ecgqa.data.constants import LEADS
from ecgqa.data.release import AnswerSpace

RECORD = 2  # ECG id of a bundled record (records500/00000/00002_hr)


# --------------------------------------------------------------------------- fixtures


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


def wfdb_signal(sample_paths, ecg_id: int) -> tuple[np.ndarray, int]:
    """(12, T) float32 in LEADS order, read with wfdb directly (lead order by name)."""
    path = sample_paths.ptbxl_records / "records500" / f"{ecg_id // 1000 * 1000:05d}" / f"{ecg_id:05d}_hr"
    sig, fields = wfdb.rdsamp(str(path))
    names = [n.upper() for n in fields["sig_name"]]  # PTB-XL headers spell AVR, AVL, AVF
    order = [names.index(lead.upper()) for lead in LEADS]
    return sig.T[order].astype(np.float32), int(fields["fs"])


def store_signal(data, ecg_id: int) -> np.ndarray:
    return np.asarray(data.signals[data.row_of(ecg_id)], dtype=np.float32)


def assert_same_answer(body: dict, expected) -> None:
    assert body["answer"] == expected.answer
    assert body["valid_classes"] == expected.valid_classes
    got = {s["name"]: s["score"] for s in body["scores"]}
    assert got.keys() == expected.scores.keys()
    for name, score in expected.scores.items():
        assert got[name] == pytest.approx(score, abs=1e-5)
    assert [s["name"] for s in body["scores"] if s["selected"]] == [
        n for n, _ in sorted(expected.scores.items(), key=lambda kv: -kv[1]) if n in expected.answer
    ]


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


# --------------------------------------------------------------------------- uploads


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _record_files(sample_paths, ecg_id: int) -> dict[str, bytes]:
    folder = sample_paths.ptbxl_records / "records500" / f"{ecg_id // 1000 * 1000:05d}"
    return {p.name: p.read_bytes() for p in folder.glob(f"{ecg_id:05d}_hr.*")}


def test_upload_wfdb_pair_equals_direct(client, direct, sample_paths, space, release):
    s = next(x for x in release if x["question_type"] == "single-verify")
    files = [("files", (name, content)) for name, content in sorted(_record_files(sample_paths, RECORD).items())]
    r = client.post("/api/answer/upload", files=files, data={"question": s["question"]})
    assert r.status_code == 200, r.text
    sig, _ = wfdb_signal(sample_paths, RECORD)
    valid = [space.classes[i] for i in space.valid_classes(s)]
    assert_same_answer(r.json(), direct.answer(sig, s["question"], valid))
    assert r.json()["ecg_ids"] is None and r.json()["notes"] == []


def test_upload_npy_at_another_rate_is_resampled(client, direct, sample_paths):
    from ecgqa.data.records import resample

    sig, _ = wfdb_signal(sample_paths, RECORD)
    at250 = resample_poly(sig, 1, 2, axis=-1).astype(np.float32)
    q = "Does this ECG show baseline drift?"
    r = client.post(
        "/api/answer/upload", files={"files": ("ecg.npy", _npy(at250))}, data={"question": q, "rate": "250"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert any("250 Hz" in n for n in body["notes"])
    expected = direct.answer(resample(at250, 250, 500), q, body["valid_classes"])
    assert_same_answer(body, expected)


def test_upload_npz_with_rate_inside_and_two_ecgs(client, direct, sample_paths):
    a, fs = wfdb_signal(sample_paths, RECORD)
    b, _ = wfdb_signal(sample_paths, 5)
    files = []
    for name, sig in (("first.npz", a), ("second.npz", b)):
        buf = io.BytesIO()
        np.savez(buf, signal=sig, fs=np.array(fs))
        files.append(("files", (name, buf.getvalue())))
    q = "What numeric features of the second ECG are still abnormal as compared to the first ECG?"
    r = client.post("/api/answer/upload", files=files, data={"question": q})
    assert r.status_code == 200, r.text
    assert_same_answer(r.json(), direct.answer([a, b], q, r.json()["valid_classes"]))


def test_upload_plot(client, sample_paths):
    sig, fs = wfdb_signal(sample_paths, RECORD)
    r = client.post("/api/plot", files={"files": ("ecg.npy", _npy(sig))}, data={"rate": str(fs)})
    assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"


def _header(name: str, signal_file: str, leads=LEADS, fs: int = 500, n: int = 5000) -> bytes:
    lines = [f"{name} {len(leads)} {fs} {n}"]
    lines += [f"{signal_file} 16 1000/mV 16 0 0 0 0 {lead}" for lead in leads]
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize(
    "case, words",
    [
        ("eleven_leads", "wrong lead count"),
        ("transposed", "transposed"),
        ("nan", "NaN"),
        ("no_rate", "rate"),
        ("rate_50", "unsupported sampling rate"),
        ("rate_text", "not a number"),
        ("too_short", "at least"),
        ("not_numpy", "not a readable"),
        ("text_file", "unsupported file type"),
        ("three_ecgs", "3 ECGs"),
        ("wfdb_missing_dat", "00002_hr.dat"),
        ("wfdb_wrong_leads", "wrong lead set"),
        ("wfdb_escaping_path", "r.hea names the signal file"),
        ("bad_name", "not allowed"),
        ("empty_question", "question"),
    ],
)
def test_upload_errors(client, sample_paths, case, words):
    sig, _ = wfdb_signal(sample_paths, RECORD)
    data = {"question": "Does this ECG show baseline drift?", "rate": "500"}
    files = {"files": ("ecg.npy", _npy(sig))}
    if case == "eleven_leads":
        files = {"files": ("ecg.npy", _npy(sig[:11]))}
    elif case == "transposed":
        files = {"files": ("ecg.npy", _npy(sig.T))}
    elif case == "nan":
        bad = sig.copy()
        bad[4, 100:200] = np.nan
        files = {"files": ("ecg.npy", _npy(bad))}
        words = "NaN or infinite values in leads ['aVL']"
    elif case == "no_rate":
        del data["rate"]
    elif case == "rate_50":
        data["rate"] = "50"
    elif case == "rate_text":
        data["rate"] = "fast"
    elif case == "too_short":
        files = {"files": ("ecg.npy", _npy(sig[:, :400]))}
    elif case == "not_numpy":
        files = {"files": ("ecg.npy", b"this is not an array")}
    elif case == "text_file":
        files = {"files": ("ecg.txt", b"1,2,3")}
    elif case == "three_ecgs":
        files = [("files", (f"e{i}.npy", _npy(sig))) for i in range(3)]
    elif case == "wfdb_missing_dat":
        files = {"files": ("00002_hr.hea", _record_files(sample_paths, RECORD)["00002_hr.hea"])}
    elif case == "wfdb_wrong_leads":
        dat = _record_files(sample_paths, RECORD)["00002_hr.dat"]
        leads = list(LEADS[:-1]) + ["X"]
        files = [("files", ("r.hea", _header("r", "00002_hr.dat", leads))), ("files", ("00002_hr.dat", dat))]
    elif case == "wfdb_escaping_path":
        files = [("files", ("r.hea", _header("r", "../../../etc/hostname"))), ("files", ("r.dat", b"\0" * 1000))]
    elif case == "bad_name":
        files = {"files": ("..", _npy(sig))}
    elif case == "empty_question":
        data["question"] = "   "
    r = client.post("/api/answer/upload", files=files, data=data)
    if case == "rate_text":  # form validation of a float field
        assert r.status_code == 422 and "rate" in r.json()["detail"]
        return
    assert r.status_code == 422, r.text
    assert words in r.json()["detail"]
    assert "/tmp" not in r.json()["detail"]  # never reveal the server's temporary folder


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


# --------------------------------------------------------------------------- bounded uploads (issue 24, item 13)


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _upload_peak(client, files, data) -> tuple[Any, int]:
    """The response to an upload and the peak of memory traced while serving it (numpy's buffers included)."""
    import tracemalloc

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        r = client.post("/api/answer/upload", files=files, data=data)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return r, peak


def test_long_uploads_are_refused_from_their_header_and_cut_before_resampling(client, direct):
    """33 kB of compressed zeros (7.75 h at 100 Hz) used to cost 16 s of CPU and +785 MB; the longest accepted
    upload (120 s at 2000 Hz) is cut to the model's 10 s (plus the filter's margin) before it is resampled."""
    from ecgqa.serve.uploads import MAX_RATE, MAX_SECONDS

    q = {"question": "Does this ECG show baseline drift?"}
    bomb = _npz(signal=np.zeros((12, 2_790_000), bool), fs=100)
    assert len(bomb) < 40_000
    r, peak = _upload_peak(client, {"files": ("bomb.npz", bomb)}, q)
    assert r.status_code == 413, r.text
    assert "bomb.npz" in r.json()["detail"] and f"limit is {MAX_SECONDS:g} s" in r.json()["detail"]
    assert peak < 20 * 2**20, f"refusing a 33 kB upload held {peak / 2**20:.0f} MB"

    longest = np.zeros((12, int(MAX_SECONDS * MAX_RATE)), np.float32)
    longest[:, ::7] = 0.5  # not all zeros: the model must see the first 10 s of this, resampled
    r, peak = _upload_peak(client, {"files": ("long.npz", _npz(signal=longest, fs=MAX_RATE))}, q)
    assert r.status_code == 200, r.text
    assert peak < 120 * 2**20, f"a {longest.nbytes / 2**20:.0f} MB upload held {peak / 2**20:.0f} MB"
    assert any(f"first 10 s of {MAX_SECONDS:.2f} s" in n for n in r.json()["notes"])
    from ecgqa.data.records import resample

    expected = direct.answer(resample(longest, MAX_RATE, 500)[:, :5000], q["question"], r.json()["valid_classes"])
    assert_same_answer(r.json(), expected)

    # one sample more is refused, for .npy and .npz, and a WFDB header announcing more is refused before wfdb
    over = np.zeros((12, int(MAX_SECONDS * 500) + 1), np.float32)
    for files in (
        {"files": ("over.npy", _npy(over))},
        {"files": ("over.npz", _npz(signal=over, fs=500))},
        [("files", ("r.hea", _header("r", "r.dat", n=over.shape[1]))), ("files", ("r.dat", b"\0" * 1000))],
    ):
        r = client.post("/api/answer/upload", files=files, data={**q, "rate": "500"})
        assert r.status_code == 413, r.text
        assert "too long" in r.json()["detail"] and "120 s" in r.json()["detail"]


@pytest.mark.parametrize("fs, rate", [(100, 500), (250, 500), (257, 500), (500, 100), (1000, 500), (360, 100)])
def test_resampling_only_the_needed_head_gives_the_same_input(fs, rate):
    from ecgqa.data.records import resample
    from ecgqa.serve.service import input_needed

    length = rate * 10
    x = np.random.default_rng(fs).standard_normal((12, fs * 40)).astype(np.float32)
    n = input_needed(fs, rate, length)
    assert n < fs * 11  # 10 s plus the filter's margin, not the whole 40 s
    np.testing.assert_array_equal(resample(x[:, :n], fs, rate)[:, :length], resample(x, fs, rate)[:, :length])


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
