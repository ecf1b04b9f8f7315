"""FakeVLLM: an aiohttp server on 127.0.0.1 that speaks vLLM's OpenAI-compatible wire format
and misbehaves on request (see `Script`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp import web

from . import control, wire
from .script import Script, ServerConfig
from .tokenizer import (
    SPECIAL_TOKENS,
    PrefixCache,
    encode,
    lorem_pieces,
    pieces,
    render_chat,
    token_id,
)

CHAT_PATH = "/v1/chat/completions"


@dataclass
class RequestRecord:
    """One HTTP request as the server saw it. Times are `time.monotonic()` (system-wide on
    Linux, so comparable with a test process's clock)."""

    seq: int
    method: str
    path: str
    received_at: float
    headers: dict[str, str]
    body: Any
    script: Script | None = None
    status: int = 200
    prompt_tokens: int = 0
    cached_tokens: int = 0
    sent_tokens: int = 0  # token chunks written
    first_byte_at: float | None = None  # first body byte after the headers
    last_byte_at: float | None = None
    ended_at: float | None = None
    # open | completed | error | disconnected | stalled | cut:<rst|fin|clean|done|error> | shutdown
    outcome: str = "open"
    disconnected_at: float | None = None

    @property
    def disconnect_after_last_byte(self) -> float | None:
        """Seconds from the last byte sent (or the request) to the client's disconnect."""
        if self.disconnected_at is None:
            return None
        return self.disconnected_at - (self.last_byte_at or self.received_at)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["disconnect_after_last_byte"] = self.disconnect_after_last_byte
        return data


REC = web.RequestKey("rec", RequestRecord)


@dataclass
class _Plan:
    steps: list[tuple[str, str]]  # ("c" content | "r" reasoning, piece); one token each
    finish: str
    eos: bool  # a final empty-content chunk for the end-of-sequence token
    out_ids: list[int] = field(default_factory=list)


class FakeVLLM:
    """Scripted vLLM. `async with FakeVLLM(model="tiny", max_model_len=2048) as fake:`.

    Every chat completion takes the next queued `Script` (`push`), else `default`. Other
    keyword arguments are `ServerConfig` fields.
    """

    def __init__(
        self,
        model: str = "tiny",
        max_model_len: int = 2048,
        *,
        default: Script | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        control_port: int | None = None,
        **config: Any,
    ) -> None:
        self.config = ServerConfig(model=model, max_model_len=max_model_len, **config)
        self.default = default or Script()
        self.host, self.port, self.control_port = host, port, control_port
        self.queue: deque[Script] = deque()
        self.cache = PrefixCache(self.config.block_size, self.config.cache_blocks)
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._closing = False
        self._stopping = asyncio.Event()
        self._serving: set[Any] = set()  # transports with a request in flight
        self._slots = asyncio.Semaphore(self.config.max_running or 1)
        self.reset()

    # ---- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> FakeVLLM:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        app = web.Application(middlewares=[self._record_middleware], client_max_size=2**26)
        app.router.add_get("/health", self._health)
        app.router.add_get("/version", self._version)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post(CHAT_PATH, self._chat)
        control.add_routes(app, self)
        # handler_cancellation: a client that goes away cancels its handler, as in vLLM
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=0.2
        )
        await self._runner.setup()
        await self.resume_listening()
        if self.control_port is not None:
            sock = _listen(self.host, self.control_port)
            self.control_port = sock.getsockname()[1]
            await web.SockSite(self._runner, sock).start()

    async def close(self) -> None:
        self._closing = True
        self._stopping.set()  # wakes stalled handlers
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def stop_listening(self) -> None:
        """Go down as a server does: new connections are refused and idle keep-alive
        connections are closed (a client cannot slip a request in through one it pooled);
        requests in flight carry on, and their connections close when they end."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        if self._runner is not None and self._runner.server is not None:
            for handler in self._runner.server.connections:
                transport = handler.transport
                if transport is None or transport.get_extra_info("sockname")[1] != self.port:
                    continue  # the control port stays up
                if transport in self._serving:
                    handler.close()  # after the request in flight
                else:
                    handler.force_close()

    async def resume_listening(self) -> None:
        """Listen again, on the same port."""
        assert self._runner is not None, "start() first"
        if self._site is None:
            sock = _listen(self.host, self.port)
            self.port = sock.getsockname()[1]
            self._site = web.SockSite(self._runner, sock)
            await self._site.start()

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    # ---- scripting and instrumentation -------------------------------------------------------

    def push(self, *scripts: Script) -> None:
        """Queue scripts for the next chat completions (each serves `times` requests)."""
        for s in scripts:
            self.queue.extend([s] * s.times)

    def reset(self) -> None:
        """Forget requests, queue, counters and the prefix cache (not `default`)."""
        self.queue.clear()
        self.cache.clear()
        self.requests: list[RequestRecord] = []
        self.disconnects: list[RequestRecord] = []
        self._disconnect_q: asyncio.Queue[RequestRecord] = asyncio.Queue()
        self.in_flight = self.max_in_flight = 0
        self.running = self.waiting = 0
        self.counters: dict[str, float] = {}
        self.finished: dict[str, int] = {}  # finished_reason -> count, as in /metrics

    @property
    def chat_requests(self) -> list[RequestRecord]:
        return [r for r in self.requests if r.path == CHAT_PATH]

    @property
    def attempts(self) -> int:
        return len(self.chat_requests)

    async def next_disconnect(self, within: float = 2.0) -> RequestRecord:
        """The next client disconnect not yet returned (TimeoutError after `within` s)."""
        async with asyncio.timeout(within):
            return await self._disconnect_q.get()

    def prompt_tokens(self, messages: Sequence[Any], add_generation_prompt: bool = True) -> int:
        """What `/tokenize` and `usage.prompt_tokens` report for these messages."""
        return len(encode(render_chat(messages, add_generation_prompt)))

    def stats(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "running": self.running,
            "waiting": self.waiting,
            "queued_scripts": len(self.queue),
            "counters": self.counters,
            "finished": self.finished,
            "disconnects": [r.seq for r in self.disconnects],
            "requests": [r.to_json() for r in self.requests],
        }

    def _count(self, name: str, n: float = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def _finish(self, rec: RequestRecord, outcome: str, reason: str) -> None:
        rec.outcome = outcome
        self.finished[reason] = self.finished.get(reason, 0) + 1

    def _note_disconnect(self, rec: RequestRecord) -> None:
        if self._closing or rec.outcome not in ("open", "stalled"):
            return
        rec.disconnected_at = time.monotonic()
        self._finish(rec, "disconnected", "abort")
        self.disconnects.append(rec)
        self._disconnect_q.put_nowait(rec)

    @web.middleware
    async def _record_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(control.PREFIX):
            return await handler(request)  # type: ignore[no-any-return]
        body: Any = None
        if request.body_exists:
            raw = await request.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
        rec = RequestRecord(
            len(self.requests),
            request.method,
            request.path,
            time.monotonic(),
            dict(request.headers),
            body,
        )
        self.requests.append(rec)
        request[REC] = rec
        transport = request.transport
        self._serving.add(transport)
        try:
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            self._serving.discard(transport)

    # ---- simple endpoints ----------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(headers=wire.headers(None, 0))

    async def _version(self, request: web.Request) -> web.Response:
        return control.json_response({"version": self.config.version})

    async def _models(self, request: web.Request) -> web.Response:
        return control.json_response(wire.models_body(self.config))

    async def _metrics(self, request: web.Request) -> web.Response:
        values = dict(self.counters, num_requests_running=self.running)
        values["num_requests_waiting"] = self.waiting
        text = wire.metrics_text(self.config.model, values, self.finished).encode()
        return web.Response(body=text, headers=wire.headers(wire.METRICS_CONTENT_TYPE, len(text)))

    async def _tokenize(self, request: web.Request) -> web.Response:
        rec, cfg = request[REC], self.config
        body = rec.body if isinstance(rec.body, dict) else {}
        if body.get("model") not in (None, cfg.model):
            message = wire.unknown_model(body["model"], cfg.model, cfg.context_style)
            return self._error(rec, message, 404, "model")
        if isinstance(body.get("messages"), list):
            text = render_chat(body["messages"], body.get("add_generation_prompt", True))
        else:
            text = str(body.get("prompt", ""))
        toks = pieces(text)  # vLLM 0.32 counts prompts longer than max_model_len too
        return control.json_response(
            {
                "count": len(toks),
                "max_model_len": cfg.max_model_len,
                "tokens": [token_id(p) for p in toks],
                "token_strs": toks if body.get("return_token_strs") else None,
            }
        )

    # ---- chat completions ------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        rec = request[REC]
        rec.script = script = self.queue.popleft() if self.queue else self.default
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._serve_chat(request, rec, script)
        except asyncio.CancelledError:  # client gone (handler_cancellation) or shutdown
            self._note_disconnect(rec)
            if rec.outcome == "open":
                rec.outcome = "shutdown"
            raise
        finally:
            self.in_flight -= 1
            rec.ended_at = time.monotonic()

    async def _serve_chat(
        self, request: web.Request, rec: RequestRecord, script: Script
    ) -> web.StreamResponse:
        cfg, body = self.config, rec.body
        if script.cut_after is not None and script.cut_after < 0:
            return await self._cut(request, rec, web.StreamResponse(), script.cut)
        if script.status is not None:
            return self._http_error(rec, script.status, script.body)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            message = wire.missing_messages(body if isinstance(body, dict) else {})
            return self._error(rec, message, 400, "body.messages", "Bad Request")
        if body.get("model") not in (None, cfg.model):
            message = wire.unknown_model(body["model"], cfg.model, cfg.context_style)
            return self._error(rec, message, 404, "model")
        ids = encode(render_chat(body["messages"], body.get("add_generation_prompt", True)))
        rec.prompt_tokens = len(ids)
        param = (
            "max_tokens" if body.get("max_completion_tokens") is None else "max_completion_tokens"
        )
        max_tokens: int | None = body.get(param)
        lim, style = cfg.max_model_len, cfg.context_style
        problem = wire.length_error(len(ids), max_tokens, lim, style, param)
        if problem is None and script.context_error:
            problem = wire.length_error(max(len(ids), lim + 1), max_tokens, lim, style, param)
        if problem is not None:
            return self._error(rec, problem[0], 400, problem[1])
        plan = self._plan(script, body, max_tokens, len(ids))
        if body.get("stream"):
            return await self._stream(request, rec, script, plan, ids, body)
        return await self._complete(request, rec, script, plan, ids, body)

    def _plan(
        self, script: Script, body: dict[str, Any], max_tokens: int | None, prompt_len: int
    ) -> _Plan:
        if script.text is not None:
            content = pieces(script.text)
        else:
            n = max_tokens if body.get("ignore_eos") and max_tokens else script.tokens
            content = lorem_pieces(n)
        reasoning = pieces(script.reasoning) if script.reasoning else []
        if reasoning and script.reasoning_mode == "inline":
            steps = [("c", p) for p in ["<think>", *reasoning, "</think>", *content]]
        else:
            steps = [("r", p) for p in reasoning] + [("c", p) for p in content]
        limit = self.config.max_model_len - prompt_len  # vLLM 0.32 clamps max_tokens to this
        if max_tokens is not None:
            limit = min(limit, max_tokens)
        eos = len(steps) < limit
        plan = _Plan(steps[:limit], script.finish_reason or ("stop" if eos else "length"), eos)
        plan.out_ids = [token_id(p) for _, p in plan.steps]
        if eos:  # ChatML models stop on <|im_end|>, which the next prompt also contains
            plan.out_ids.append(SPECIAL_TOKENS["<|im_end|>"])
        return plan

    @contextlib.asynccontextmanager
    async def _slot(self, rec: RequestRecord, ids: list[int], salt: Any) -> AsyncIterator[None]:
        """Admission (max_running, FIFO), prefix-cache accounting and simulated prefill."""
        self.waiting += 1
        try:
            if self.config.max_running:
                await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            salt = salt if isinstance(salt, str) else None
            rec.cached_tokens = self.cache.lookup(ids, salt)
            self.cache.store(ids, salt)
            self._count("prompt_tokens_total", len(ids))
            self._count("prefix_cache_queries_total", len(ids))
            self._count("prefix_cache_hits_total", rec.cached_tokens)
            if self.config.prefill_tps > 0:
                await asyncio.sleep((len(ids) - rec.cached_tokens) / self.config.prefill_tps)
            yield
        finally:
            self.running -= 1
            if self.config.max_running:
                self._slots.release()

    async def _stream(
        self,
        request: web.Request,
        rec: RequestRecord,
        script: Script,
        plan: _Plan,
        ids: list[int],
        body: dict[str, Any],
    ) -> web.StreamResponse:
        salt, options = body.get("cache_salt"), body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        enc = wire.ChunkEncoder(self.config)
        events = self._token_events(enc, script, plan, include_usage)
        resp = web.StreamResponse(headers=wire.headers(wire.SSE_CONTENT_TYPE))
        await resp.prepare(request)  # vLLM sends its headers before queueing and prefill
        try:
            async with self._slot(rec, ids, salt):
                await asyncio.sleep(script.ttft)
                tail = self._tail(enc, rec, script, plan, include_usage)
                await self._send(
                    request, resp, rec, [(enc.role(), False), *events], tail, script.rate
                )
                self.cache.store(ids + plan.out_ids[: rec.sent_tokens], salt)
                self._count("generation_tokens_total", rec.sent_tokens)
        except ConnectionResetError:  # a write found the client gone before the cancellation
            self._note_disconnect(rec)
            return resp
        if script.cut_after is not None:
            if script.cut == "error":
                self.finished["error"] = self.finished.get("error", 0) + 1
            return await self._cut(request, rec, resp, script.cut)
        self._finish(rec, "completed", plan.finish)
        return resp

    @staticmethod
    def _token_events(
        enc: wire.ChunkEncoder, script: Script, plan: _Plan, include_usage: bool
    ) -> list[tuple[str, bool]]:
        """(event, is a token) pairs; the last token carries finish_reason unless cut."""
        cut = script.cut_after is not None
        n = min(script.cut_after or 0, len(plan.steps)) if cut else len(plan.steps)
        events = [(_encode(enc, kind, p), True) for kind, p in plan.steps[:n]]
        last = not include_usage  # the final chunk of the stream carries system_fingerprint
        if not cut and (plan.eos or not events):  # "stop": the EOS token's empty delta
            events.append((enc.content("", plan.finish, last), True))
        elif not cut:
            events[-1] = (_encode(enc, *plan.steps[n - 1], plan.finish, last), True)
        if script.inject_after is not None:
            bad = {"malformed": enc.malformed(), "shape": enc.shape_error()}
            event = bad.get(script.inject, script.inject)
            events.insert(min(script.inject_after, len(events)), (event, False))
        return events

    def _tail(
        self,
        enc: wire.ChunkEncoder,
        rec: RequestRecord,
        script: Script,
        plan: _Plan,
        include_usage: bool,
    ) -> list[str]:
        """What follows the token chunks: usage (if asked) and [DONE], or a cut's ending."""
        if script.cut_after is not None:
            error = [wire.stream_error_event(self.config.error_shape), wire.DONE]
            return {"done": [wire.DONE], "error": error}.get(script.cut, [])
        if include_usage:
            use = wire.usage(self.config, rec.prompt_tokens, len(plan.out_ids), rec.cached_tokens)
            return [enc.usage(use), wire.DONE]
        return [wire.DONE]

    async def _send(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        rec: RequestRecord,
        events: list[tuple[str, bool]],
        tail: list[str],
        rate: float,
    ) -> None:
        """One HTTP chunk per SSE event, as vLLM; paced tokens at `rate`/s, else one write."""
        if rate <= 0:  # frame the chunks here so that the whole stream is one syscall
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError
            texts = [e for e, _ in events] + tail
            transport.write(b"".join(_chunk(t.encode()) for t in texts))
            self._wrote(rec, sum(paced for _, paced in events))
            return
        loop = asyncio.get_running_loop()
        t0, i = loop.time(), 0
        for event, paced in events:
            if paced:
                i += 1
                await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
            await resp.write(event.encode())
            self._wrote(rec, paced)
        for event in tail:
            await resp.write(event.encode())
            self._wrote(rec, 0)

    @staticmethod
    def _wrote(rec: RequestRecord, tokens: int) -> None:
        rec.last_byte_at = time.monotonic()
        rec.first_byte_at = rec.first_byte_at or rec.last_byte_at
        rec.sent_tokens += tokens

    async def _cut(
        self, request: web.Request, rec: RequestRecord, resp: web.StreamResponse, how: str
    ) -> web.StreamResponse:
        """End the response the way `Script.cut` says; "clean"/"done"/"error" just return."""
        if how == "stall":
            rec.outcome = "stalled"
            await self._stopping.wait()  # until the client leaves (cancellation) or close()
            how = "rst"
        rec.outcome = f"cut:{how}"
        transport = request.transport
        if transport is None:
            return resp
        if how == "rst":
            sock = transport.get_extra_info("socket")
            if sock is not None:  # linger 0: closing sends RST, not FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        elif how == "fin" or not resp.prepared:
            transport.close()  # flushes what was written, then FIN: no chunked terminator
        return resp  # on a closed transport aiohttp's write_eof fails quietly

    async def _complete(
        self,
        request: web.Request,
        rec: RequestRecord,
        script: Script,
        plan: _Plan,
        ids: list[int],
        body: dict[str, Any],
    ) -> web.StreamResponse:
        """Non-streaming: the same plan, one JSON body (cuts: error → 500, else the socket)."""
        async with self._slot(rec, ids, body.get("cache_salt")):
            delay = script.ttft + (len(plan.steps) / script.rate if script.rate > 0 else 0)
            await asyncio.sleep(delay)
            self.cache.store(ids + plan.out_ids, body.get("cache_salt"))
        if script.cut_after is not None:
            if script.cut == "error":
                return self._error(rec, "Internal server error", 500)
            return await self._cut(request, rec, web.StreamResponse(), script.cut)
        reasoning = "".join(p for kind, p in plan.steps if kind == "r") or None
        content = "".join(p for kind, p in plan.steps if kind == "c")
        rec.sent_tokens = len(plan.out_ids)
        self._count("generation_tokens_total", rec.sent_tokens)
        self._finish(rec, "completed", plan.finish)
        use = wire.usage(self.config, len(ids), len(plan.out_ids), rec.cached_tokens)
        return control.json_response(
            wire.completion_body(self.config, content, reasoning, plan.finish, use)
        )

    # ---- errors ------------------------------------------------------------------------

    def _error(
        self,
        rec: RequestRecord,
        message: str,
        status: int,
        param: str | None = None,
        type_: str | None = None,
    ) -> web.Response:
        rec.status, rec.outcome = status, "error"
        body = wire.error_body(message, status, param, self.config.error_shape, type_)
        return control.json_response(body, status)

    def _http_error(self, rec: RequestRecord, status: int, body: str | None) -> web.Response:
        if body is None:
            return self._error(rec, HTTPStatus(status).phrase, status)
        rec.status, rec.outcome = status, "error"
        content_type = "text/plain"
        if body == "html":
            content_type = "text/html"
            body = wire.HTML_ERROR.format(code=status, phrase=HTTPStatus(status).phrase)
        data = body.encode()
        return web.Response(status=status, body=data, headers=wire.headers(content_type, len(data)))


def _encode(
    enc: wire.ChunkEncoder, kind: str, piece: str, finish: str | None = None, last: bool = False
) -> str:
    return (enc.reasoning if kind == "r" else enc.content)(piece, finish, last)


def _chunk(data: bytes) -> bytes:
    """HTTP/1.1 chunked framing of one payload."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock
