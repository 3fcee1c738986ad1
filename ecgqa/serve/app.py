"""The HTTP demo: ``create_app`` assembles the parts, each in its own module.

- ``schemas``: request and response bodies; ``service``: the models, the ECG index and the
  batching of concurrent requests into one forward pass; ``routes``: the endpoints (an APIRouter);
  ``middleware``: body limits, the loopback Host check, the same-origin check for writes, the
  security headers and the error handlers; ``uploads``: turning
  uploaded files into signals; ``questions``: matching a typed question to the dataset's.

The caller loads the models (``ecgqa.load``) once and passes them in with the prepared data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ecgqa import __version__
from ecgqa.serve.middleware import (
    BODY_SECONDS,
    BodyLimit,
    LoopbackHostOnly,
    SameOriginWrites,
    SecurityHeaders,
    install_error_handlers,
)
from ecgqa.serve.routes import router
from ecgqa.serve.service import Predictor, build_service

STATIC = Path(__file__).resolve().parent / "static"
#: anyio worker threads for plots, upload parsing and resampling (its default is 40, each with its own
#: matplotlib font cache and malloc arena; the models have their own single thread, see service.py)
WORKER_THREADS = 4


def create_app(
    predictor: Predictor,
    data: Any,
    *,
    attributes: Any = None,
    loopback_only: bool = False,
    body_seconds: float = BODY_SECONDS,
) -> FastAPI:
    """The demo app around a loaded QA ``predictor`` and the ``PreparedData`` whose ECGs it offers.

    ``attributes``: an optional loaded attribute classifier (upperbound task) for the findings panel.
    ``loopback_only``: refuse requests whose Host is not a loopback name (set when bound to loopback).
    """
    service = build_service(predictor, data, attributes)

    async def lifespan(app: FastAPI):
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = WORKER_THREADS
        yield
        for batcher in service.batchers.values():
            await batcher.close()
        service.close()

    app = FastAPI(
        title="ECG-QA demo",
        version=__version__,
        description="Ask questions about 12-lead ECGs. Pick an ECG from the prepared data, or upload one.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.static = STATIC
    app.add_middleware(BodyLimit, body_seconds=body_seconds)
    app.add_middleware(SameOriginWrites)  # before BodyLimit: a refused request's body is never read
    if loopback_only:
        app.add_middleware(LoopbackHostOnly)
    app.add_middleware(SecurityHeaders)  # added last: runs first, so every response (errors too) has the headers
    install_error_handlers(app)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
