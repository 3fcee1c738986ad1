"""The HTTP demo: a FastAPI app that answers questions about ECGs with a loaded QA predictor.

``create_app(predictor, data)`` takes an already loaded :class:`ecgqa.predictor.Predictor` (so the
model is loaded once, by the caller) and a :class:`ecgqa.data.PreparedData` (the ECGs and questions
to offer). The predictor reaches endpoints as a FastAPI dependency; inference runs in a worker
thread through a small batcher, so concurrent requests share forward passes and never block the
event loop. No endpoint takes a filesystem path: ECGs are chosen by id or uploaded as files.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Protocol

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from ecgqa import __version__
from ecgqa.constants import LEADS, QUESTION_TYPES
from ecgqa.records import resample
from ecgqa.serve.plot import render_12lead
from ecgqa.serve.questions import QuestionIndex, QuestionMatch
from ecgqa.serve.uploads import UploadError, parse_upload

log = logging.getLogger("ecgqa.serve")

STATIC = Path(__file__).resolve().parent / "static"
MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_QUESTION_CHARS = 500
MAX_BATCH = 16
ECG_ID_MAX = 2**62  # ids beyond int64 cannot be in any prepared data; reject them as 422, not 500


class Predictor(Protocol):
    """What the app needs of ``ecgqa.load(...)`` (the cross-stage Predictor contract)."""

    task: str
    classes: list[str]
    rate: int
    signal_length: int
    model_name: str

    def answer(self, ecgs: Any, question: str, valid_classes: Any = None) -> Any: ...

    def answer_batch(self, items: list[tuple[Any, str, Any]], batch_size: int = 32) -> list[Any]: ...


# --------------------------------------------------------------------------- pydantic models


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    ecg_ids: list[Annotated[int, Field(ge=0, le=ECG_ID_MAX)]] = Field(
        min_length=1, max_length=2, description="one ECG id, or two (first, second) for comparison questions",
        examples=[[127]],
    )
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS, examples=["Does this ECG show static noise?"])


class ClassScore(BaseModel):
    name: str
    score: float = Field(description="sigmoid probability")
    selected: bool = Field(description="score >= 0.5: part of the answer")


class MatchInfo(BaseModel):
    source: str = Field(description="dataset: a prepared question; similar: close to one; fallback: all classes")
    question_type: str | None
    attribute_type: str | None
    template_id: int | None
    matched_question: str | None
    similarity: float


class Timing(BaseModel):
    total_ms: float
    queue_ms: float = Field(description="waiting for the model")
    inference_ms: float = Field(description="the batched forward pass this request was part of")
    batch_size: int


class AnswerResponse(BaseModel):
    question: str
    ecg_ids: list[int] | None = Field(description="the ECGs answered about; null for uploads")
    answer: list[str] = Field(description="the answer set; [] means none of the options")
    scores: list[ClassScore] = Field(description="every valid class, highest score first")
    valid_classes: list[str]
    question_type: str | None
    match: MatchInfo
    timing: Timing
    notes: list[str] = Field(default_factory=list, description="adjustments made to the input (resampling, length)")


class Info(BaseModel):
    model_name: str
    version: str
    task: str
    n_classes: int
    rate: int
    signal_length: int
    data_version: str | None
    data_variant: str | None
    n_ecgs: int
    max_upload_bytes: int
    max_question_chars: int


class ECGSummary(BaseModel):
    id: int
    n_questions: int
    splits: list[str]
    duration_s: float


class ECGPage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[ECGSummary]


class ECGSignal(BaseModel):
    id: int
    rate: int
    n_samples: int
    leads: list[str]
    values: list[list[float]] = Field(description="one list per lead, in mV")


class Example(BaseModel):
    question: str
    ecg_ids: list[int]
    question_type: str
    attribute_type: str
    answer: list[str] = Field(description="the dataset's answer")
    split: str


class Health(BaseModel):
    status: str


class ErrorBody(BaseModel):
    detail: str
    error_id: str | None = None


# --------------------------------------------------------------------------- the service


class ModelError(Exception):
    """The predictor failed on input we had validated: a server fault, reported as 500 with an id."""


class _Batcher:
    """Collects requests that arrive while the model is busy and answers them in one forward pass.

    A single consumer task calls the predictor from one worker thread at a time, which also keeps
    the (not thread-safe) tokenizer away from concurrent use.
    """

    def __init__(self, predictor: Predictor, max_batch: int = MAX_BATCH):
        self.predictor, self.max_batch = predictor, max_batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    async def submit(self, ecgs: list[np.ndarray], question: str, valid: list[str]) -> tuple[Any, float, float, int]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop, self._queue = loop, asyncio.Queue()
            self._task = loop.create_task(self._consume())
        fut = loop.create_future()
        self._queue.put_nowait(((ecgs, question, valid), fut, time.perf_counter()))
        return await fut

    async def _consume(self) -> None:
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            batch = [b for b in batch if not b[1].done()]
            if not batch:
                continue
            t0 = time.perf_counter()
            results = await run_in_threadpool(self._answer, [b[0] for b in batch])
            ms = (time.perf_counter() - t0) * 1000
            for (_, fut, t_in), result in zip(batch, results):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result((result, (t0 - t_in) * 1000, ms, len(batch)))

    def _answer(self, items: list[tuple]) -> list[Any]:
        try:
            return list(self.predictor.answer_batch(items, batch_size=self.max_batch))
        except Exception as e:  # noqa: BLE001 - any model failure becomes that request's 500
            if len(items) == 1:
                return [e]
        out: list[Any] = []
        for item in items:  # isolate the failing request(s) so the others still get answers
            try:
                out.append(self.predictor.answer_batch([item], batch_size=1)[0])
            except Exception as e:  # noqa: BLE001 - isolated per request, reported as 500 with an id
                out.append(e)
        return out

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()


@dataclass
class Service:
    """Everything built once at start-up: the predictor, the ECG index, questions and examples."""

    predictor: Predictor
    data: Any
    questions: QuestionIndex
    ecg_rows: dict[int, int]
    ecg_questions: dict[int, int]
    ecg_splits: dict[int, list[str]]
    examples: list[Example]
    batchers: dict[int, _Batcher] = field(default_factory=dict)

    def batcher_for(self, predictor: Predictor) -> _Batcher:
        """One batcher per predictor object (the injected one; tests may override the dependency)."""
        key = id(predictor)
        if key not in self.batchers or self.batchers[key].predictor is not predictor:
            self.batchers[key] = _Batcher(predictor)
        return self.batchers[key]

    @property
    def data_rate(self) -> int:
        return int(self.data.meta.get("rate", self.predictor.rate))

    def row(self, ecg_id: int) -> int:
        if ecg_id not in self.ecg_rows:
            raise HTTPException(404, f"ECG {ecg_id} is not in the prepared data; pick an id from /api/ecgs")
        return self.ecg_rows[ecg_id]

    def signal(self, ecg_id: int) -> np.ndarray:
        return np.asarray(self.data.signals[self.row(ecg_id)], dtype=np.float32)

    @staticmethod
    def model_input(predictor: Predictor, signal: np.ndarray, fs: int, name: str) -> tuple[np.ndarray, list[str]]:
        """Resample to the model's rate and fit its input length, saying what was changed."""
        notes = []
        rate, length = int(predictor.rate), int(predictor.signal_length)
        if fs != rate:
            signal = resample(signal, fs, rate)
            notes.append(f"{name}: resampled from {fs} Hz to the model's {rate} Hz")
        if signal.shape[1] > length:
            notes.append(f"{name}: used the first {length / rate:g} s of {signal.shape[1] / rate:.2f} s")
            signal = signal[:, :length]
        elif signal.shape[1] < length:
            notes.append(f"{name}: {signal.shape[1] / rate:.2f} s zero-padded to the model's {length / rate:g} s")
            signal = np.pad(signal, ((0, 0), (0, length - signal.shape[1])))
        return np.ascontiguousarray(signal, dtype=np.float32), notes


