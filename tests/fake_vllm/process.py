"""Run `python -m tests.fake_vllm` as a child process and drive it through `/_control/*`."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from .script import Script

REPO = Path(__file__).resolve().parents[2]


class FakeVLLMProcess:
    """`async with FakeVLLMProcess("--max-model-len", "512", "--rate", "20") as fake:`."""

    def __init__(self, *args: str, ready_within: float = 30.0) -> None:
        self.args = args
        self.ready_within = ready_within
        self.port = self.control_port = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._http: httpx.AsyncClient | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    async def __aenter__(self) -> FakeVLLMProcess:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.fake_vllm", *self.args,
            cwd=REPO, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self._proc.stdout is not None
        async with asyncio.timeout(self.ready_within):
            line = await self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fake vLLM exited with {await self._proc.wait()}")
        ready = json.loads(line)
        self.port, self.control_port = ready["port"], ready["control_port"]
        self._http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.control_port}/_control")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await self._proc.wait()
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()

    async def control(self, method: str, path: str, **kwargs: Any) -> Any:
        assert self._http is not None
        response = await self._http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    async def push(self, *scripts: Script) -> None:
        await self.control("POST", "/push", json=[dataclasses.asdict(s) for s in scripts])

    async def set_default(self, script: Script) -> None:
        await self.control("PUT", "/default", json=dataclasses.asdict(script))

    async def stats(self) -> dict[str, Any]:
        return dict(await self.control("GET", "/stats"))

    async def next_disconnect(self, within: float = 2.0) -> dict[str, Any]:
        params = {"within": within}
        reply = await self.control("GET", "/next_disconnect", params=params, timeout=within + 5)
        return dict(reply)

    async def stop_listening(self, seconds: float | None = None) -> None:
        params = {} if seconds is None else {"seconds": seconds}
        await self.control("POST", "/stop_listening", params=params)

    async def resume_listening(self) -> None:
        await self.control("POST", "/resume_listening")
