"""Admission control in front of one GPU: vLLM never answers 429 and queues without bound
(facts.md), so the bot caps concurrent generations, bounds the queue and rate-limits users."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Busy(Exception):
    """Too many turns are running or waiting; the user should try again shortly."""


class Gate:
    """At most ``concurrency`` generations at once and ``queue_size`` turns waiting."""

    def __init__(self, concurrency: int, queue_size: int) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._capacity = concurrency + queue_size
        self.admitted = 0
        self.running = 0
        self.max_running = 0

    @property
    def waiting(self) -> int:
        return self.admitted - self.running

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold a place for a whole turn; raises Busy at once when the queue is full."""
        if self.admitted >= self._capacity:
            raise Busy
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the concurrent generation slots while the model streams."""
        async with self._slots:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            try:
                yield
            finally:
                self.running -= 1


class RateLimiter:
    """A token bucket per user: ``burst`` turns at once, refilled at ``per_minute``.

    Hand-written because the libraries in this space (aiolimiter, limits) make a caller *wait*
    for capacity; a chat user over the limit should instead get an immediate, polite answer.
    """

    def __init__(self, per_minute: float, burst: int) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._buckets: dict[int, tuple[float, float]] = {}

    def allow(self, user_id: int) -> float:
        """Take one turn for ``user_id``: 0.0 if allowed, else seconds until one is free."""
        now = time.monotonic()
        tokens, last = self._buckets.get(user_id, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens >= 1.0:
            self._buckets[user_id] = (tokens - 1.0, now)
            if len(self._buckets) > 10_000:
                self._evict(now)
            return 0.0
        self._buckets[user_id] = (tokens, now)
        return (1.0 - tokens) / self._rate

    def _evict(self, now: float) -> None:
        full_after = self._burst / self._rate
        for user, (_, last) in list(self._buckets.items()):
            if now - last > full_after:
                del self._buckets[user]
