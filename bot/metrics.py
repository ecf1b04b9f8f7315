"""Prometheus metrics: turns, latency, tokens, trims, queue, feedback, errors.

Always counted (it costs a few dictionary updates per turn); served over HTTP only when
``METRICS_PORT`` is set, on 127.0.0.1 by default. prometheus_client's own threaded server is
used: scrapes never touch the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.turns = Counter("bot_turns", "Finished turns by status", ["status"], registry=r)
        self.reply_seconds = Histogram(
            "bot_reply_seconds", "Request to last token", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.first_token_seconds = Histogram(
            "bot_first_token_seconds",
            "Request to first token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "bot_tokens", "Tokens reported by vLLM", ["kind"], registry=r
        )  # prompt, completion, cached
        self.trims = Counter("bot_context_trims", "Times the context start moved", registry=r)
        self.errors = Counter("bot_llm_errors", "Model server errors by kind", ["kind"], registry=r)
        self.refusals = Counter(
            "bot_refusals", "Messages not answered, by reason", ["reason"], registry=r
        )
        self.feedback = Counter("bot_feedback", "Reaction scores recorded", ["score"], registry=r)
        self.queue = Gauge("bot_queue", "Turns generating or waiting", ["state"], registry=r)
        self.tasks = Gauge(
            "bot_event_loop_tasks", "asyncio tasks alive in the event loop (sampled)", registry=r
        )
        self._server: WSGIServer | None = None
        self._sampler: asyncio.TimerHandle | None = None

    def watch_queue(self, running: Callable[[], int], waiting: Callable[[], int]) -> None:
        self.queue.labels("running").set_function(running)
        self.queue.labels("waiting").set_function(waiting)

    def watch_tasks(self, loop: asyncio.AbstractEventLoop, every: float = 1.0) -> None:
        """Count the loop's tasks each ``every`` s, from inside the loop: a timer, not a task,
        so it does not count itself, and scrapes (another thread) only read the last count."""

        def sample() -> None:
            self.tasks.set(len(asyncio.all_tasks(loop)))
            self._sampler = loop.call_later(every, sample)

        sample()

    def serve(self, host: str, port: int) -> None:
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
