"""Figure 5: the bot process's resident memory with 10,000 sessions stored and 100 conversations
active, against the same bot idle on an empty database (the baseline, in the same run).

The database is seeded with 10,000 sessions of 10 answered turns (200,000 messages); 100 of
them belong to the users and channels of the test Discord server, and those 100 conversations
then talk at once (``python -m bot`` with room for 100 concurrent generations), each reply
streamed by the scripted vLLM at 50 tokens/s so that all are in flight together. RSS is
sampled every 50 ms from /proc; the figure is the peak.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from bench.common import Row
from bench.corpus import TextPool, create_schema, seed_sessions
from bench.procs import BotRun, bench_env
from bench.turns import Rig
from tests.fake_vllm import FakeVLLMProcess

SESSIONS, TURNS_EACH = 10_000, 10
ACTIVE, TURNS_ACTIVE = 100, 3
MB = 1024 * 1024


def _seed(path: Path, rig: Rig) -> None:
    con = create_schema(path)
    seeded = seed_sessions(con, TextPool(None, seed=8), sessions=SESSIONS, turns=TURNS_EACH)
    guild = rig.guild.id
    for sid, channel, user in zip(seeded.sessions, rig.all_channels, rig.users, strict=False):
        con.execute(
            "UPDATE sessions SET scope_key = ?, guild_id = ?, channel_id = ?, user_id = ?"
            " WHERE id = ?",
            (f"channel:{channel.id}:{user.id}", guild, channel.id, user.id, sid),
        )
    con.close()


async def _peak_while(bot: BotRun, work: asyncio.Future[Any]) -> int:
    peak = bot.rss()
    while not work.done():
        peak = max(peak, bot.rss())
        await asyncio.sleep(0.05)
    await work
    return max(peak, bot.rss())


async def measure(workdir: Path) -> dict[str, float]:
    loaded, empty = Rig("memory", channels=ACTIVE, users=ACTIVE), Rig("idle", channels=1, users=1)
    await loaded.start()
    await empty.start()
    db = workdir / "memory.sqlite3"
    await asyncio.to_thread(_seed, db, loaded)
    try:
        async with FakeVLLMProcess(
            "--max-model-len", "8192", "--tokens", "100", "--rate", "50"
        ) as vllm:
            extra = {"LIMITS_MAX_CONCURRENCY": ACTIVE}
            bot = BotRun(bench_env(loaded.fake, vllm, db, **extra))
            idle = BotRun(bench_env(empty.fake, vllm, workdir / "empty.sqlite3", **extra))
            await bot.start()
            await idle.start()
            try:
                await asyncio.sleep(1.0)  # the model watcher's first request, then quiet
                idle_rss, loaded_idle_rss = idle.rss(), bot.rss()

                async def conversation(k: int) -> None:
                    for t in range(TURNS_ACTIVE):
                        await loaded.turn(k, f"m{k}x{t}", loaded.all_channels[k])

                work = asyncio.ensure_future(
                    asyncio.gather(*(conversation(k) for k in range(ACTIVE)))
                )
                peak = await _peak_while(bot, work)
                after = bot.rss()
            finally:
                await bot.stop()
                await idle.stop()
    finally:
        await loaded.close()
        await empty.close()
    con = sqlite3.connect(db)
    sessions = con.execute("SELECT count(*) FROM sessions").fetchone()[0]
    messages = con.execute("SELECT count(*) FROM messages").fetchone()[0]
    con.close()
    return {
        "peak_mb": peak / MB,
        "after_mb": after / MB,
        "loaded_idle_mb": loaded_idle_rss / MB,
        "empty_idle_mb": idle_rss / MB,
        "sessions": sessions,
        "messages": messages,
        "active": ACTIVE,
        "turns": ACTIVE * TURNS_ACTIVE,
    }


def rows(r: dict[str, float]) -> list[Row]:
    return [
        Row("5", f"RSS, {SESSIONS:,} sessions stored, {ACTIVE} conversations active",
            f"{r['peak_mb']:.0f} MB", f"{r['empty_idle_mb']:.0f} MB (idle, empty database)",
            f"{r['peak_mb'] / r['empty_idle_mb']:.2f}x", "<= 150 MB", r["peak_mb"] <= 150,
            note=f"peak while {ACTIVE} replies streamed at once; {r['loaded_idle_mb']:.0f} MB idle"
            f" before them, {r['after_mb']:.0f} MB after ({int(r['messages']):,} messages)",
            data=dict(r)),
    ]  # fmt: skip
