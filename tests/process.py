"""Running ``python -m bot`` as a real process against the in-process fake servers."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from tests.conftest import REPO
from tests.discord_server import FakeDiscord
from tests.fake_vllm import FakeVLLM


def bot_env(fake: FakeDiscord, vllm: FakeVLLM, db: Path, **extra: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "LLM_"))}
    env.update(
        DISCORD_TOKEN=fake.token,
        DISCORD_API_BASE=fake.api_url,
        DISCORD_GATEWAY_URL=fake.gateway_url,
        DISCORD_EDIT_INTERVAL="0.2",
        DISCORD_GUILD_READY_TIMEOUT="0.05",
        LLM_BASE_URL=vllm.base_url,
        LLM_RETRY_BACKOFF="0.05",
        DATABASE_PATH=str(db),
        BOT_CONFIG=str(REPO / "config" / "bot.toml"),
        LIMITS_USER_TURNS_PER_MINUTE="600",
        LIMITS_USER_BURST="100",
        PYTHONUNBUFFERED="1",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


async def run_bot(
    env: dict[str, str],
    *args: str,
    stdin: str | None = None,
    timeout: float = 60,  # noqa: ASYNC109
) -> tuple[int, str, str]:
    """Run ``python -m bot ARGS`` to its end: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=REPO,
        env=env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    data = stdin.encode() if stdin is not None else None
    out, err = await asyncio.wait_for(proc.communicate(data), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


class BotProcess:
    """``async with BotProcess(env) as bot:`` starts the bot and waits until it is ready."""

    def __init__(self, env: dict[str, str], *args: str, ready: bool = True) -> None:
        self.env = env
        self.args = args
        self.wait_ready = ready
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            *self.args,
            cwd=REPO,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read())
        if self.wait_ready:
            try:
                await asyncio.wait_for(self._ready.wait(), 30)
            except TimeoutError:
                raise AssertionError(f"the bot did not get ready:\n{self.log}") from None

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if "ready: connected as" in line:
                self._ready.set()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 30) -> int:  # noqa: ASYNC109
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)
        return code

    async def __aenter__(self) -> BotProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.signal(signal.SIGKILL)
            await self.wait(10)