def _build_service(predictor: Predictor, data: Any) -> Service:
    if getattr(predictor, "task", "qa") != "qa":
        raise ValueError(f"the checkpoint is a {predictor.task!r} model; `ecgqa serve` needs a QA checkpoint")
    data_task = data.meta.get("task", "qa")
    if data_task != "qa":
        raise ValueError(f"{data.path}: prepared for task {data_task!r}; serve needs QA data (ecgqa prepare --task qa)")
    unknown = sorted(set(data.classes) - set(predictor.classes))
    if unknown:
        raise ValueError(
            f"{data.path}: answer classes {unknown[:5]}{'…' if len(unknown) > 5 else ''} are not in the model's "
            "answer space; serve the model with data of the same ECG-QA version"
        )
    cols = ("question", "question_type", "attribute_type", "template_id", "valid_classes", "ecg_id", "answer")
    rows_by_split = {s: data.split(s).select_columns(list(cols)).to_dict() for s in data.splits}
    rows = [dict(zip(cols, v)) for t in rows_by_split.values() for v in zip(*(t[c] for c in cols))]
    questions = QuestionIndex.from_rows(list(data.classes), rows)

    ecg_rows = {int(e): i for i, e in enumerate(np.asarray(data.ecg_ids).tolist())}
    n_questions: dict[int, int] = defaultdict(int)
    splits: dict[int, set[str]] = defaultdict(set)
    for split, table in rows_by_split.items():
        for ids in table["ecg_id"]:
            for e in ids:
                n_questions[int(e)] += 1
                splits[int(e)].add(split)
    return Service(
        predictor, data, questions, ecg_rows, dict(n_questions), {e: sorted(s) for e, s in splits.items()},
        _pick_examples(rows_by_split, list(data.classes), set(ecg_rows)),
    )


