"""Pointing discord.py at the fake, and running a discord.py client so that it fails loudly."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Self

import discord
import discord.gateway
import discord.http
import yarl

from .server import FakeDiscord


def point_discord_py_at(base_url: str) -> Callable[[], None]:
    """Send every REST call and the gateway connection of discord.py to ``base_url``.

    Set before login. Returns a function restoring the previous values.
    """
    old_base, old_gateway = (
        discord.http.Route.BASE,
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
    )
    base = base_url.rstrip("/")
    discord.http.Route.BASE = base + "/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(base.replace("http", "ws", 1) + "/")

    def restore() -> None:
        discord.http.Route.BASE = old_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway

    return restore


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f": {record.exc_info[1]!r}"
        self.sink.append(f"{record.name}: {text}")


class ClientRunner:
    """``async with ClientRunner(client, fake):`` runs ``client.start()`` in a task until ready.

    A payload discord.py cannot parse ends ``client.start()`` with an exception while REST keeps
    working (facts item 6). So on exit this raises if the task died, if discord.py logged an ERROR
    (handler exceptions included), or if the loop reported an unhandled exception.
    """

    def __init__(
        self,
        client: discord.Client,
        fake: FakeDiscord,
        *,
        token: str | None = None,
        ready_timeout: float = 5.0,
        wait_ready: bool = True,
    ) -> None:
        self.client = client
        self.fake = fake
        self.token = token or fake.token
        self.ready_timeout = ready_timeout
        self.wait_ready = wait_ready
        self.errors: list[str] = []
        self.task: asyncio.Task[None] | None = None
        self._handler = _Collect(self.errors)
        self._old_loop_handler: Any = None

    async def __aenter__(self) -> Self:
        logging.getLogger("discord").addHandler(self._handler)
        loop = asyncio.get_running_loop()
        self._old_loop_handler = loop.get_exception_handler()
        loop.set_exception_handler(
            lambda _loop, ctx: self.errors.append(
                f"loop: {ctx.get('message')} {ctx.get('exception')!r}"
            )
        )
        self.task = asyncio.create_task(self.client.start(self.token), name="discord-client")
        if self.wait_ready:
            await self.until(self.client.wait_until_ready(), self.ready_timeout, "on_ready")
        return self

    async def until(self, aw: Any, timeout: float = 5.0, what: str = "event") -> Any:  # noqa: ASYNC109
        """Await ``aw`` but fail at once, with the cause, if the client dies meanwhile."""
        assert self.task is not None
        waiter = asyncio.ensure_future(aw)
        done, _ = await asyncio.wait(
            {waiter, self.task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter in done:
            return waiter.result()
        waiter.cancel()
        if self.task in done:
            raise AssertionError(
                f"discord.py client stopped while waiting for {what}: {self._death()}"
            )
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}")

    def _death(self) -> str:
        assert self.task is not None
        if not self.task.done():
            return ""
        if self.task.cancelled():
            return "cancelled"
        exc = self.task.exception()
        return f"client.start() raised {exc!r}" if exc else "client.start() returned"

    def check(self) -> None:
        """Raise now if the client died or logged errors."""
        problems = [p for p in [self._death(), *self.errors] if p]
        if problems:
            raise AssertionError("discord.py client failed:\n  - " + "\n  - ".join(problems))

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self.task is not None
        died = self._death()
        try:
            await self.client.close()
            try:
                await asyncio.wait_for(asyncio.shield(self.task), 5.0)
            except Exception as e:  # reported below
                died = died or f"client.start() raised {e!r} while closing"
        finally:
            logging.getLogger("discord").removeHandler(self._handler)
            asyncio.get_running_loop().set_exception_handler(self._old_loop_handler)
        if exc_type is None:
            problems = [p for p in [died, *self.errors] if p]
            if problems:
                raise AssertionError("discord.py client failed:\n  - " + "\n  - ".join(problems))
