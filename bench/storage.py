"""Figure 4: storage latency at scale, through the bot's ``Store`` (aiosqlite, WAL, FULL).

- Load: the history of one session (``Store.load_context``: 50 answered turns, 100 messages)
  from a database of 1,000,000 messages in 10,000 sessions, against the same load from one of
  10,000 messages (the baseline: the cost should not grow with the database).
- Append: 20 sessions writing at once (each a closed loop of ``Store.add_user_message``, one
  commit each at synchronous=FULL) through the bot's single shared connection, against the same
  writers with a connection each (the baseline; facts.md: the worst tails).

The databases are seeded with plain sqlite3 ``executemany`` in the bot's schema.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Row, percentile
from bench.corpus import TextPool, create_schema, seed_sessions
from bot.models import Incoming, Kind, Scope
from bot.store import Store

BIG_SESSIONS, SMALL_SESSIONS, TURNS = 10_000, 100, 50
WRITERS = 20


@dataclass
class Latencies:
    seconds: list[float] = field(default_factory=list)

    def p(self, q: float) -> float:
        return percentile(self.seconds, q)


def seed(path: Path, sessions: int) -> float:
    started = time.monotonic()
    pool = TextPool(None, seed=5, size=4000, lo=10, hi=120)
    con = create_schema(path)
    seed_sessions(con, pool, sessions=sessions, turns=TURNS)
    con.close()
    return time.monotonic() - started


async def _loads(
    stores: dict[str, Store], sessions: dict[str, int], n: int
) -> dict[str, Latencies]:
    rng = random.Random(6)
    out = {name: Latencies() for name in stores}
    for _ in range(n):
        for name, store in stores.items():
            sid = rng.randint(1, sessions[name])
            t0 = time.perf_counter()
            turns = await store.load_context(sid, 0)
            out[name].seconds.append(time.perf_counter() - t0)
            assert len(turns) == TURNS
    return out


async def _appends(stores: list[Store], per_writer: int) -> Latencies:
    """WRITERS closed loops, writer k through stores[k % len(stores)]."""
    out = Latencies()
    ids = itertools.count(5_000_000_000)

    async def writer(k: int) -> None:
        store = stores[k % len(stores)]
        scope = Scope(Kind.CHANNEL, str(k + 1), 1, k + 1)
        session = await store.current_session(scope)
        for _ in range(per_writer):
            incoming = Incoming(scope, "a new message to remember", k + 1, "w", next(ids))
            t0 = time.perf_counter()
            await store.add_user_message(session.id, incoming, 6)
            out.seconds.append(time.perf_counter() - t0)

    await asyncio.gather(*(writer(k) for k in range(WRITERS)))
    return out


async def measure(workdir: Path, loads: int = 400, per_writer: int = 40) -> dict[str, object]:
    big, small = workdir / "storage-1m.sqlite3", workdir / "storage-10k.sqlite3"
    seed_seconds = await asyncio.to_thread(seed, big, BIG_SESSIONS)
    await asyncio.to_thread(seed, small, SMALL_SESSIONS)
    stores = {"1m": await Store.open(big), "10k": await Store.open(small)}
    try:
        load = await _loads(stores, {"1m": BIG_SESSIONS, "10k": SMALL_SESSIONS}, loads)
        shared = await _appends([stores["1m"]], per_writer)
        own = [await Store.open(big) for _ in range(WRITERS)]
        try:
            separate = await _appends(own, per_writer)
        finally:
            for s in own:
                await s.close()
        shared_again = await _appends([stores["1m"]], per_writer)
    finally:
        for s in stores.values():
            await s.close()
    appends = Latencies(shared.seconds + shared_again.seconds)  # before and after the baseline
    return {
        "load": load,
        "append": appends,
        "append_baseline": separate,
        "seed_seconds": seed_seconds,
        "db_bytes": big.stat().st_size,
    }


def rows(result: dict[str, object]) -> list[Row]:
    load = result["load"]
    assert isinstance(load, dict)
    a, b = result["append"], result["append_baseline"]
    assert isinstance(a, Latencies)
    assert isinstance(b, Latencies)
    big, small = load["1m"], load["10k"]
    mb = int(result["db_bytes"]) / 1e6  # type: ignore[call-overload]
    return [
        Row("4", "load one session's history (1M messages)",
            f"p50 {big.p(50) * 1000:.2f} / p99 {big.p(99) * 1000:.2f} ms",
            f"p50 {small.p(50) * 1000:.2f} / p99 {small.p(99) * 1000:.2f} ms (10k messages)",
            f"{big.p(99) / small.p(99):.2f}x", "p99 <= 2 ms", big.p(99) <= 0.002,
            note=f"{TURNS * 2} messages a session; the 1M-message database is {mb:.0f} MB,"
            f" seeded in {result['seed_seconds']:.1f} s",
            data={"1m_ms": _ms(big), "10k_ms": _ms(small), "db_mb": round(mb)}),
        Row("4", f"append, {WRITERS} sessions at once, FULL",
            f"p50 {a.p(50) * 1000:.2f} / p99 {a.p(99) * 1000:.2f} ms",
            f"p50 {b.p(50) * 1000:.2f} / p99 {b.p(99) * 1000:.2f} ms (a connection each)",
            f"{a.p(99) / b.p(99):.2f}x", "p99 <= 10 ms", a.p(99) <= 0.010,
            data={"shared_ms": _ms(a), "connection_each_ms": _ms(b)}),
    ]  # fmt: skip


def _ms(lat: Latencies) -> dict[str, float]:
    return {
        "p50": round(lat.p(50) * 1000, 3),
        "p99": round(lat.p(99) * 1000, 3),
        "max": round(max(lat.seconds) * 1000, 3),
        "n": len(lat.seconds),
    }
