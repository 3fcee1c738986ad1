"""Asking an OpenAI-compatible chat endpoint, politely and durably.

The official ``openai`` (>= 1.0) ``AsyncOpenAI`` client talks to OpenAI or any compatible server
(vLLM, Ollama, llama.cpp, a gateway) through ``--base-url``. The key comes from an environment
variable (``OPENAI_API_KEY`` or the one ``--api-key-env`` names), never from the command line, and is
never printed. Requests run with temperature 0 (unless omitted) under a semaphore (``--concurrency``);
429s, 5xx, timeouts, dropped connections and 2xx replies that are no usable chat completion (an HTML
error page, broken JSON, ``{}``, no choices, ``content: null`` or not text, an empty or whitespace-only
reply, e.g. one cut at max tokens before any text) are retried with exponential backoff and full
jitter, waiting at least what ``Retry-After`` asks. ``--timeout`` bounds each whole request (a server
trickling bytes cannot hold one open longer). A request that still fails is reported as failed (with
the endpoint, the status and a short excerpt of the body), so the scorer leaves it out instead of
counting it wrong and the next run asks again. Every success is committed to the store before
returning. A 401/403/404 or a 400 (the model refuses this kind of input, e.g. an image sent to a
text-only model) stops the run: every other request would fail the same way; so does an error of any
status saying the input kind is not supported (llama-server without ``--mmproj`` answers 500), and a
run of connection failures (the endpoint is down: ``ChatClient.DOWN_AFTER_FAILURES``).
``--base-url`` may carry a query string (sent with every request, its values never written anywhere)
but no ``user:password@``; every error text written or printed is redacted (:func:`redact`).
Content sent as a list of parts (``[{"type": "text", "text": ...}]``, as some compatible servers do) is
read as its text parts joined; a list with no text part is a failed attempt. A malformed ``usage`` (a
count that is missing, null, negative or not a number) never stops the run: the tokens are unknown,
counted as 0, and the run log notes how many replies had no usable usage.
Reasoning models: ``max_completion_tokens`` replaces ``max_tokens``, and ``omit_temperature`` leaves
``temperature`` out of the request for models that refuse it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import random
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from ecgqa.evaluation.replies import valid_text
from llm_eval.store import Response, ResponseStore

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
PLACEHOLDER_KEY = "not-needed"  # local servers (vLLM, Ollama, llama.cpp) ignore the key


def safe_url(url: str | None) -> str | None:
    """The endpoint without any user:password part or query string (gateways sometimes carry keys there)."""
    if not url:
        return url
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # IPv6 literals keep their brackets
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True)
class Endpoint:
    """``--base-url`` taken apart: the URL the client is given, the query it sends with every request, and
    the values that must never be written anywhere (query values may be keys: ``?api-key=...``)."""

    base_url: str | None
    query: dict[str, str]
    secrets: tuple[str, ...]


def resolve_base_url(url: str | None) -> str | None:
    """``--base-url``, else ``OPENAI_BASE_URL`` (which the openai client would read by itself, unchecked)."""
    return url or os.environ.get("OPENAI_BASE_URL") or None


def parse_base_url(url: str | None) -> Endpoint:
    """Split ``--base-url``: a query string is sent as the client's ``default_query`` (appended to the URL as
    given, it would land in the middle of ``/chat/completions``' path). Credentials in the URL
    (``http://user:password@host/v1``) are refused: they would replace the API key as HTTP Basic auth and a
    URL ends up in shell history, process lists and logs; the key belongs in the environment."""
    if not url:
        return Endpoint(url, {}, ())
    from urllib.parse import parse_qsl, urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"--base-url {safe_url(url)!r}: expected http(s)://host[:port]/path, e.g. http://localhost:8000/v1"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"--base-url {safe_url(url)} carries a user name or password (user:password@host): refused, it "
            "would replace the API key and end up in logs. Put the key in OPENAI_API_KEY (or the variable "
            "--api-key-env names) and give the URL without credentials"
        )
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    secrets = tuple(v for v in query.values() if len(v) >= 4)
    return Endpoint(urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), query, secrets)


def api_key_from_env(env_name: str = DEFAULT_KEY_ENV, base_url: str | None = None) -> str:
    """The API key from the named environment variable (the name, not the key, is what users pass)."""
    if env_name.startswith("sk-") or len(env_name) > 64:
        raise ValueError("--api-key-env takes the NAME of an environment variable holding the key, not the key itself")
    key = os.environ.get(env_name)
    if key:
        return key
    if base_url:
        return PLACEHOLDER_KEY
    raise ValueError(f"no API key: set the environment variable {env_name} (or name another one with --api-key-env)")


class FatalEndpointError(RuntimeError):
    """The endpoint rejects every request (bad key, unknown model, wrong URL): the run stops."""


class RejectedInputError(FatalEndpointError):
    """HTTP 400: the server refuses this kind of input (e.g. an image for a text-only model): the run stops."""


class EndpointDownError(FatalEndpointError):
    """A run of connection failures (refused, unresolvable, reset) and no answer in between: the run stops."""


# A server that cannot take this kind of input, whatever the status it uses to say so (llama.cpp's
# llama-server without a multimodal projector answers HTTP 500 "image input is not supported - hint: ...
# mmproj"): permanent for the run, like a 400.
_CAPABILITY_REFUSAL = re.compile(
    r"(image|vision|multimodal|audio)[^.\n]{0,40}\bnot (supported|enabled)|"
    r"\bnot support[a-z]* [^.\n]{0,20}(image|vision|multimodal)|\bmmproj\b",
    re.IGNORECASE,
)


def capability_refusal(text: str) -> bool:
    """Whether an error body says the model or server cannot take this kind of input at all."""
    return bool(_CAPABILITY_REFUSAL.search(text))


class BadResponse(Exception):
    """A 2xx reply that is not a usable chat completion (an HTML page, broken JSON, no choices, no content).

    Treated like a 5xx: retried with backoff, then recorded as failed, never stored or scored.
    """

    def __init__(self, endpoint: str, status: int, what: str, body: str):
        self.status_code = status
        excerpt = " ".join(body.split())[:200]
        super().__init__(f"{endpoint} answered HTTP {status} with {what}; body starts: {excerpt!r}")


def read_completion(raw: Any, endpoint: str) -> Response:
    """The reply in a raw ``with_raw_response`` result, or :class:`BadResponse` saying what was wrong."""
    from openai.types.chat import ChatCompletion

    status = int(raw.status_code)
    try:
        completion = raw.parse()
    except ValueError as e:  # json.JSONDecodeError and pydantic's ValidationError are ValueErrors
        raise BadResponse(
            endpoint, status, f"a body that is not a chat completion ({type(e).__name__})", raw.text
        ) from None
    if not isinstance(completion, ChatCompletion):
        raise BadResponse(endpoint, status, "a non-JSON body", raw.text)
    if not completion.choices:
        raise BadResponse(endpoint, status, "no choices", raw.text)
    choice = completion.choices[0]
    message = getattr(choice, "message", None)
    content = getattr(message, "content", None)
    if content is None:
        raise BadResponse(endpoint, status, "a choice without message content", raw.text)
    if isinstance(content, list):
        # Some OpenAI-compatible servers send content as a list of parts: the text parts, joined, are the reply.
        texts = [
            p.get("text") if isinstance(p, dict) else getattr(p, "text", None)
            for p in content
            if (p.get("type") if isinstance(p, dict) else getattr(p, "type", None)) == "text"
        ]
        texts = [t for t in texts if isinstance(t, str)]
        if not texts:
            raise BadResponse(endpoint, status, "message content parts with no text part", raw.text)
        content = "".join(texts)
    if not isinstance(content, str):
        raise BadResponse(endpoint, status, f"message content that is not text ({type(content).__name__})", raw.text)
    content = valid_text(content)  # a lone surrogate escape would fail the store's commit of the whole group
    finish_reason = choice.finish_reason if isinstance(choice.finish_reason, str) else None
    if not content.strip():
        if finish_reason == "length":
            raise BadResponse(
                endpoint,
                status,
                "a reply cut at max tokens before any text (finish_reason "
                "'length'): raise --max-tokens / --max-completion-tokens",
                raw.text,
            )
        raise BadResponse(endpoint, status, "an empty (whitespace-only) reply", raw.text)
    usage = completion.usage
    prompt_tokens = _token_count(getattr(usage, "prompt_tokens", None))
    completion_tokens = _token_count(getattr(usage, "completion_tokens", None))
    return Response(
        reply=content,
        prompt_tokens=prompt_tokens or 0,
        completion_tokens=completion_tokens or 0,
        response_model=completion.model if isinstance(completion.model, str) else None,
        finish_reason=finish_reason,
        usage_known=prompt_tokens is not None and completion_tokens is not None,
    )


def _token_count(value: Any) -> int | None:
    """A usage count as the endpoint reported it, or None when missing or unusable (not a whole number >= 0)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and value >= 0 else None


_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-]{2})[A-Za-z0-9_\-*]{6,}")
_AUTH_TOKEN = re.compile(r"\b(Basic|Bearer)(\s+|%20)[A-Za-z0-9+/=._~\-]{4,}", re.IGNORECASE)
_USERINFO = re.compile(r"(?<=://)[^/\s@'\"<>]+@")
_QUERY_VALUE = re.compile(r"([?&][^=\s&#'\"<>]+=)[^\s&#'\"<>]+")


