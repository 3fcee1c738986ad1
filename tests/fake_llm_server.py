"""A real OpenAI-compatible chat server for the LLM-harness tests and benchmark (FastAPI + uvicorn).

``POST /v1/chat/completions`` answers deterministically from the prompt's ``Options:`` line: the
reply is the option(s) picked by a hash of the prompt, with usage counts (whitespace tokens). It can
be told, through ``/control`` or attributes of :class:`FakeLLM`, to

- return scripted faults to the next requests: ``"429"`` (with ``Retry-After``), ``"408"``, ``"409"``,
  ``"500"``, ``"401"``,
  ``"hang"`` (never answer; the handler ends when the client gives up and disconnects),
  ``"nomatch"`` (a reply matching no option),
  broken 200s: ``"html"`` (a proxy's error page), ``"badjson"``, ``"empty"`` (``{}``), ``"nochoices"``
  (``choices: []``), ``"nullcontent"`` (``content: null``), ``"intcontent"`` (``content: 42``),
  ``"notext"`` (content parts with no text part), ``"blank"`` (a whitespace-only reply), ``"cutoff"``
  (``content: ""`` with ``finish_reason: "length"``), and ``"400"`` (an input the model refuses);
- answer well but oddly: ``"listcontent"`` (content as a list of text parts) and ``"badusage"``
  (``usage`` with a negative and a non-numeric count), also for every request (``list_content``,
  ``bad_usage``);
- refuse (400) every request carrying an image (``reject_images``: a text-only model), or answer it HTTP
  500 as llama-server without a multimodal projector does (``images_unsupported_500``);
- ``"trickle"``: answer well, but trickle the body one whitespace byte every ``trickle_every`` seconds for
  ``trickle_s`` seconds first (each read is quick, the whole request slow);
- ``"echo"``: a 500 whose message echoes the request line (query string included) and its
  ``Authorization`` header, as some proxies do;
- always fail (500) or always reply off-option for prompts containing a substring;
- answer only the first ``answer_limit`` requests and hang all later ones (to kill a client mid-run
  at a deterministic point);
- wait ``latency`` seconds per request (asyncio, so concurrent requests overlap).

It counts requests received and answered, records each request's bearer token, and keeps what
arrived (:attr:`FakeLLM.seen`: the text, the sampling options and, per image part, the decoded PNG's
size), so tests can check what a run really sent.
Run it alone with ``python tests/fake_llm_server.py --latency 0.05`` (prints its URL).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

OPTIONS_PREFIX = "Options: "
OPTION_SEPARATOR = "; "


PAPER_INSTRUCTION = "Only answer based on the given Options without any explanation."
PAPER_OPTION_SEPARATOR = ", "  # the ECG-QA paper's prompt (``--prompt paper``): ", "-separated options


def options_in(prompt: str) -> list[str]:
    separator = PAPER_OPTION_SEPARATOR if prompt.rstrip().endswith(PAPER_INSTRUCTION) else OPTION_SEPARATOR
    for line in prompt.splitlines():
        if line.startswith(OPTIONS_PREFIX):
            return line[len(OPTIONS_PREFIX) :].split(separator)
    return []


def png_size(data_url: str) -> tuple[int, int] | None:
    """(width, height) of a ``data:image/png;base64,...`` URL's image (its IHDR chunk), None if not a PNG."""
    prefix = "data:image/png;base64,"
    if not data_url.startswith(prefix):
        return None
    data = base64.b64decode(data_url[len(prefix) :], validate=True)
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def split_content(content: Any) -> tuple[str, list[dict[str, Any]]]:
    """A message's text (parts joined) and its image parts, for string or list-of-parts content."""
    if isinstance(content, str):
        return content, []
    texts, images = [], []
    for part in content or []:
        if part.get("type") == "text":
            texts.append(part.get("text", ""))
        elif part.get("type") == "image_url":
            url = part.get("image_url", {}).get("url", "")
            images.append({"size": png_size(url), "detail": part.get("image_url", {}).get("detail"), "bytes": len(url)})
    return "\n".join(texts), images


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
    reject_images: bool = False
    list_content: bool = False
    bad_usage: bool = False
    images_unsupported_500: bool = False
    trickle_s: float = 8.0
    trickle_every: float = 0.2
    lone_surrogate: bool = False  # every reply ends in a lone surrogate escape ("\\ud83d": an emoji cut in half)
    seen: list = field(default_factory=list)
    received: int = 0
    answered: int = 0
    faulted: Counter = field(default_factory=Counter)
    answered_prompts: Counter = field(default_factory=Counter)
    tokens_seen: set = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "received": self.received,
                "answered": self.answered,
                "faulted": dict(self.faulted),
                "distinct_answered": len(self.answered_prompts),
                "max_answers_per_prompt": max(self.answered_prompts.values(), default=0),
            }


