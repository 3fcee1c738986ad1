"""ASGI middleware and error handlers of the demo app: body limits, Host check, one error shape.

- :class:`BodyLimit` reads each request body before any endpoint parses it: at most
  ``max_bytes`` per request (413), the whole body within ``body_seconds`` (408; a client trickling
  a 5 MB upload cannot pin a connection and its buffer forever), and at most ``budget_bytes``
  buffered across all unfinished bodies together (503), which bounds the memory slow uploads can
  hold (RELIABILITY-PROBE S15: 100 slow bodies held 420 MB).
- :class:`LoopbackHostOnly` refuses requests whose ``Host`` is not a loopback name when the
  server listens on loopback, so a web page that rebinds its DNS name to 127.0.0.1 cannot read
  the served ECGs (S19).
- :class:`SecurityHeaders` sends a Content-Security-Policy (the page loads only its own scripts,
  styles and images; no framing: ``frame-ancestors 'none'``), ``X-Content-Type-Options: nosniff``
  and ``Referrer-Policy: no-referrer`` with every response.
- :class:`SameOriginWrites` refuses (403) state-changing requests (POST, PUT, PATCH, DELETE) that a
  browser sends from another origin: any other web page could otherwise post ECGs and questions to
  the demo with the visitor's browser (a "simple" multipart POST needs no CORS preflight). Clients
  that send no ``Origin`` (curl, scripts) are not browsers acting for another site and pass.
- :func:`install_error_handlers`: every error is ``{"detail": "one readable sentence"}``; 500s
  carry only an error id, the traceback goes to the log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ecgqa.serve.schemas import ErrorBody
from ecgqa.serve.service import ModelError
from ecgqa.serve.uploads import UploadError

log = logging.getLogger("ecgqa.serve")

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
BODY_SECONDS = 30.0  # a whole 5 MB body within 30 s: 170 kB/s, slower than any real link
BODY_BUDGET_BYTES = 64 * 1024 * 1024  # all unfinished bodies together
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def error_response(
    status: int, message: str, error_id: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        ErrorBody(detail=message, error_id=error_id).model_dump(exclude_none=True), status, headers=headers
    )


class BodyLimit:
    """Buffer each request body within a size, a time and a shared memory budget, then replay it."""

    def __init__(
        self,
        app: Any,
        max_bytes: int = MAX_UPLOAD_BYTES,
        body_seconds: float = BODY_SECONDS,
        budget_bytes: int = BODY_BUDGET_BYTES,
    ):
        self.app, self.max_bytes, self.body_seconds, self.budget_bytes = app, max_bytes, body_seconds, budget_bytes
        self.buffered = 0  # bytes held by unfinished bodies right now (one event loop: no lock needed)

    def _too_large(self, size: str) -> JSONResponse:
        return error_response(413, f"upload too large ({size}); the limit is {self.max_bytes / 2**20:g} MB per request")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._too_large(f"{int(length)} bytes")(scope, receive, send)
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + self.body_seconds
        try:
            while True:
                try:
                    message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
                except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                    return await error_response(
                        408,
                        f"the request body did not arrive within {self.body_seconds:g} s",
                        headers={"Connection": "close"},
                    )(scope, receive, send)
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_bytes:
                    return await self._too_large(f"over {self.max_bytes} bytes")(scope, receive, send)
                if self.buffered + len(chunk) > self.budget_bytes:
                    return await error_response(
                        503,
                        "the server is receiving too many uploads at once; try again shortly",
                        headers={"Retry-After": "5", "Connection": "close"},
                    )(scope, receive, send)
                self.buffered += len(chunk)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        finally:
            self.buffered -= sum(len(c) for c in chunks)
        body, replayed = b"".join(chunks), False
        del chunks

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def is_loopback_host(host: str) -> bool:
    """Whether a ``Host`` header value (``name[:port]`` or ``[v6][:port]``) names this machine's loopback."""
    host = host.strip().lower()
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else ""
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.rstrip(".")
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class LoopbackHostOnly:
    """Refuse (400) HTTP requests whose Host header is not a loopback name: DNS-rebinding protection."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if not is_loopback_host(host):
                return await error_response(
                    400,
                    "this demo listens on loopback only and answers requests for localhost / 127.0.0.1 / [::1]; "
                    "to reach it from other machines start it with --host 0.0.0.0",
                )(scope, receive, send)
        await self.app(scope, receive, send)


#: The page (static/index.html) loads only its own script and style sheet; plots are same-origin PNGs or
#: blob: URLs of uploaded plots; the favicon is ``data:,``. Nothing may frame it.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: FastAPI's /docs and /redoc pages load Swagger UI / ReDoc from a CDN and start them with an inline script.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    "worker-src blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs", "/redoc", "/docs/oauth2-redirect")
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


class SecurityHeaders:
    """Add the CSP, ``nosniff``, ``X-Frame-Options`` and ``Referrer-Policy`` headers to every HTTP response."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        csp = (DOCS_CSP if scope.get("path") in DOCS_PATHS else PAGE_CSP).encode()

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-security-policy"]
                headers += [
                    (b"content-security-policy", csp),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def _netloc(host: str, scheme: str) -> str:
    """``host[:port]`` lower-cased, without the scheme's default port."""
    host = host.strip().lower().rstrip(".")
    default = {"http": ":80", "https": ":443"}.get(scheme, "")
    return host[: -len(default)] if default and host.endswith(default) else host


class SameOriginWrites:
    """Refuse (403) POST/PUT/PATCH/DELETE whose ``Origin`` is not this server's (or that a browser marks as
    cross-site with ``Sec-Fetch-Site``); requests without an ``Origin`` (curl, scripts) pass."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS:
            headers = dict(scope.get("headers") or [])
            origin = headers.get(b"origin", b"").decode("latin-1").strip()
            fetch_site = headers.get(b"sec-fetch-site", b"").decode("latin-1").strip().lower()
            host = headers.get(b"host", b"").decode("latin-1")
            refused = fetch_site in ("cross-site", "same-site")
            if origin:
                parts = urlsplit(origin) if origin != "null" else None
                refused = (
                    refused
                    or parts is None
                    or not parts.netloc
                    or (_netloc(parts.netloc, parts.scheme) != _netloc(host, parts.scheme))
                )
            if refused:
                return await error_response(
                    403,
                    f"cross-origin request refused: this demo answers {scope['method']} requests only from its own "
                    f"page (Origin {origin or fetch_site!r} is not http://{host})",
                )(scope, receive, send)
        await self.app(scope, receive, send)


def jsonable_errors(errors: Any) -> list[dict]:
    """Pydantic error dicts can hold exceptions and bytes; keep only what JSON can carry."""
    out = []
    for err in errors:
        out.append(
            {
                k: (v if isinstance(v, (str, int, float, bool, type(None), list, tuple)) else str(v))
                for k, v in err.items()
                if k in ("loc", "msg", "type")
            }
        )
    return out


def install_error_handlers(app: FastAPI) -> None:
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
        return JSONResponse(
            {"detail": "; ".join(parts) or "invalid request", "errors": jsonable_errors(exc.errors())}, 422
        )

    @app.exception_handler(UploadError)
    async def _upload(request: Request, exc: UploadError) -> JSONResponse:
        return error_response(exc.status, str(exc))

    @app.exception_handler(ModelError)
    async def _model(request: Request, exc: ModelError) -> JSONResponse:
        error_id = uuid.uuid4().hex[:8]
        log.error(
            "error %s: %s %s failed: %s", error_id, request.method, request.url.path, exc, exc_info=exc.__cause__ or exc
        )
        return error_response(
            500, f"the model failed on this request (error id {error_id}); the server log has the details", error_id
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        error_id = uuid.uuid4().hex[:8]
        log.error("error %s: %s %s failed", error_id, request.method, request.url.path, exc_info=exc)
        return error_response(500, f"internal error (error id {error_id}); the server log has the details", error_id)
