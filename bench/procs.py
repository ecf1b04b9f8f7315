"""Running the bot as its own process, so that its CPU and memory are its own.

``BotRun(env)`` starts ``python -m bot`` (the real entry point); ``BotRun(env, module=...)``
starts another entry point, such as the plain-httpx baseline in ``bench.baseline_bot``.
Ready means the bot logged "ready: connected as" (it is connected to the test Discord server).
"""

from __future__ import annotations

import asyncio
import collections
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import cpu_seconds, rss_bytes
from tests.discord_server import FakeDiscord
from tests.process import bot_env

REPO = Path(__file__).resolve().parents[1]
READY = "ready: connected as"


def bench_env(fake: FakeDiscord, vllm: Any, db: Path, **extra: Any) -> dict[str, str]:
    """The test environment (tests.process.bot_env), with limits raised for the bench."""
    values: dict[str, Any] = {
        "LIMITS_MAX_CONCURRENCY": 64,
        "LIMITS_QUEUE_SIZE": 256,
        "LIMITS_USER_TURNS_PER_MINUTE": 1_000_000,
        "LIMITS_USER_BURST": 1_000_000,
        **extra,
    }
    return bot_env(fake, vllm, db, **values)


class BotRun:
    def __init__(self, env: dict[str, str], *, module: str = "bot") -> None:
        self.env = env
        self.module = module
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self.started_at = 0.0
        self.ready_at = 0.0
        self._ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    async def start(self, ready_within: float = 60.0) -> float:
        """Start the process; returns the seconds from exec to the ready log line."""
        self.started_at = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.module,
            cwd=REPO, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        waiter = asyncio.create_task(self._ready.wait())
        exited = asyncio.create_task(self.proc.wait())
        done, _ = await asyncio.wait(
            {waiter, exited}, timeout=ready_within, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        exited.cancel()
        if waiter not in done or not self._ready.is_set():
            await self.stop()
            raise RuntimeError(f"the bot ({self.module}) did not get ready:\n{self.log}")
        return self.ready_at - self.started_at

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if not self._ready.is_set() and READY in line:
                self.ready_at = time.monotonic()
                self._ready.set()

    async def stop(self, timeout: float = 30.0) -> int | None:  # noqa: ASYNC109
        """SIGTERM (the bot drains and exits 0), SIGKILL if it does not exit in time."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 5)
            except TimeoutError:
                self._reader.cancel()
        return proc.returncode

    async def __aenter__(self) -> BotRun:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