def _pick_examples(rows_by_split: dict[str, dict[str, list]], classes: list[str], ecgs: set[int],
                   per_type: int = 3) -> list[Example]:
    """A few questions of each type, held-out splits first, distinct templates before repeats."""
    order = sorted(rows_by_split, key=lambda s: {"test": 0, "valid": 1, "train": 2}.get(s, 3))
    picked: dict[str, list[Example]] = defaultdict(list)
    seen: set[tuple[str, int | str]] = set()
    for distinct in ("template", "question"):
        for split in order:
            t = rows_by_split[split]
            for i, qtype in enumerate(t["question_type"]):
                key = (qtype, t["template_id"][i] if distinct == "template" else t["question"][i])
                if len(picked[qtype]) >= per_type or key in seen or t["question"][i] in {
                    e.question for e in picked[qtype]
                } or not set(t["ecg_id"][i]) <= ecgs:
                    continue
                seen.add(key)
                picked[qtype].append(Example(
                    question=t["question"][i], ecg_ids=[int(e) for e in t["ecg_id"][i]], question_type=qtype,
                    attribute_type=t["attribute_type"][i], answer=[classes[c] for c in t["answer"][i]], split=split,
                ))
    rank = {q: i for i, q in enumerate(QUESTION_TYPES)}
    return [e for q in sorted(picked, key=lambda q: rank.get(q, 99)) for e in picked[q]]


def get_service(request: Request) -> Service:
    return request.app.state.service


def get_predictor(service: Annotated[Service, Depends(get_service)]) -> Predictor:
    return service.predictor


ServiceDep = Annotated[Service, Depends(get_service)]
EcgId = Annotated[int, PathParam(ge=0, le=ECG_ID_MAX, description="the source database's ECG id")]
UPLOAD_DOC = ("One ECG, or two for comparison questions: a WFDB record (the .hea header and the signal "
              "file it names) or a .npy/.npz array of shape (12, T) in mV, lead order " + ", ".join(LEADS))
PredictorDep = Annotated[Predictor, Depends(get_predictor)]


# --------------------------------------------------------------------------- body size limit