def mask_secrets(text: str, secrets: tuple[str | None, ...]) -> str:
    """``text`` with each of these exact values (the key, query values of --base-url) replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4 and secret != PLACEHOLDER_KEY:
            text = text.replace(secret, "***")
    return text


def redact(text: str, key: str | None = None, secrets: tuple[str, ...] = ()) -> str:
    """Text safe to store and print: the key and the given secrets, anything shaped like a key, Basic and
    Bearer tokens, ``user:password@`` in URLs and the values of URL query strings, masked."""
    text = mask_secrets(text, (key, *secrets))
    text = _AUTH_TOKEN.sub(r"\1 ***", text)
    text = _USERINFO.sub("***@", text)
    text = _QUERY_VALUE.sub(r"\1***", text)
    return _KEYLIKE.sub(r"\1***", text)


@dataclass
class Outcome:
    """The result of one prompt: a response, or the error that remained after all retries."""

    prompt_hash: str
    response: Response | None = None
    error: str | None = None
    attempts: int = 0
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.response is not None


def _retry_after(exc: Exception) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP date."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            continue
        if when.tzinfo is not None:
            return max(0.0, when.timestamp() - time.time())
    return None


# Request and lock timeouts are retried with 429 and 5xx, as the openai client itself would.
_RETRY_STATUS = (408, 409)


def _retryable(exc: Exception) -> bool:
    import openai

    if isinstance(exc, (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError)):
        return True  # APIConnectionError covers timeouts and dropped connections
    return getattr(exc, "status_code", None) in _RETRY_STATUS


class RequestDeadline(Exception):
    """No complete reply within ``--timeout`` seconds (the whole request, however slowly bytes arrive)."""

    def __init__(self, endpoint: str, timeout: float):
        super().__init__(f"{endpoint} sent no complete reply within --timeout {timeout:g} s")


def check_request_options(
    *,
    concurrency: int = 8,
    timeout: float = 60.0,
    max_retries: int = 6,
    max_tokens: int | None = None,
    max_completion_tokens: int | None = None,
    price_in: float | None = None,
    price_out: float | None = None,
) -> None:
    """Refuse option values that would send nothing, wait for ever, send no cap unasked or write invalid JSON."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"--concurrency must be a whole number of at least 1, not {concurrency}")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"--max-retries must be a whole number of at least 0 (0: one attempt), not {max_retries}")
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"--timeout must be a number of seconds above 0, not {timeout}")
    for name, value in (("--max-tokens", max_tokens), ("--max-completion-tokens", max_completion_tokens)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a whole number of at least 1 (or left out), not {value}")
    for name, value in (("--price-in", price_in), ("--price-out", price_out)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite price of at least 0 per 1M tokens, not {value}")


class ChatClient:
    """Bounded-concurrency chat completions with retries, writing through to a ResponseStore."""

    #: The endpoint is taken for down after this many connection failures in a row spanning this many seconds.
    DOWN_AFTER_FAILURES = 10
    DOWN_AFTER_S = 5.0

    def __init__(
        self,
        model: str,
        store: ResponseStore,
        base_url: str | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        max_tokens: int | None = 256,
        max_completion_tokens: int | None = None,
        omit_temperature: bool = False,
        input_name: str = "classifier",
        expand: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
        seed: int | None = None,
    ):
        from openai import AsyncOpenAI

        check_request_options(
            concurrency=concurrency,
            timeout=timeout,
            max_retries=max_retries,
            max_tokens=max_tokens,
            max_completion_tokens=max_completion_tokens,
        )
        self.model = model
        self.store = store
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_tokens = max_tokens
        self.max_completion_tokens = max_completion_tokens
        self.omit_temperature = omit_temperature
        self.input_name = input_name
        self.expand = expand  # prompt as stored (images by hash) → as sent (images as data URLs)
        base_url = resolve_base_url(base_url)
        endpoint = parse_base_url(base_url)
        self.endpoint = safe_url(base_url) or "https://api.openai.com/v1"
        self._rng = random.Random(seed)
        self._key = api_key or api_key_from_env(base_url=base_url)
        self._secrets = endpoint.secrets
        # The client's own retries are off: ours honour Retry-After and record every attempt. Its timeout
        # bounds each read; ours (asyncio.wait_for in _ask) bounds the whole request.
        self._client = AsyncOpenAI(
            base_url=endpoint.base_url,
            api_key=self._key,
            timeout=self.timeout,
            max_retries=0,
            default_query=endpoint.query or None,
        )
        self.requests_sent = 0
        self.usage_unknown = 0  # replies whose usage was missing or malformed (tokens unknown, counted as 0)
        self._down_since: float | None = None  # start of the current run of connection failures
        self._down_count = 0

    def redact(self, text: str) -> str:
        return redact(text, self._key, self._secrets)

    def _delay(self, attempt: int, exc: Exception) -> float:
        backoff = min(self.backoff_max, self.backoff_base * 2**attempt) * self._rng.random()  # full jitter
        hint = _retry_after(exc)
        return max(backoff, hint) if hint is not None else backoff

    def _request_args(self) -> dict[str, Any]:
        """Sampling options as sent: temperature 0 unless omitted (reasoning models refuse it)."""
        kwargs: dict[str, Any] = {} if self.omit_temperature else {"temperature": 0}
        if self.max_completion_tokens:
            kwargs["max_completion_tokens"] = self.max_completion_tokens
        elif self.max_tokens:
            kwargs["max_tokens"] = self.max_tokens
        return kwargs

    def _contact(self) -> None:
        """The server answered (whatever it said): the endpoint is up."""
        self._down_since, self._down_count = None, 0

    def _connection_failed(self, e: Exception) -> None:
        """One more connection failure; a run of them with no answer in between stops the run."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        self._down_count += 1
        if self._down_count >= self.DOWN_AFTER_FAILURES and now - self._down_since >= self.DOWN_AFTER_S:
            cause = e.__cause__ or e.__context__ or e
            raise EndpointDownError(
                f"the endpoint {self.endpoint} is down: {self._down_count} connection attempts in a row failed over "
                f"{now - self._down_since:.0f} s ({self.redact(str(cause) or type(cause).__name__)[:200]}); nothing "
                "more is sent. Every reply already received is kept: start the server (or check --base-url) and "
                "re-run the same command"
            ) from None

    async def _ask(self, prompt_hash: str, messages: list[dict[str, Any]]) -> Outcome:
        import openai

        outcome = Outcome(prompt_hash)
        for attempt in range(self.max_retries + 1):
            outcome.attempts = attempt + 1
            try:
                self.requests_sent += 1
                try:
                    # The whole request under one deadline: the client's own timeout is per read, so a
                    # server trickling bytes would keep a request alive for ever.
                    raw = await asyncio.wait_for(
                        self._client.chat.completions.with_raw_response.create(
                            model=self.model,
                            messages=self.expand(messages) if self.expand else messages,
                            **self._request_args(),
                        ),
                        self.timeout,
                    )
                except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                    raise RequestDeadline(self.endpoint, self.timeout) from None
                self._contact()
                response = read_completion(raw, self.endpoint)
                if not response.usage_known:
                    self.usage_unknown += 1  # noted in the run log; the tokens count as 0
                masked = mask_secrets(response.reply, (self._key, *self._secrets))
                if masked != response.reply:
                    # A server echoing the request must not carry a key into the store and the transcripts.
                    response = dataclasses.replace(response, reply=masked)
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
                # Every other request would fail the same way: stop now instead of recording thousands of failures.
                raise FatalEndpointError(
                    f"the endpoint refused the request ({e.status_code} {type(e).__name__}): "
                    + (
                        "check the API key in the environment variable you named (the key is not shown)"
                        if e.status_code in (401, 403)
                        else f"check --model {self.model!r} and --base-url"
                    )
                    + f"; server said: {self.redact(str(e))}"
                ) from None
            except openai.BadRequestError as e:
                # 400: this input is refused (e.g. an image sent to a text-only model); the next prompt would be too.
                raise RejectedInputError(
                    f"{self.endpoint} refused model {self.model!r} the input {self.input_name!r} "
                    f"(HTTP 400): {self.redact(str(e))[:300]}"
                ) from None
            except openai.APIStatusError as e:
                self._contact()
                if capability_refusal(str(e)):
                    # A server that cannot take this input at all (llama-server without --mmproj answers 500):
                    # every prompt would be refused the same way, retrying only wastes minutes per question.
                    raise RejectedInputError(
                        f"{self.endpoint} cannot take the input {self.input_name!r} for model {self.model!r} "
                        f"(HTTP {e.status_code}: {self.redact(str(e))[:200]}); nothing more is sent. Use a model "
                        "and server that read this input (llama-server: start it with --mmproj for images) or "
                        "another --input"
                    ) from None
                if not self._failed(outcome, e, attempt):
                    break
                await asyncio.sleep(self._delay(attempt, e))
            except (openai.APIConnectionError, RequestDeadline) as e:
                if not isinstance(e, (openai.APITimeoutError, RequestDeadline)):
                    self._connection_failed(e)
                if not self._failed(outcome, e, attempt):
                    break
                await asyncio.sleep(self._delay(attempt, e))
            except (openai.APIError, BadResponse) as e:
                if not self._failed(outcome, e, attempt):
                    break
                await asyncio.sleep(self._delay(attempt, e))
            else:
                outcome.response = response
                outcome.error = None
                # Committed (fsync'd, on the writer thread so the event loop keeps going) before it counts as
                # done or anyone scores it: a crash after this line loses nothing.
                await self._commit(prompt_hash, messages, outcome.response)
                break
        return outcome

    def _failed(self, outcome: Outcome, e: Exception, attempt: int) -> bool:
        """Record a failed attempt; True when it is worth another (retryable and retries left)."""
        status = getattr(e, "status_code", None)
        outcome.error = self.redact(f"{type(e).__name__}{f' {status}' if status else ''}: {e}")
        retry = isinstance(e, (BadResponse, RequestDeadline)) or _retryable(e)  # 422...: retrying will not help
        return retry and attempt < self.max_retries

    async def _commit(self, prompt_hash: str, messages: list[dict[str, Any]], response: Response) -> None:
        """Return once this reply is committed. Replies that arrive while a commit is on disk wait for the
        next one and share it (group commit: one transaction, one fsync): at 128 requests in flight one
        fsync per reply was the ceiling (benchmarks/llm_scale.py)."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._pending.append((prompt_hash, messages, response, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        await done

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await loop.run_in_executor(
                    self._writer, self.store.put_many, self.model, [(h, m, r) for h, m, r, _ in batch]
                )
            except BaseException as e:  # every waiter of this transaction gets the error
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                if isinstance(e, asyncio.CancelledError):
                    raise
            else:
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_result(None)

    async def run(
        self,
        prompts: dict[str, list[dict[str, Any]]],
        on_done: Callable[[Outcome], None] | None = None,
    ) -> dict[str, Outcome]:
        """Answer every prompt (hash → messages) not already in the store."""
        out: dict[str, Outcome] = {}
        todo = {}
        for h, messages in prompts.items():
            cached = self.store.get(self.model, h)
            if cached is not None:
                out[h] = Outcome(h, cached, cached=True)
            else:
                todo[h] = messages
        sem = asyncio.Semaphore(self.concurrency)

        stop: list[FatalEndpointError] = []

        async def one(h: str, messages: list[dict[str, Any]]) -> None:
            async with sem:
                if stop:  # the endpoint refused a request for good: send nothing more
                    return
                try:
                    result = await self._ask(h, messages)
                except FatalEndpointError as e:
                    stop.append(e)
                    raise
            out[h] = result
            if on_done is not None:
                on_done(result)

        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-eval-store")
        self._pending: list[tuple[str, list[dict[str, Any]], Response, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        try:
            await asyncio.gather(*(one(h, m) for h, m in todo.items()))
        finally:
            self._writer.shutdown(wait=True)
            await self._client.close()
        return out


def ask_all(client: ChatClient, prompts: dict[str, list[dict[str, Any]]], progress: bool = True) -> dict[str, Outcome]:
    """Synchronous wrapper with a progress bar over the prompts that need a request."""
    from tqdm.auto import tqdm

    n_todo = sum(1 for h in prompts if not client.store.has(client.model, h))
    bar = tqdm(
        total=n_todo, desc=f"asking {client.model}", unit="q", disable=not progress or n_todo == 0, file=sys.stderr
    )

    def on_done(o: Outcome) -> None:
        bar.update(1)
        if not o.ok:
            bar.set_postfix_str(f"failed: {o.error[:60] if o.error else ''}")

    try:
        return asyncio.run(client.run(prompts, on_done))
    finally:
        bar.close()
