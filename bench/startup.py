"""Figure 6: start-up, from exec of ``python -m bot`` to its "ready: connected as" log line,
with the test Discord server and the scripted vLLM on 127.0.0.1 and a migrated database.

The baseline is a bare discord.py client (``python -m bench.bare_client``) connecting to the
same server: the interpreter, discord.py's import and the gateway handshake, which no bot can
avoid. Started alternately, five times each; medians.
"""

from __future__ import annotations

from pathlib import Path

from bench.common import Row, median
from bench.procs import BotRun, bench_env
from tests.discord_server import FakeDiscord
from tests.fake_vllm import FakeVLLMProcess

STARTS = 5


async def measure(workdir: Path, starts: int = STARTS) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"bot": [], "bare": []}
    db = workdir / "startup.sqlite3"
    async with FakeDiscord() as fake, FakeVLLMProcess("--max-model-len", "8192") as vllm:
        await fake.basic_world()
        env = bench_env(fake, vllm, db)
        await _start_stop(BotRun(env))  # a first start migrates the database and unpacks tiktoken
        for _ in range(starts):
            for name, module in (("bot", "bot"), ("bare", "bench.bare_client")):
                out[name].append(await _start_stop(BotRun(env, module=module)))
    return out


async def _start_stop(run: BotRun) -> float:
    try:
        return await run.start()
    finally:
        await run.stop()


def rows(r: dict[str, list[float]]) -> list[Row]:
    bot, bare = median(r["bot"]), median(r["bare"])
    return [
        Row("6", "start-up: python -m bot to ready", f"{bot:.2f} s",
            f"{bare:.2f} s (bare discord.py client)", f"{bot / bare:.2f}x", "<= 2 s", bot <= 2.0,
            data={"bot_s": [round(x, 3) for x in r["bot"]],
                  "bare_s": [round(x, 3) for x in r["bare"]]}),
    ]  # fmt: skip
