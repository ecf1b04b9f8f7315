"""The one explicit start-up: open every resource, hand it to whoever needs it, close it all.

Used by every entry point (the Discord bot, the console, the export command), so they share
the same database checks, the same crash recovery and the same engine.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bot.config import Config
from bot.engine import Engine
from bot.health import HEARTBEAT_SECONDS
from bot.health import lock_path as _lock_path
from bot.llm import LLMClient, make_http_client
from bot.metrics import Metrics
from bot.store import Store
from bot.tokens import TokenCounter, load_encoding

log = logging.getLogger(__name__)


class AlreadyRunning(Exception):
    """Another bot process holds this database."""


@dataclass(frozen=True, slots=True)
class App:
    config: Config
    store: Store
    engine: Engine
    interrupted: list[tuple[int, str, list[tuple[int, int | None]]]]


@asynccontextmanager
async def instance_lock(db_path: Path) -> AsyncIterator[None]:
    """One bot per database: two writers would answer every message twice."""
    if str(db_path) == ":memory:":
        yield
        return
    db_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = _lock_path(db_path)
    handle: IO[str] = lock_path.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise AlreadyRunning(
                f"the database {db_path} is in use by {holder}; stop it first"
                " (one bot per database)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        beat = asyncio.create_task(_heartbeat(lock_path))
        try:
            yield
        finally:
            beat.cancel()
    finally:
        handle.close()


async def _heartbeat(path: Path) -> None:
    """Touch the lock file from the event loop: ``healthcheck`` reads a hung loop from it."""
    while True:
        os.utime(path)
        await asyncio.sleep(HEARTBEAT_SECONDS)


def open_counter(config: Config) -> TokenCounter:
    """tiktoken's files are unpacked next to the database: a place the bot may always write."""
    path = Path(config.database.path)
    base = (
        Path(tempfile.gettempdir()) / "vllm-discord-bot" if str(path) == ":memory:" else path.parent
    )
    return TokenCounter(load_encoding(config.llm.tokenizer, base / ".tiktoken"))


@asynccontextmanager
async def open_app(config: Config) -> AsyncIterator[App]:
    """Lock the database, open and migrate it, recover crashed turns, build the engine."""
    path = Path(config.database.path)
    async with instance_lock(path):
        store = await Store.open(path, busy_timeout_ms=config.database.busy_timeout_ms)
        try:
            interrupted = await store.recover_pending()
            if interrupted:
                log.warning("marked %d turn(s) left by a crash as interrupted", len(interrupted))
            counter = open_counter(config)
            metrics = Metrics()
            metrics.watch_tasks(asyncio.get_running_loop())
            if config.metrics.port:
                metrics.serve(config.metrics.host, config.metrics.port)
            try:
                async with make_http_client(config.llm) as http:
                    engine = Engine(config, store, LLMClient(http, config.llm), counter, metrics)
                    yield App(config, store, engine, interrupted)
            finally:
                metrics.close()
        finally:
            await store.close()