class BodyLimit:
    """Reject request bodies over ``max_bytes`` with 413 before any endpoint parses them."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, size: str) -> JSONResponse:
        return JSONResponse(
            {"detail": f"upload too large ({size}); the limit is {self.max_bytes / 2**20:g} MB per request"}, 413
        )

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._too_large(f"{int(length)} bytes")(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._too_large(f"over {self.max_bytes} bytes")(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# --------------------------------------------------------------------------- the app


def _error_response(status: int, message: str, error_id: str | None = None) -> JSONResponse:
    return JSONResponse(ErrorBody(detail=message, error_id=error_id).model_dump(exclude_none=True), status)


def create_app(predictor: Predictor, data: Any) -> FastAPI:
    """The demo app around a loaded QA ``predictor`` and the ``PreparedData`` whose ECGs it offers."""
    service = _build_service(predictor, data)

    async def lifespan(app: FastAPI):
        yield
        for batcher in service.batchers.values():
            await batcher.close()

    app = FastAPI(
        title="ECG-QA demo",
        version=__version__,
        description="Ask questions about 12-lead ECGs. Pick an ECG from the prepared data, or upload one.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=MAX_UPLOAD_BYTES)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # One readable sentence for the page, the structured list for programs.
        parts = []
        for err in exc.errors():
            loc = list(err.get("loc", ()))
            if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
                loc = loc[1:]  # where it came from is clear from the request; name the field
            where = ".".join(str(p) for p in loc)
            parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg", "invalid"))
        return JSONResponse({"detail": "; ".join(parts) or "invalid request",
                             "errors": jsonable_errors(exc.errors())}, 422)

    @app.exception_handler(UploadError)
    async def _upload(request: Request, exc: UploadError) -> JSONResponse:
        return _error_response(exc.status, str(exc))

    @app.exception_handler(ModelError)
    async def _model(request: Request, exc: ModelError) -> JSONResponse:
        error_id = uuid.uuid4().hex[:8]
        log.error("error %s: %s %s failed: %s", error_id, request.method, request.url.path, exc,
                  exc_info=exc.__cause__ or exc)
        return _error_response(500, f"the model failed on this request (error id {error_id}); "
                                    "the server log has the details", error_id)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        error_id = uuid.uuid4().hex[:8]
        log.error("error %s: %s %s failed", error_id, request.method, request.url.path, exc_info=exc)
        return _error_response(500, f"internal error (error id {error_id}); the server log has the details", error_id)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", response_model=Health, tags=["meta"])
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/api/info", response_model=Info, tags=["meta"])
    async def info(service: ServiceDep, predictor: PredictorDep) -> Info:
        return Info(
            model_name=str(predictor.model_name), version=__version__, task=predictor.task,
            n_classes=len(predictor.classes), rate=int(predictor.rate), signal_length=int(predictor.signal_length),
            data_version=service.data.meta.get("version"), data_variant=service.data.meta.get("variant"),
            n_ecgs=len(service.ecg_rows), max_upload_bytes=MAX_UPLOAD_BYTES, max_question_chars=MAX_QUESTION_CHARS,
        )

    @app.get("/api/ecgs", response_model=ECGPage, tags=["ecgs"])
    async def list_ecgs(
        service: ServiceDep,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> ECGPage:
        ids = sorted(service.ecg_rows)
        length = int(service.data.meta.get("signal_length") or service.data.signals.shape[-1])
        items = [
            ECGSummary(id=e, n_questions=service.ecg_questions.get(e, 0), splits=service.ecg_splits.get(e, []),
                       duration_s=round(length / service.data_rate, 3))
            for e in ids[offset:offset + limit]
        ]
        return ECGPage(total=len(ids), offset=offset, limit=limit, items=items)

    @app.get("/api/ecgs/{ecg_id}", response_model=ECGSignal, tags=["ecgs"], responses={404: {"model": ErrorBody}})
    async def get_ecg(
        service: ServiceDep, ecg_id: EcgId,
        rate: Annotated[int, Query(ge=25, le=500, description="downsample to this rate (Hz) for plotting")] = 100,
    ) -> ECGSignal:
        signal = service.signal(ecg_id)
        rate = min(rate, service.data_rate)
        out = resample(signal, service.data_rate, rate)
        return ECGSignal(id=ecg_id, rate=rate, n_samples=out.shape[1], leads=list(LEADS),
                         values=np.round(out.astype(np.float64), 4).tolist())

    @lru_cache(maxsize=128)
    def _plot(ecg_id: int) -> bytes:
        return render_12lead(service.signal(ecg_id), service.data_rate, title=f"ECG {ecg_id}")

    @app.get("/api/ecgs/{ecg_id}/plot.png", response_class=Response, tags=["ecgs"],
             responses={200: {"content": {"image/png": {}}, "description": "the 12-lead plot"},
                        404: {"model": ErrorBody}})
    async def plot_ecg(service: ServiceDep, ecg_id: EcgId) -> Response:
        service.row(ecg_id)
        png = await run_in_threadpool(_plot, ecg_id)
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/examples", response_model=list[Example], tags=["questions"])
    async def examples(
        service: ServiceDep,
        question_type: Annotated[str | None, Query(description="only this question type", max_length=64)] = None,
    ) -> list[Example]:
        return [e for e in service.examples if question_type in (None, e.question_type)]

    async def _answer(service: Service, predictor: Predictor, ecgs: list[tuple[np.ndarray, int, str]],
                      question: str, ecg_ids: list[int] | None, t_start: float) -> AnswerResponse:
        match = service.questions.match(question)
        if match.n_ecgs is not None and match.n_ecgs != len(ecgs):
            need = "compares two ECGs: pick a second ECG" if match.n_ecgs == 2 else "is about one ECG: pick only one"
            raise HTTPException(422, f"this {match.question_type} question {need} (it matched "
                                     f"{match.matched_question!r})")
        notes: list[str] = []
        inputs = []
        for signal, fs, name in ecgs:
            # resampling an upload can take tens of ms: keep it off the event loop
            x, n = await run_in_threadpool(service.model_input, predictor, signal, fs, name)
            inputs.append(x)
            notes += n
        valid = [service.data.classes[c] for c in match.valid_classes]
        try:
            ans, queue_ms, infer_ms, batch = await service.batcher_for(predictor).submit(inputs, question, valid)
        except Exception as e:
            raise ModelError(f"{type(e).__name__}: {e}") from e
        return _response(question, ecg_ids, ans, match, notes, t_start, queue_ms, infer_ms, batch)

    @app.post("/api/answer", response_model=AnswerResponse, tags=["answer"],
              responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}, 413: {"model": ErrorBody},
                         500: {"model": ErrorBody}})
    async def answer(req: AnswerRequest, service: ServiceDep, predictor: PredictorDep) -> AnswerResponse:
        t0 = time.perf_counter()
        ecgs = [(service.signal(e), service.data_rate, f"ECG {e}") for e in req.ecg_ids]
        return await _answer(service, predictor, ecgs, req.question, list(req.ecg_ids), t0)

    @app.post("/api/answer/upload", response_model=AnswerResponse, tags=["answer"],
              responses={413: {"model": ErrorBody}, 422: {"model": ErrorBody}, 500: {"model": ErrorBody}})
    async def answer_upload(
        service: ServiceDep,
        predictor: PredictorDep,
        files: Annotated[list[UploadFile], File(description=UPLOAD_DOC)],
        question: Annotated[str, Form(min_length=1, max_length=MAX_QUESTION_CHARS)],
        rate: Annotated[float | None, Form(description="sampling rate in Hz (.npy/.npz; WFDB headers carry it)")]
        = None,
    ) -> AnswerResponse:
        t0 = time.perf_counter()
        question = question.strip()
        if not question:
            raise HTTPException(422, "question: the question is empty")
        ecgs = await _read_upload(files, rate)
        return await _answer(service, predictor, [(u.signal, u.fs, u.name) for u in ecgs], question, None, t0)

    @app.post("/api/plot", response_class=Response, tags=["ecgs"],
              responses={200: {"content": {"image/png": {}}, "description": "the 12-lead plot of the upload"},
                         413: {"model": ErrorBody}, 422: {"model": ErrorBody}})
    async def plot_upload(
        files: Annotated[list[UploadFile], File(description=UPLOAD_DOC)],
        rate: Annotated[float | None, Form(description="sampling rate in Hz (.npy/.npz)")] = None,
    ) -> Response:
        ecgs = await _read_upload(files, rate)
        png = await run_in_threadpool(render_12lead, ecgs[0].signal, ecgs[0].fs, f"uploaded: {ecgs[0].name}")
        return Response(png, media_type="image/png")

    return app


async def _read_upload(files: list[UploadFile], rate: float | None) -> list[Any]:
    contents = [(f.filename or "", await f.read()) for f in files]
    return await run_in_threadpool(parse_upload, contents, rate)


def _response(question: str, ecg_ids: list[int] | None, ans: Any, match: QuestionMatch, notes: list[str],
              t_start: float, queue_ms: float, infer_ms: float, batch: int) -> AnswerResponse:
    chosen = set(ans.answer)
    scores = sorted(ans.scores.items(), key=lambda kv: -kv[1])
    return AnswerResponse(
        question=question, ecg_ids=ecg_ids, answer=list(ans.answer),
        scores=[ClassScore(name=k, score=float(v), selected=k in chosen) for k, v in scores],
        valid_classes=list(ans.valid_classes), question_type=match.question_type,
        match=MatchInfo(source=match.source, question_type=match.question_type, attribute_type=match.attribute_type,
                        template_id=match.template_id, matched_question=match.matched_question,
                        similarity=match.similarity),
        timing=Timing(total_ms=round((time.perf_counter() - t_start) * 1000, 3), queue_ms=round(queue_ms, 3),
                      inference_ms=round(infer_ms, 3), batch_size=batch),
        notes=notes,
    )


def jsonable_errors(errors: Any) -> list[dict]:
    """Pydantic error dicts can hold exceptions and bytes; keep only what JSON can carry."""
    out = []
    for err in errors:
        out.append({k: (v if isinstance(v, (str, int, float, bool, type(None), list, tuple)) else str(v))
                    for k, v in err.items() if k in ("loc", "msg", "type")})
    return out
