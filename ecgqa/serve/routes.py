"""The demo's endpoints (one ``APIRouter``). No endpoint takes a filesystem path: ECGs are chosen
by id or uploaded as files. The service and the QA predictor reach endpoints as FastAPI
dependencies (``get_service``, ``get_predictor``), so tests can swap the model."""

from __future__ import annotations

import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response

from ecgqa import __version__
from ecgqa.data.constants import LEADS
from ecgqa.data.records import resample
from ecgqa.render import render_ecg
from ecgqa.serve.middleware import MAX_UPLOAD_BYTES
from ecgqa.serve.questions import QuestionMatch
from ecgqa.serve.schemas import (
    ECG_ID_MAX,
    MAX_QUESTION_CHARS,
    AnswerRequest,
    AnswerResponse,
    ClassScore,
    ECGPage,
    ECGSignal,
    ECGSummary,
    ErrorBody,
    Example,
    Findings,
    Health,
    Info,
    MatchInfo,
    Timing,
)
from ecgqa.serve.service import ModelError, Predictor, Service
from ecgqa.serve.uploads import UploadedECG, parse_upload


def get_service(request: Request) -> Service:
    return request.app.state.service


def get_predictor(service: Annotated[Service, Depends(get_service)]) -> Predictor:
    return service.predictor


ServiceDep = Annotated[Service, Depends(get_service)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
EcgId = Annotated[int, PathParam(ge=0, le=ECG_ID_MAX, description="the source database's ECG id")]
UPLOAD_DOC = (
    "One ECG, or two for comparison questions: a WFDB record (the .hea header and the signal "
    "file it names) or a .npy/.npz array of shape (12, T) in mV, lead order " + ", ".join(LEADS)
)
PNG = {"content": {"image/png": {}}, "description": "the 12-lead printout (ecgqa.render, 3x4 + lead II)"}

PLOT_SECONDS = 10.0  # of paper, as printed ECGs are (ecgqa.render)

router = APIRouter()


@router.get("/", include_in_schema=False)
async def index(request: Request) -> FileResponse:
    return FileResponse(request.app.state.static / "index.html", media_type="text/html")


@router.get("/healthz", response_model=Health, tags=["meta"])
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/api/info", response_model=Info, tags=["meta"])
async def info(service: ServiceDep, predictor: PredictorDep) -> Info:
    meta = service.data.meta
    return Info(
        model_name=str(predictor.model_name),
        version=__version__,
        task=predictor.task,
        n_classes=len(predictor.classes),
        rate=int(predictor.rate),
        signal_length=int(predictor.signal_length),
        data_version=meta.get("version"),
        data_variant=meta.get("variant"),
        n_ecgs=len(service.ecg_rows),
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_question_chars=MAX_QUESTION_CHARS,
        attributes_model=None if service.attributes is None else str(service.attributes.model_name),
    )


@router.get("/api/ecgs", response_model=ECGPage, tags=["ecgs"])
async def list_ecgs(
    service: ServiceDep,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> ECGPage:
    ids = service.sorted_ecg_ids
    duration = round(int(service.data.meta["signal_length"]) / service.rate, 3)
    items = [
        ECGSummary(
            id=e, n_questions=service.ecg_questions.get(e, 0), splits=service.ecg_splits.get(e, []), duration_s=duration
        )
        for e in ids[offset : offset + limit]
    ]
    return ECGPage(total=len(ids), offset=offset, limit=limit, items=items)


@router.get("/api/ecgs/{ecg_id}", response_model=ECGSignal, tags=["ecgs"], responses={404: {"model": ErrorBody}})
async def get_ecg(
    service: ServiceDep,
    ecg_id: EcgId,
    rate: Annotated[int, Query(ge=25, le=500, description="downsample to this rate (Hz) for plotting")] = 100,
) -> ECGSignal:
    signal = service.signal(ecg_id)
    rate = min(rate, service.rate)
    out = resample(signal, service.rate, rate)
    return ECGSignal(
        id=ecg_id,
        rate=rate,
        n_samples=out.shape[1],
        leads=list(LEADS),
        values=np.round(out.astype(np.float64), 4).tolist(),
    )


@router.get(
    "/api/ecgs/{ecg_id}/plot.png",
    response_class=Response,
    tags=["ecgs"],
    responses={200: PNG, 404: {"model": ErrorBody}},
)
async def plot_ecg(service: ServiceDep, ecg_id: EcgId) -> Response:
    service.row(ecg_id)
    png = await run_in_threadpool(service.plot, ecg_id)
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})


