"""A real OpenAI-compatible chat server for the LLM-harness tests and benchmark (FastAPI + uvicorn).

``POST /v1/chat/completions`` answers deterministically from the prompt's ``Options:`` line: the
reply is the option(s) picked by a hash of the prompt, with usage counts (whitespace tokens). It can
be told, through ``/control`` or attributes of :class:`FakeLLM`, to

- return scripted faults to the next requests: ``"429"`` (with ``Retry-After``), ``"408"``, ``"409"``,
  ``"500"``, ``"401"``,
  ``"hang"`` (never answer; the handler ends when the client gives up and disconnects),
  ``"nomatch"`` (a reply matching no option);
- always fail (500) or always reply off-option for prompts containing a substring;
- answer only the first ``answer_limit`` requests and hang all later ones (to kill a client mid-run
  at a deterministic point);
- wait ``latency`` seconds per request (asyncio, so concurrent requests overlap).

It counts requests received and answered, and records each request's bearer token.
Run it alone with ``python tests/fake_llm_server.py --latency 0.05`` (prints its URL).
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

OPTIONS_PREFIX = "Options: "
OPTION_SEPARATOR = "; "


def options_in(prompt: str) -> list[str]:
    for line in prompt.splitlines():
        if line.startswith(OPTIONS_PREFIX):
            return line[len(OPTIONS_PREFIX) :].split(OPTION_SEPARATOR)
    return []


def deterministic_answer(prompt: str) -> str:
    """One option (or, for multi-answer questions, sometimes two) chosen by the prompt's hash."""
    options = options_in(prompt)
    if not options:
        return "I cannot tell."
    h = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
    first = options[h % len(options)]
    if "None" in options and len(options) > 3 and (h >> 8) % 3 == 0:
        second = options[(h >> 16) % len(options)]
        if second not in (first, "None") and first != "None":
            return f"{first}; {second}"
    return first


@dataclass
class FakeLLM:
    latency: float = 0.0
    retry_after: float = 0.05
    faults: list[str] = field(default_factory=list)
    fail_substring: str | None = None
    nomatch_substring: str | None = None
    answer_limit: int | None = None
    received: int = 0
    answered: int = 0
    faulted: Counter = field(default_factory=Counter)
    answered_prompts: Counter = field(default_factory=Counter)
    tokens_seen: set = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"received": self.received, "answered": self.answered, "faulted": dict(self.faulted),
                    "distinct_answered": len(self.answered_prompts),
                    "max_answers_per_prompt": max(self.answered_prompts.values(), default=0)}


def create_app(state: FakeLLM) -> FastAPI:
    app = FastAPI()

    async def hang(request: Request) -> JSONResponse:
        while not await request.is_disconnected():
            await asyncio.sleep(0.02)
        return JSONResponse({"error": "client went away"}, status_code=499)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        prompt = "\n".join(m.get("content", "") for m in body.get("messages", []))
        auth = request.headers.get("authorization", "")
        with state.lock:
            state.received += 1
            state.tokens_seen.add(auth.removeprefix("Bearer "))
            fault = state.faults.pop(0) if state.faults else None
            over_limit = state.answer_limit is not None and state.answered >= state.answer_limit
            if fault:
                state.faulted[fault] += 1
        if over_limit:
            return await hang(request)
        if fault == "429":
            return JSONResponse({"error": {"message": "rate limited", "type": "rate_limit"}}, status_code=429,
                                headers={"retry-after": str(state.retry_after)})
        if fault == "401":  # like OpenAI, echo the key back: the harness must not store or print it
            return JSONResponse({"error": {"message": f"Incorrect API key provided: {auth.removeprefix('Bearer ')}",
                                           "type": "invalid_request_error"}}, status_code=401)
        if fault in ("408", "409"):  # request / lock timeout: worth retrying
            return JSONResponse({"error": {"message": "request timed out", "type": "timeout"}}, status_code=int(fault))
        if fault == "500" or (state.fail_substring and state.fail_substring in prompt):
            return JSONResponse({"error": {"message": "internal error", "type": "server_error"}}, status_code=500)
        if fault == "hang":
            return await hang(request)
        if state.latency:
            await asyncio.sleep(state.latency)
        nomatch = fault == "nomatch" or (state.nomatch_substring and state.nomatch_substring in prompt)
        reply = "I am not able to answer that." if nomatch else deterministic_answer(prompt)
        with state.lock:
            state.answered += 1
            state.answered_prompts[hashlib.sha256(prompt.encode()).hexdigest()] += 1
        p_tok, c_tok = len(prompt.split()), len(reply.split())
        return JSONResponse({
            "id": f"chatcmpl-{state.answered}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": p_tok, "completion_tokens": c_tok, "total_tokens": p_tok + c_tok},
        })

    @app.post("/control")
    async def control(request: Request) -> dict[str, Any]:
        body = await request.json()
        with state.lock:
            for k, v in body.items():
                if k in ("latency", "retry_after", "faults", "fail_substring", "nomatch_substring", "answer_limit"):
                    setattr(state, k, v)
        return state.stats()

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return state.stats()

    return app


class FakeServer:
    """The app on 127.0.0.1 at a random free port, served from a daemon thread."""

    def __init__(self, state: FakeLLM | None = None):
        self.state = state or FakeLLM()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit this: without it the headers/body split of each response waits
        # out the client's delayed ACK (~40 ms per request), which would swamp the benchmark's latency.
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(create_app(self.state), log_level="warning", timeout_graceful_shutdown=1,
                                limit_concurrency=1000, backlog=2048)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeServer:
        self._thread.start()
        deadline = time.time() + 20
        while not self._server.started:
            if time.time() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake LLM server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._sock.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    with FakeServer(FakeLLM(latency=args.latency)) as server:
        print(server.url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
