"""A streaming client for vLLM's OpenAI-compatible API.

Errors, all carrying whatever reply text had already arrived (``partial``)::

    LLMError
     ├── LLMUnavailable    cannot connect, 5xx after retries, or the circuit is open
     ├── LLMTimeout        no byte for ``read_timeout`` seconds (before or during the stream)
     ├── ContextTooLong    vLLM's 400 for a prompt longer than the context
     ├── BadResponse       a malformed chunk, an in-band error, an unexpected 4xx
     │    └── ModelNotFound   the configured model is not served
     └── TruncatedStream   the stream was cut or closed without a finish_reason

Retries happen only before the response starts (refused connection, 5xx), never after a token
reached the user. Closing the HTTP response is what makes vLLM abort a generation, so the
stream is always closed in a ``finally`` — cancelling the task that awaits ``stream_chat``
aborts the request on the server.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_aiohttp import AiohttpTransport

from bot.config import LLMConfig


class LLMError(Exception):
    """The model server did not produce a complete reply."""

    kind = "error"

    def __init__(self, message: str, *, partial: str = "", attempts: int = 1) -> None:
        super().__init__(message)
        self.partial = partial
        self.attempts = attempts


class LLMUnavailable(LLMError):
    kind = "unavailable"


class LLMTimeout(LLMError):
    kind = "timeout"


class ContextTooLong(LLMError):
    kind = "context_too_long"


class BadResponse(LLMError):
    kind = "bad_response"


class ModelNotFound(BadResponse):
    kind = "model_not_found"


class TruncatedStream(LLMError):
    kind = "truncated"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    max_model_len: int | None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float = 0.7
    top_p: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": self.messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
            **self.extra,
        }


@dataclass(slots=True)
class Completion:
    text: str
    finish_reason: str
    reasoning: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    first_token_s: float | None = None  # from sending the request
    duration_s: float = 0.0
    attempts: int = 1


# vLLM (uvicorn) drops idle connections after 5 s; the client lets them go first, so a reused
# connection is never one the server is closing.
_LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=32, keepalive_expiry=4.0)


def make_http_client(config: LLMConfig, **kwargs: Any) -> httpx.AsyncClient:
    """httpx's client over aiohttp's HTTP stack (``httpx-aiohttp``).

    httpx's own transport (httpcore + h11) handles each streamed chunk in several layers of
    async generators; aiohttp's C parser hands over whatever arrived in one piece, which about
    halves the bot's CPU per turn (bench/, figure 1). The API, timeouts and errors stay httpx's.
    """
    headers = {}
    if config.api_key is not None:
        headers["Authorization"] = f"Bearer {config.api_key.get_secret_value()}"
    if "transport" not in kwargs:
        kwargs["transport"] = AiohttpTransport(limits=_LIMITS)
    return httpx.AsyncClient(
        base_url=config.base_url,
        headers=headers,
        # read: the longest silence allowed between chunks, first token included.
        timeout=httpx.Timeout(
            connect=config.connect_timeout,
            read=config.read_timeout,
            write=config.connect_timeout,
            pool=config.read_timeout,
        ),
        limits=_LIMITS,
        **kwargs,
    )


class ThinkFilter:
    """Keeps a leading ``<think>…</think>`` block of a streamed reply out of the visible text.

    Only a block at the very start counts, so a reply that merely talks about the tag is left
    alone. Tags split across chunks are handled by holding back the ambiguous tail.
    """

    OPEN = "<think>"
    CLOSE = "</think>"

    def __init__(self, *, hide: bool) -> None:
        self._state = "start" if hide else "pass"
        self._buffer = ""
        self.reasoning: list[str] = []

    def feed(self, text: str) -> str:
        if self._state == "pass":
            return text
        if self._state == "lead":  # whitespace between </think> and the answer is dropped
            text = text.lstrip()
            if text:
                self._state = "pass"
            return text
        self._buffer += text
        if self._state == "start":
            stripped = self._buffer.lstrip()
            if stripped.startswith(self.OPEN):
                self._state = "think"
                self._buffer = stripped[len(self.OPEN) :]
            elif self.OPEN.startswith(stripped):
                return ""  # undecided: still a prefix of "<think>" (or only whitespace)
            else:
                self._state = "pass"
                out, self._buffer = self._buffer, ""
                return out
        end = self._buffer.find(self.CLOSE)
        if end < 0:
            keep = len(self.CLOSE) - 1
            if len(self._buffer) > keep:
                self.reasoning.append(self._buffer[:-keep])
                self._buffer = self._buffer[-keep:]
            return ""
        self.reasoning.append(self._buffer[:end])
        rest = self._buffer[end + len(self.CLOSE) :]
        self._state, self._buffer = "lead", ""
        return self.feed(rest)

    def flush(self) -> str:
        if self._state == "think":
            self.reasoning.append(self._buffer)
            self._buffer = ""
            return ""
        out, self._buffer = self._buffer, ""
        return out


class CircuitBreaker:
    """Fails fast while the server is known to be down.

    Written here rather than taken from a library (aiobreaker, purgatory): the whole policy is
    a counter and a deadline, and it must count only LLMUnavailable, not timeouts or 4xx.
    """

    def __init__(self, failures: int, cooldown: float) -> None:
        self._threshold = failures
        self._cooldown = cooldown
        self._failures = 0
        self._open_until = 0.0

    @property
    def is_open(self) -> bool:
        return self._failures >= self._threshold and time.monotonic() < self._open_until

    def check(self) -> None:
        if self.is_open:
            raise LLMUnavailable("the model server is down (circuit open)", attempts=0)

    def record(self, ok: bool) -> None:
        if ok:
            self._failures = 0
            return
        self._failures += 1
        if self._failures >= self._threshold:
            self._open_until = time.monotonic() + self._cooldown


def _error_body(response: httpx.Response) -> dict[str, Any]:
    """vLLM answers ``{"error": {...}}``; older versions a flat ``{"object": "error", ...}``."""
    try:
        body = response.json()
    except ValueError:
        return {}
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return dict(body["error"])
    return dict(body) if isinstance(body, dict) else {}


# "max_tokens": vLLM 0.32 answers "max_tokens must be at least 1, got 0" when the prompt fills
# the whole context (tests/real_vllm/wire_samples).
_CONTEXT_PARAMS = {"input_tokens", "prompt", "messages", "max_tokens"}


def _is_context_error(error: dict[str, Any]) -> bool:
    # Classify on the parameter, not the wording (it changes between vLLM versions); the text
    # check covers old versions that sent param=null.
    if error.get("param") in _CONTEXT_PARAMS:
        return True
    message = str(error.get("message", "")).lower()
    return "context length" in message or "maximum context" in message


def classify_status(response: httpx.Response, attempts: int) -> LLMError:
    error = _error_body(response)
    status = response.status_code
    detail = str(error.get("message") or response.reason_phrase)[:300]
    if status == 400 and _is_context_error(error):
        return ContextTooLong(detail, attempts=attempts)
    if status == 404 and error.get("param") == "model":
        return ModelNotFound(detail, attempts=attempts)
    if status >= 500 or status == 429:
        return LLMUnavailable(f"model server answered {status}: {detail}", attempts=attempts)
    return BadResponse(f"model server answered {status}: {detail}", attempts=attempts)


def _retryable(error: LLMError) -> bool:
    return type(error) is LLMUnavailable


class LLMClient:
    def __init__(self, http: httpx.AsyncClient, config: LLMConfig) -> None:
        self._http = http
        self._config = config
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_cooldown)

    @property
    def root_url(self) -> str:
        """The server root (``/tokenize``, ``/health`` and ``/metrics`` live there, not in /v1)."""
        base = self._config.base_url
        return base[: -len("/v1")] if base.endswith("/v1") else base

    async def list_models(self) -> list[ModelInfo]:
        # Behind the breaker too: a bot started while vLLM is down resolves the model on every
        # message, and must then fail fast rather than dial the server each time.
        self.breaker.check()
        try:
            response = await self._http.get("models")
        except httpx.TimeoutException as exc:
            if not isinstance(exc, httpx.ConnectTimeout):
                raise LLMTimeout("the model server did not answer in time") from exc
            self.breaker.record(ok=False)
            raise LLMUnavailable("cannot connect to the model server") from exc
        except httpx.TransportError as exc:
            self.breaker.record(ok=False)
            raise LLMUnavailable(f"cannot reach the model server ({type(exc).__name__})") from exc
        if response.status_code != 200:
            error = classify_status(response, 1)
            if isinstance(error, LLMUnavailable):
                self.breaker.record(ok=False)
            raise error
        self.breaker.record(ok=True)
        try:
            return [
                ModelInfo(str(m["id"]), m.get("max_model_len")) for m in response.json()["data"]
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise BadResponse("the model server sent a malformed model list") from exc

    async def resolve_model(self) -> ModelInfo:
        """The configured model, or the first one the server lists."""
        models = await self.list_models()
        wanted = self._config.model
        for info in models:
            if wanted is None or info.id == wanted:
                return info
        served = ", ".join(m.id for m in models) or "none"
        raise ModelNotFound(f"model {wanted!r} is not served (the server has: {served})")

    async def health(self) -> bool:
        try:
            response = await self._http.get(f"{self.root_url}/health")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def tokenize(self, model: str, messages: list[dict[str, str]]) -> int | None:
        """vLLM's exact prompt token count, or None when the server has no /tokenize."""
        try:
            response = await self._http.post(
                f"{self.root_url}/tokenize",
                json={"model": model, "messages": messages, "add_generation_prompt": True},
            )
            if response.status_code != 200:
                return None
            return int(response.json()["count"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None

    async def stream_chat(self, request: ChatRequest, on_text: Callable[[str], None]) -> Completion:
        """Stream one reply, calling ``on_text`` with each piece of visible text."""
        self.breaker.check()
        started = time.monotonic()
        response, attempts = await self._open(request.body())
        try:
            completion = await self._consume(response, on_text, started)
        except LLMError as exc:
            exc.attempts = attempts
            raise
        finally:
            await response.aclose()
        completion.attempts = attempts
        completion.duration_s = time.monotonic() - started
        return completion

    async def _open(self, body: dict[str, Any]) -> tuple[httpx.Response, int]:
        # A hand-written loop rather than tenacity/stamina: the rule "retry only until the
        # response has started" ties the retry to this send, and the loop is this short.
        request = self._http.build_request(
            "POST",
            "chat/completions",
            json=body,
            headers={"Accept": "text/event-stream", "Cache-Control": "no-store"},
        )
        attempt = 0
        while True:
            attempt += 1
            error: LLMError
            try:
                response = await self._http.send(request, stream=True)
            except httpx.TimeoutException as exc:
                if isinstance(exc, httpx.ConnectTimeout):
                    error = LLMUnavailable("cannot connect to the model server", attempts=attempt)
                else:
                    error = LLMTimeout("the model server did not answer in time", attempts=attempt)
            except httpx.TransportError as exc:
                error = LLMUnavailable(
                    f"cannot reach the model server ({type(exc).__name__})", attempts=attempt
                )
            else:
                if response.status_code == 200:
                    self.breaker.record(ok=True)
                    return response, attempt
                await response.aread()
                await response.aclose()
                error = classify_status(response, attempt)
            if not _retryable(error) or attempt > self._config.retries:
                if isinstance(error, LLMUnavailable):
                    self.breaker.record(ok=False)
                raise error
            delay = self._config.retry_backoff * 2 ** (attempt - 1)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))

    async def _consume(
        self, response: httpx.Response, on_text: Callable[[str], None], started: float
    ) -> Completion:
        hide = ThinkFilter(hide=not self._config.show_reasoning)
        text: list[str] = []  # visible text handed to on_text
        fresh: list[str] = []  # visible text of the current read, not yet handed over
        reasoning: list[str] = []
        finish: str | None = None
        usage: dict[str, Any] = {}
        first_token: float | None = None
        done = False

        def flush() -> None:
            if fresh:
                visible = "".join(fresh)
                fresh.clear()
                text.append(visible)
                on_text(visible)

        def fail(kind: type[LLMError], message: str) -> LLMError:
            flush()
            return kind(message, partial="".join(text))

        def take(chunk: Any) -> None:
            nonlocal finish, usage, first_token
            if "error" in chunk:
                error = chunk["error"] if isinstance(chunk["error"], dict) else chunk
                kind = ContextTooLong if _is_context_error(error) else BadResponse
                raise fail(kind, f"model server error: {error.get('message', '')}"[:300])
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                thought = delta.get("reasoning_content") or delta.get("reasoning")
                if thought:
                    reasoning.append(thought)
                content = delta.get("content")
                if content:
                    if first_token is None:
                        first_token = time.monotonic() - started
                    visible = hide.feed(content)
                    if visible:
                        fresh.append(visible)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
            if chunk.get("usage"):
                usage = chunk["usage"]

        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            raise fail(TruncatedStream, "the model server did not send an event stream")
        events = SSEDecoder()
        try:
            async for raw in response.aiter_bytes():
                if done:
                    continue  # read to the end, so the connection can serve the next request
                datas = events.feed(raw)
                if b"[DONE]" in datas:
                    datas = datas[: datas.index(b"[DONE]")]
                    done = True
                try:
                    for chunk in _parse_all(datas):
                        take(chunk)
                except (ValueError, TypeError, AttributeError, KeyError) as exc:
                    raise fail(
                        BadResponse, f"malformed chunk from the model server: {exc}"
                    ) from exc
                flush()  # once per network read, not once per token
        except httpx.TimeoutException as exc:
            if not done:
                raise fail(LLMTimeout, "the model server stopped sending") from exc
        except httpx.TransportError as exc:
            if not done:
                raise fail(TruncatedStream, f"the stream was cut ({type(exc).__name__})") from exc
        tail = hide.flush()
        if tail:
            fresh.append(tail)
        flush()
        if finish is None:
            raise fail(TruncatedStream, "the stream ended without a finish_reason")
        details = usage.get("prompt_tokens_details") or {}
        return Completion(
            text="".join(text),
            finish_reason=finish,
            reasoning="".join(reasoning) + "".join(hide.reasoning),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            cached_tokens=details.get("cached_tokens") if isinstance(details, dict) else None,
            first_token_s=first_token,
        )