@router.get(
    "/api/ecgs/{ecg_id}/findings",
    response_model=Findings,
    tags=["ecgs"],
    responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
async def findings(service: ServiceDep, ecg_id: EcgId) -> Findings:
    """The attribute classifier's findings for this ECG: grounding classes above the threshold."""
    return await service.findings(ecg_id)


@router.get("/api/examples", response_model=list[Example], tags=["questions"])
async def examples(
    service: ServiceDep,
    question_type: Annotated[str | None, Query(description="only this question type", max_length=64)] = None,
) -> list[Example]:
    return [e for e in service.examples if question_type in (None, e.question_type)]


@router.post(
    "/api/answer",
    response_model=AnswerResponse,
    tags=["answer"],
    responses={
        404: {"model": ErrorBody},
        422: {"model": ErrorBody},
        413: {"model": ErrorBody},
        500: {"model": ErrorBody},
    },
)
async def answer(req: AnswerRequest, service: ServiceDep, predictor: PredictorDep) -> AnswerResponse:
    t0 = time.perf_counter()
    ecgs = [(service.signal(e), service.rate, f"ECG {e}") for e in req.ecg_ids]
    return await _answer(service, predictor, ecgs, req.question, list(req.ecg_ids), t0)


@router.post(
    "/api/answer/upload",
    response_model=AnswerResponse,
    tags=["answer"],
    responses={413: {"model": ErrorBody}, 422: {"model": ErrorBody}, 500: {"model": ErrorBody}},
)
async def answer_upload(
    service: ServiceDep,
    predictor: PredictorDep,
    files: Annotated[list[UploadFile], File(description=UPLOAD_DOC)],
    question: Annotated[str, Form(min_length=1, max_length=MAX_QUESTION_CHARS)],
    rate: Annotated[float | None, Form(description="sampling rate in Hz (.npy/.npz; WFDB headers carry it)")] = None,
) -> AnswerResponse:
    t0 = time.perf_counter()
    question = question.strip()
    if not question:
        raise HTTPException(422, "question: the question is empty")
    ecgs = await _read_upload(files, rate)
    return await _answer(service, predictor, [(u.signal, u.fs, u.name) for u in ecgs], question, None, t0)


@router.post(
    "/api/plot",
    response_class=Response,
    tags=["ecgs"],
    responses={200: PNG, 413: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
async def plot_upload(
    files: Annotated[list[UploadFile], File(description=UPLOAD_DOC)],
    rate: Annotated[float | None, Form(description="sampling rate in Hz (.npy/.npz)")] = None,
) -> Response:
    ecg = (await _read_upload(files, rate))[0]
    first = ecg.signal[:, : int(PLOT_SECONDS * ecg.fs)]  # the printout shows 10 s: convert no more
    png = await run_in_threadpool(
        lambda: render_ecg(first, ecg.fs, title=f"uploaded: {ecg.name}", seconds=PLOT_SECONDS)
    )
    return Response(png, media_type="image/png")


async def _read_upload(files: list[UploadFile], rate: float | None) -> list[UploadedECG]:
    contents = [(f.filename or "", await f.read()) for f in files]
    return await run_in_threadpool(parse_upload, contents, rate)


async def _answer(
    service: Service,
    predictor: Predictor,
    ecgs: list[tuple[np.ndarray, int, str]],
    question: str,
    ecg_ids: list[int] | None,
    t_start: float,
) -> AnswerResponse:
    match = service.questions.match(question)
    if match.n_ecgs is not None and match.n_ecgs != len(ecgs):
        need = "compares two ECGs: pick a second ECG" if match.n_ecgs == 2 else "is about one ECG: pick only one"
        raise HTTPException(422, f"this {match.question_type} question {need} (it matched {match.matched_question!r})")
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
    if not all(np.isfinite(v) for v in ans.scores.values()):
        # e.g. finite but absurd amplitudes overflow inside the model: no score would mean "none"
        raise HTTPException(
            422,
            "the model produced no finite score for this input; check the signal's units (millivolts) and amplitude",
        )
    return _response(question, ecg_ids, ans, match, notes, t_start, queue_ms, infer_ms, batch)


def unrecognised_warning(n_classes: int) -> str:
    return (
        "This question is not one the model was trained on: it matches none of the ECG-QA questions of the "
        "prepared data, so the model does not know what it asks or which answers fit. The answer below scores "
        f"all {n_classes} classes and is not a meaningful reply; rephrase it like one of the example questions."
    )


def _response(
    question: str,
    ecg_ids: list[int] | None,
    ans: Any,
    match: QuestionMatch,
    notes: list[str],
    t_start: float,
    queue_ms: float,
    infer_ms: float,
    batch: int,
) -> AnswerResponse:
    chosen = set(ans.answer)
    scores = sorted(ans.scores.items(), key=lambda kv: -kv[1])
    recognised = match.source != "fallback"
    return AnswerResponse(
        question=question,
        ecg_ids=ecg_ids,
        recognised=recognised,
        warning=None if recognised else unrecognised_warning(len(ans.valid_classes)),
        answer=list(ans.answer),
        scores=[ClassScore(name=k, score=float(v), selected=k in chosen) for k, v in scores],
        valid_classes=list(ans.valid_classes),
        question_type=match.question_type,
        match=MatchInfo(
            source=match.source,
            question_type=match.question_type,
            attribute_type=match.attribute_type,
            template_id=match.template_id,
            matched_question=match.matched_question,
            similarity=match.similarity,
        ),
        timing=Timing(
            total_ms=round((time.perf_counter() - t_start) * 1000, 3),
            queue_ms=round(queue_ms, 3),
            inference_ms=round(infer_ms, 3),
            batch_size=batch,
        ),
        notes=notes,
    )