def create_app(state: FakeLLM) -> FastAPI:
    app = FastAPI()

    async def hang(request: Request) -> JSONResponse:
        while not await request.is_disconnected():
            await asyncio.sleep(0.02)
        return JSONResponse({"error": "client went away"}, status_code=499)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        parts = [split_content(m.get("content", "")) for m in body.get("messages", [])]
        prompt = "\n".join(text for text, _ in parts)
        images = [img for _, imgs in parts for img in imgs]
        auth = request.headers.get("authorization", "")
        with state.lock:
            state.seen.append(
                {
                    "text": prompt,
                    "images": images,
                    "options": {k: v for k, v in body.items() if k not in ("messages", "model")},
                    "query": str(request.url.query),
                    "authorization": auth,
                }
            )
            state.received += 1
            state.tokens_seen.add(auth.removeprefix("Bearer "))
            fault = state.faults.pop(0) if state.faults else None
            over_limit = state.answer_limit is not None and state.answered >= state.answer_limit
            if fault:
                state.faulted[fault] += 1
        if over_limit:
            return await hang(request)
        if fault == "429":
            return JSONResponse(
                {"error": {"message": "rate limited", "type": "rate_limit"}},
                status_code=429,
                headers={"retry-after": str(state.retry_after)},
            )
        if fault == "401":  # like OpenAI, echo the key back: the harness must not store or print it
            return JSONResponse(
                {
                    "error": {
                        "message": f"Incorrect API key provided: {auth.removeprefix('Bearer ')}",
                        "type": "invalid_request_error",
                    }
                },
                status_code=401,
            )
        if fault in ("408", "409"):  # request / lock timeout: worth retrying
            return JSONResponse({"error": {"message": "request timed out", "type": "timeout"}}, status_code=int(fault))
        if fault == "500" or (state.fail_substring and state.fail_substring in prompt):
            return JSONResponse({"error": {"message": "internal error", "type": "server_error"}}, status_code=500)
        if fault == "hang":
            return await hang(request)
        if fault == "echo":
            return JSONResponse(
                {"error": {"message": f"cannot serve POST {request.url} (Authorization: {auth})", "type": "proxy"}},
                status_code=500,
            )
        if state.images_unsupported_500 and images:  # llama-server's words without --mmproj
            return JSONResponse(
                {
                    "error": {
                        "code": 500,
                        "message": "image input is not supported - hint: if this is unexpected, you may need to "
                        "provide the mmproj",
                        "type": "server_error",
                    }
                },
                status_code=500,
            )
        if fault == "400" or (state.reject_images and images):
            return JSONResponse(
                {"error": {"message": "this model does not support image input", "type": "invalid_request_error"}},
                status_code=400,
            )
        broken = {
            "html": ("<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"),
            "badjson": ('{"id": "x", "choices": [', "application/json"),
            "empty": ("{}", "application/json"),
            "nochoices": (
                '{"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []}',
                "application/json",
            ),
            "nullcontent": (
                json.dumps(
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": "m",
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": None}, "finish_reason": "stop"}
                        ],
                    }
                ),
                "application/json",
            ),
        }
        odd_content = {
            "intcontent": (42, "stop"),
            "notext": ([{"type": "image_url", "image_url": {"url": "x"}}], "stop"),
            "blank": ("   \n ", "stop"),
            "cutoff": ("", "length"),
        }
        if fault in odd_content:
            content, finish = odd_content[fault]
            broken[fault] = (
                json.dumps(
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": "m",
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
                        ],
                    }
                ),
                "application/json",
            )
        if fault in broken:
            body_text, media_type = broken[fault]
            return Response(body_text, status_code=200, media_type=media_type)
        if state.latency:
            await asyncio.sleep(state.latency)
        nomatch = fault == "nomatch" or (state.nomatch_substring and state.nomatch_substring in prompt)
        reply = "I am not able to answer that." if nomatch else deterministic_answer(prompt)
        with state.lock:
            state.answered += 1
            state.answered_prompts[
                hashlib.sha256(json.dumps(body.get("messages"), sort_keys=True).encode()).hexdigest()
            ] += 1
        p_tok, c_tok = len(prompt.split()), len(reply.split())
        usage: Any = {"prompt_tokens": p_tok, "completion_tokens": c_tok, "total_tokens": p_tok + c_tok}
        if fault == "badusage" or state.bad_usage:  # a good reply with usage no count can be read from
            usage = {"prompt_tokens": -5, "completion_tokens": "x", "total_tokens": None}
        content: Any = reply
        if fault == "listcontent" or state.list_content:  # content as a list of parts (text split in two)
            content = [{"type": "text", "text": reply[:1]}, {"type": "text", "text": reply[1:]}]
        payload = {
            "id": f"chatcmpl-{state.answered}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": usage,
        }
        if fault == "trickle":
            body_bytes = json.dumps(payload).encode()

            async def trickle():
                end = time.monotonic() + state.trickle_s
                while time.monotonic() < end:
                    yield b" "  # leading whitespace: still valid JSON, and every read gets a byte in time
                    await asyncio.sleep(state.trickle_every)
                yield body_bytes

            return StreamingResponse(trickle(), status_code=200, media_type="application/json")
        if state.lone_surrogate:  # valid JSON (ASCII escapes), but the decoded text holds no valid UTF-8 form
            payload["choices"][0]["message"]["content"] = f"{reply} \ud83d"
            return Response(json.dumps(payload, ensure_ascii=True), status_code=200, media_type="application/json")
        return JSONResponse(payload)

    @app.post("/control")
    async def control(request: Request) -> dict[str, Any]:
        body = await request.json()
        with state.lock:
            for k, v in body.items():
                if k in (
                    "latency",
                    "retry_after",
                    "faults",
                    "fail_substring",
                    "nomatch_substring",
                    "answer_limit",
                    "reject_images",
                    "list_content",
                    "bad_usage",
                    "images_unsupported_500",
                    "trickle_s",
                    "trickle_every",
                ):
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
        config = uvicorn.Config(
            create_app(self.state),
            log_level="warning",
            timeout_graceful_shutdown=1,
            limit_concurrency=1000,
            backlog=2048,
        )
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
