"""Running the app under uvicorn with timeouts that slow or idle clients cannot outwait.

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive`` but has no deadline for
a request's headers: a fresh connection that never sends a byte, or one trickling a header line
every few seconds, stays open forever (RELIABILITY-PROBE S15: 300 of 300 still open after 70 s).
:func:`protocol_with_header_deadline` adds that deadline to uvicorn's h11 protocol; the body
deadline and the memory budget for bodies are in ``middleware.BodyLimit``; ``limit_concurrency``
caps connections plus running requests (503 beyond it).
"""

from __future__ import annotations

import asyncio
import ctypes
import sys
from typing import Any

HEADER_SECONDS = 10.0  # from connection (or the end of the previous response) to complete request headers
KEEP_ALIVE_SECONDS = 15  # above common clients' 5 s pool expiry, so the client closes first (S20)
LIMIT_CONCURRENCY = 256
MAX_INCOMPLETE_EVENT = 16 * 1024  # bytes of unfinished request line + headers h11 buffers


def protocol_with_header_deadline(header_seconds: float = HEADER_SECONDS) -> type:
    """uvicorn's h11 protocol, closing connections whose request headers take over ``header_seconds``."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineH11(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_seconds, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            waiting_for_headers = self.cycle is None or self.cycle.response_complete
            if waiting_for_headers and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before:  # a request's headers are complete
                self._disarm()

        def on_response_complete(self) -> None:
            self._arm()  # the next request's headers get the same deadline (pipelined ones disarm it)
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadlineH11


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each new thread its own malloc arena (up to 8 per core), which keeps freed memory
    as resident high-water: cap them (Linux/glibc only; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def run_server(
    app: Any,
    host: str,
    port: int,
    *,
    quiet: bool = False,
    header_seconds: float = HEADER_SECONDS,
    keep_alive: int = KEEP_ALIVE_SECONDS,
    limit_concurrency: int = LIMIT_CONCURRENCY,
) -> None:
    import uvicorn

    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning" if quiet else "info",
        http=protocol_with_header_deadline(header_seconds),
        timeout_keep_alive=keep_alive,
        limit_concurrency=limit_concurrency,
        h11_max_incomplete_event_size=MAX_INCOMPLETE_EVENT,
    )