class SSEDecoder:
    """Server-sent events, reduced to what vLLM sends: the ``data`` of each complete event.

    Written here instead of using httpx-sse: that library decodes line by line through httpx's
    text iterators and yields one event at a time, while the bot's hot path wants the events
    of one network read together (bench/ figure 1: parsing a 100-event reply went from 572 µs
    to 196 µs). What vLLM sends is the ``data:`` field only, so the subset is small.

    Fed raw bytes as they arrive; returns the events completed by them. Comments and the
    ``event``/``id``/``retry`` fields carry nothing vLLM uses and are skipped.
    """

    def __init__(self) -> None:
        self._tail = b""
        self._data: list[bytes] = []

    def feed(self, raw: bytes) -> list[bytes]:
        lines = (self._tail + raw).split(b"\n")
        self._tail = lines.pop()
        out: list[bytes] = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:  # a blank line ends an event
                if self._data:
                    out.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        return out


def _parse_all(datas: list[bytes]) -> Iterator[Any]:
    """The JSON of each event, in order.

    The events of one read are parsed as one JSON array: a json.loads call costs ~3 µs
    whatever its size, a third of a token's whole handling. If that fails (a malformed event),
    each is parsed on its own, so the events before the bad one still count.
    """
    if len(datas) > 1:
        try:
            chunks = json.loads(b"[" + b",".join(datas) + b"]")
        except ValueError:
            chunks = None
        if isinstance(chunks, list) and len(chunks) == len(datas):
            yield from chunks
            return
    for data in datas:
        yield json.loads(data)
