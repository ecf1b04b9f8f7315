"""Long-running behaviour: the soak (R1) and event-loop responsiveness (R7).

R1 runs the real ``python -m bot`` for ``SOAK_SECONDS`` (default 180: the CI variant of the
plan's 10 minutes; ``SOAK_SECONDS=600 make reliability`` for the full one) with 20 concurrent
conversations, random reactions, deletes and slash commands, and a model server at 25 tok/s
with about 2 % random faults.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import os
import random
import re
import signal
import socket
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.discord_server import FakeDiscord, Perm
from tests.fake_vllm import FakeVLLM, Script
from tests.harness import running_bot
from tests.process import BotProcess, bot_env
from tests.reliability.helpers import POST, TYPING, pct, rss_mb

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "180"))
TERMINAL = {"done", "interrupted", "failed", "cancelled"}
NOTICE_WORDS = ("busy", "still answering", "quickly", "storage error")


def slope_per_10_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB per 10 minutes."""
    n = len(samples)
    if n < 3:
        return 0.0
    mx = sum(t for t, _ in samples) / n
    my = sum(v for _, v in samples) / n
    var = sum((t - mx) ** 2 for t, _ in samples)
    cov = sum((t - mx) * (v - my) for t, v in samples)
    return cov / var * 600 if var else 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def scrape(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    assert match, name
    return float(match.group(1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FaultyVLLM(FakeVLLM):
    """A model at 25 tok/s whose every request has a ``fault_rate`` chance of going wrong."""

    def __init__(self, rng: random.Random, fault_rate: float, **options: Any) -> None:
        self._rng = rng
        self.fault_rate = fault_rate
        self.faults: collections.Counter[str] = collections.Counter()
        super().__init__(**options)

    @property  # type: ignore[override]
    def default(self) -> Script:
        rng = self._rng
        tokens = rng.randint(10, 50)
        if rng.random() >= self.fault_rate:
            return Script(tokens=tokens, rate=25)
        kind = rng.choice(["rst", "stall", "503", "in-band-error", "clean-close", "malformed"])
        self.faults[kind] += 1
        k = rng.randint(0, tokens)
        return {
            "rst": Script(tokens=tokens, rate=25, cut_after=k, cut="rst"),
            "stall": Script(tokens=tokens, rate=25, cut_after=k, cut="stall"),
            "503": Script(status=503),
            "in-band-error": Script(tokens=tokens, rate=25, cut_after=k, cut="error"),
            "clean-close": Script(tokens=tokens, rate=25, cut_after=k, cut="clean"),
            "malformed": Script(tokens=tokens, rate=25, inject_after=k),
        }[kind]

    @default.setter
    def default(self, value: Script) -> None:
        pass  # the default is drawn per request


class Watch:
    """The fake Discord's log, read incrementally: first visible feedback per channel after a
    given instant, and the bot's answers (reply parts and notices) per user message."""

    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake
        self._seen = 0
        self.visible: dict[str, list[float]] = collections.defaultdict(list)  # channel -> times
        self.first_post: dict[int, str] = {}  # user message -> bot message id
        self.answers: dict[int, list[str]] = collections.defaultdict(list)  # user msg -> texts

    def scan(self) -> None:
        requests = self.fake.requests
        for r in requests[self._seen :]:
            if r.status >= 300:
                continue
            if r.route in (TYPING, POST):
                self.visible[r.params["channel_id"]].append(r.at)
            if r.route == POST and isinstance(r.json, dict):
                ref = r.json.get("message_reference") or {}
                if ref.get("message_id") is not None:
                    user_msg, content = int(ref["message_id"]), str(r.json.get("content") or "")
                    if not any(n in content for n in NOTICE_WORDS):  # the reply, not a note
                        self.first_post.setdefault(user_msg, str(r.response["id"]))
                    self.answers[user_msg].append(content)
        self._seen = len(requests)

    def first_visible_after(self, channel_id: int, t: float) -> float | None:
        times = [x for x in self.visible.get(str(channel_id), []) if x >= t]
        return min(times) - t if times else None


@pytest.mark.timeout(SOAK_SECONDS + 300)
async def test_r1_soak(fake_discord, tmp_path, figures, counter):
    fake = fake_discord
    seed = int(os.environ.get("SOAK_SEED", str(random.randrange(1_000_000))))
    rng = random.Random(seed)
    print(f"R1 seed {seed}, {SOAK_SECONDS:.0f} s")
    w = await fake.basic_world()
    convs: list[tuple[Any, Any, bool]] = []  # (user, channel, is_dm)
    for i in range(20):
        u = await fake.create_user(f"soak{i}")
        await fake.add_member(w.guild, u)
        if i % 5 == 4:
            convs.append((u, await fake.open_dm(u), True))
        else:
            convs.append((u, await fake.create_channel(w.guild, f"soak{i}"), False))
    db = tmp_path / "bot.sqlite3"
    port = free_port()
    watch = Watch(fake)
    sent: list[tuple[Any, float]] = []
    deleted: set[int] = set()
    slash_acks: list[float] = []
    slash_failures: list[str] = []
    reactions: dict[tuple[str, int], int] = {}  # (bot message id, user) -> score
    statuses: dict[int, str] = {}
    stop = asyncio.Event()

    def read_statuses() -> None:
        con = sqlite3.connect(db, timeout=5)
        try:
            now = con.execute(
                "SELECT discord_message_id, status FROM messages WHERE role = 'user'"
            ).fetchall()
        finally:
            con.close()
        statuses.clear()
        statuses.update(now)

    polling = True

    async def poll_db() -> None:
        while polling:
            with contextlib.suppress(sqlite3.OperationalError):
                read_statuses()
            watch.scan()
            await asyncio.sleep(0.2)

    def settled(msg: Any) -> bool:
        if statuses.get(msg.id) in TERMINAL:
            return True
        return any(any(n in t for n in NOTICE_WORDS) for t in watch.answers.get(msg.id, []))

    async def conversation(user: Any, channel: Any, is_dm: bool, warm: bool = False) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            text = f"message {n} from {user.name}: " + " ".join(
                rng.choice(["tell", "me", "about", "the", "sea", "and", "ships"])
                for _ in range(rng.randint(3, 30))
            )
            t0 = time.monotonic()
            msg = await fake.user_sends(channel, user, text, mentions_bot=not is_dm)
            sent.append((msg, t0))
            if not warm and rng.random() < 0.03:  # withdrawn mid-stream (or just after)
                await asyncio.sleep(rng.uniform(0.2, 1.5))
                await fake.user_deletes(msg)
                deleted.add(msg.id)
            deadline = time.monotonic() + 60
            while not settled(msg) and msg.id not in deleted and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            part_id = watch.first_post.get(msg.id)
            answered = statuses.get(msg.id) in TERMINAL  # a reply, not a notice
            part = fake.world.messages.get(int(part_id)) if part_id and answered else None
            if not warm and part is not None and msg.id not in deleted and rng.random() < 0.3:
                await asyncio.sleep(rng.uniform(0.3, 1.0))  # a human sees it, then reacts
                emoji, score = rng.choice([("👍", 1), ("👎", -1)])
                await fake.add_reaction(user, part, emoji)
                reactions[(str(part.id), user.id)] = score
            if not warm and rng.random() < 0.05:
                await slash(user, channel)
            if warm:
                return
            await asyncio.sleep(rng.uniform(0.5, 2.0))

    async def slash(user: Any, channel: Any) -> None:
        name = rng.choice(["help", ("settings", "show"), "mydata", "status", "reset"])
        perms = int(Perm.DEFAULT | Perm.MANAGE_GUILD) if name == "status" else None
        handle = await fake.invoke_slash(name, {}, user=user, channel=channel, permissions=perms)
        try:
            await handle.wait_for_callback()
            slash_acks.append(handle.ack_latency)
        except Exception as exc:  # recorded and asserted below
            slash_failures.append(f"{name}: {exc!r}")

    # Conversations with a long past (~3 MB in all): their first turns read it, so SQLite's page
    # cache (2 MB a connection) is full before the measurement instead of filling during it.
    await asyncio.to_thread(_seed_histories, db, convs, counter)
    async with FaultyVLLM(rng, 0.02, model="tiny", max_model_len=8192) as vllm:
        env = bot_env(
            fake,
            vllm,
            db,
            METRICS_PORT=port,
            LLM_READ_TIMEOUT=4,
            LIMITS_MAX_CONCURRENCY=8,
            DISCORD_EDIT_INTERVAL=1.0,  # production pacing for a production-like run
        )
        async with BotProcess(env) as bot:
            assert bot.proc is not None
            pid = bot.proc.pid
            poller = asyncio.create_task(poll_db())
            # warm-up: one turn per conversation, so pools and caches exist for the baseline
            await asyncio.gather(*(conversation(u, c, dm, warm=True) for u, c, dm in convs))
            # ...and chatter the bot is not asked to answer, as any server has: discord.py keeps
            # the last 1000 messages it saw, a cache that would otherwise fill during the run
            for i in range(1200):
                user, channel, is_dm = convs[i % len(convs)]
                if not is_dm:
                    chatter = f"chatter {i} " + "so what do you all think about it " * (i % 8 + 1)
                    await fake.user_sends(channel, user, chatter)
            # idle keep-alive connections close (vLLM client 4 s, discord.py's aiohttp 15 s)
            await asyncio.sleep(16)
            base_fds, base_tasks = open_fds(pid), scrape(port, "bot_event_loop_tasks")
            base_rss = rss_mb(pid)
            rss: list[tuple[float, float]] = []
            started = time.monotonic()

            async def sample_rss() -> None:
                while not stop.is_set():
                    rss.append((time.monotonic() - started, rss_mb(pid)))
                    await asyncio.sleep(2.0)

            sampler = asyncio.create_task(sample_rss())
            loops = [asyncio.create_task(conversation(u, c, dm)) for u, c, dm in convs]
            await asyncio.sleep(SOAK_SECONDS)
            stop.set()
            stopped = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*loops), 90)
            polling = False
            print(f"R1 loops ended {time.monotonic() - stopped:.1f} s after the stop")
            await sampler
            poller.cancel()
            # quiet: every turn ends, then resources must come back to the baseline
            quiet_from = time.monotonic()
            deadline = time.monotonic() + 25
            while time.monotonic() < deadline:
                end_fds, end_tasks = open_fds(pid), scrape(port, "bot_event_loop_tasks")
                if end_fds <= base_fds and end_tasks <= base_tasks:
                    break
                await asyncio.sleep(0.5)
            quiet_s = time.monotonic() - quiet_from
            end_rss = rss_mb(pid)
            read_statuses()
            watch.scan()
            bot.signal(signal.SIGTERM)
            code = await bot.wait(30)
            print(f"R1 exit {time.monotonic() - stopped:.1f} s after the stop")
        log = bot.log

    # -- every user message: exactly one terminal outcome --------------------------------
    con = sqlite3.connect(db)
    replies_per_msg = dict(
        con.execute(
            "SELECT u.discord_message_id, count(a.id) FROM messages u"
            " LEFT JOIN messages a ON a.reply_to = u.id WHERE u.role = 'user'"
            " GROUP BY u.discord_message_id"
        ).fetchall()
    )
    feedback = dict(
        ((str(p), u), s)
        for p, u, s in con.execute(
            "SELECT p.discord_message_id, f.user_id, f.score FROM feedback f"
            " JOIN reply_parts p ON p.message_id = f.message_id"
        ).fetchall()
    )
    status_counts = dict(
        con.execute(
            "SELECT status, count(*) FROM messages WHERE role = 'user'"
            " AND discord_message_id IS NOT NULL GROUP BY status"  # not the seeded past
        ).fetchall()
    )
    con.close()
    lost, doubled = [], []
    for msg, _ in sent:
        stored = statuses.get(msg.id)
        notices = [t for t in watch.answers.get(msg.id, []) if any(n in t for n in NOTICE_WORDS)]
        if msg.id in deleted:
            if stored is not None:
                lost.append((msg.id, "deleted but still stored", stored))
            continue
        outcomes = (stored in TERMINAL) + (stored is None and len(notices) == 1)
        if outcomes != 1:
            lost.append((msg.id, stored, notices))
        if replies_per_msg.get(msg.id, 0) > 1:
            doubled.append(msg.id)
    feedback_mismatch = {k: v for k, v in reactions.items() if feedback.get(k) != v}
    first_visible = [
        watch.first_visible_after(msg.channel_id, t0) for msg, t0 in sent if msg.id not in deleted
    ]
    missing_visible = sum(1 for v in first_visible if v is None)
    visible = [v for v in first_visible if v is not None]
    errors = [
        line
        for line in log.splitlines()
        if " ERROR " in line
        or " CRITICAL " in line
        or "Traceback" in line
        or "never retrieved" in line
        or "was destroyed" in line
    ]
    # RSS slope over the second half. A fresh process keeps growing for its first ~3 minutes
    # of this traffic and then levels off (measured with SOAK_SECONDS=600: +5.6 MB by 180 s,
    # then 1.3 MB per 10 min): allocator arenas, lazily loaded code paths, bounded caches
    # (SQLite's 2 MB page cache, discord.py's last 1000 messages, the bot's last 4096 message
    # ids). So the plan's bound (<= 5 MB per 10 min) is asserted on the plan's 10-minute run;
    # the 3-minute CI variant, still inside that warm-up, asserts that growth levels off (the
    # last third grows at most half as fast as the first, or within the bound anyway) and
    # stays small in total. A leak grows linearly and fails either way.
    steady = [s for s in rss if s[0] >= SOAK_SECONDS / 2]
    slope = slope_per_10_min(steady)
    third = SOAK_SECONDS / 3
    first_third = slope_per_10_min([s for s in rss if s[0] <= third])
    last_third = slope_per_10_min([s for s in rss if s[0] >= 2 * third])
    figures["R1"] = {
        "seconds_of_load": SOAK_SECONDS,
        "seed": seed,
        "conversations": len(convs),
        "user_messages": len(sent),
        "statuses": status_counts,
        "deleted_by_users": len(deleted),
        "notices": dict(
            collections.Counter(
                next((n for n in NOTICE_WORDS if n in t), t[:40])
                for msg, _ in sent
                if statuses.get(msg.id) is None and msg.id not in deleted
                for t in watch.answers.get(msg.id, [])
            )
        ),
        "lost_messages": len(lost),
        "duplicate_replies": len(doubled),
        "faults_injected": dict(vllm.faults),
        "upstream_requests": vllm.attempts,
        "reactions": len(reactions),
        "feedback_mismatches": len(feedback_mismatch),
        "slash_commands": len(slash_acks),
        "slash_ack_p95_s": round(pct(slash_acks, 95), 3),
        "unhandled_errors_in_log": len(errors),
        "first_visible_p50_s": round(pct(visible, 50), 3),
        "first_visible_p95_s": round(pct(visible, 95), 3),
        "rss_start_mb": round(base_rss, 1),
        "rss_end_mb": round(end_rss, 1),
        "rss_slope_mb_per_10min": round(slope, 2),
        "rss_slope_first_third_mb_per_10min": round(first_third, 2),
        "rss_slope_last_third_mb_per_10min": round(last_third, 2),
        "rss_every_20s_mb": [round(v, 1) for t, v in rss[::10]],
        "fds_baseline": base_fds,
        "fds_end": end_fds,
        "tasks_baseline": base_tasks,
        "tasks_end": end_tasks,
        "seconds_to_quiet": round(quiet_s, 1),
    }
    assert code == 0, log[-3000:]
    assert lost == [] and doubled == [], (lost[:10], doubled[:10])
    assert errors == [], errors[:10]
    assert slash_failures == [], slash_failures
    assert feedback_mismatch == {}, list(feedback_mismatch.items())[:10]
    assert missing_visible == 0 and pct(visible, 95) <= 2.0, (missing_visible, pct(visible, 95))
    if SOAK_SECONDS >= 600:
        assert slope <= 5.0, (slope, rss)
    else:
        assert last_third <= max(5.0, first_third / 2), (first_third, last_third, rss)
        assert end_rss - base_rss <= 15, (base_rss, end_rss)
    assert end_fds <= base_fds, (base_fds, end_fds)
    assert end_tasks <= base_tasks, (base_tasks, end_tasks)


def _seed_histories(db: Path, convs: list[tuple[Any, Any, bool]], counter: Any) -> None:
    """60 answered turns (~150 kB) of history for each conversation, stored as the bot would."""
    asyncio.run(_create_schema(db))
    con = sqlite3.connect(db, isolation_level=None)
    now = "2026-11-20T10:00:00.000Z"
    line = "The lighthouse keeper wrote down every ship that passed, and the weather. "
    asked, answered = "what happened next? " + line * 6, line * 26
    tokens = counter.count(asked), counter.count(answered)
    con.execute("BEGIN")
    prompt = con.execute(
        "INSERT INTO system_prompts (text) VALUES ('seeded') RETURNING id"
    ).fetchone()[0]
    for user, channel, is_dm in convs:
        kind = "dm" if is_dm else "channel"
        sid = con.execute(
            "INSERT INTO sessions (scope_key, kind, guild_id, channel_id, user_id, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (f"{kind}:{channel.id}:{user.id}", kind, channel.guild_id, channel.id, user.id, now),
        ).fetchone()[0]
        for _ in range(60):
            uid = con.execute(
                "INSERT INTO messages (session_id, role, status, content, tokens, created_at,"
                " author_id, author_name) VALUES (?, 'user', 'done', ?, ?, ?, ?, ?) RETURNING id",
                (sid, asked, tokens[0], now, user.id, user.name),
            ).fetchone()[0]
            con.execute(
                "INSERT INTO messages (session_id, role, status, content, tokens, created_at,"
                " reply_to, model, system_prompt_id, finish_reason)"
                " VALUES (?, 'assistant', 'done', ?, ?, ?, ?, 'tiny', ?, 'stop')",
                (sid, answered, tokens[1], now, uid, prompt),
            )
    con.execute("COMMIT")
    con.close()


async def _create_schema(db: Path) -> None:
    from bot.store import Store

    store = await Store.open(db)
    await store.close()


# -- R7 event-loop responsiveness -------------------------------------------------------------


async def test_r7_loop_stays_responsive_during_a_big_export_and_a_long_history(
    fake_discord, tmp_path, figures, caplog
):
    """A 100 ms ticker in the bot's own event loop (the bot runs in-process) while an admin
    exports a large feedback log through /export and a 30k-token conversation is answered."""
    fake = fake_discord
    w = await fake.basic_world()
    db = tmp_path / "bot.sqlite3"
    async with (
        FakeVLLM(model="tiny", max_model_len=40_000, default=Script(tokens=40, rate=50)) as vllm,
        running_bot(
            fake, vllm, w, db, chat={"max_tokens": 512}, limits={"max_message_chars": 8000}
        ) as env,
    ):
        warm = await fake.user_sends(w.channel, w.alice, "hello", mentions_bot=True)
        await env.reply_to(warm)
        big_replies, history_tokens = await asyncio.to_thread(_seed_big_database, db, w, env)
        lags: list[float] = []
        ticking = True

        async def ticker() -> None:
            loop = asyncio.get_running_loop()
            while ticking:
                t = loop.time()
                await asyncio.sleep(0.1)
                lags.append(loop.time() - t - 0.1)

        tick = asyncio.create_task(ticker())
        others = [await fake.create_user(f"r7u{i}") for i in range(3)]
        rooms = [await fake.create_channel(w.guild, f"r7r{i}") for i in range(3)]
        for u in others:
            await fake.add_member(w.guild, u)
        started = time.monotonic()
        export = await fake.invoke_slash(
            "export",
            {"format": "jsonl"},
            user=w.alice,
            channel=w.channel,
            permissions=int(Perm.DEFAULT | Perm.MANAGE_GUILD),
        )
        long_turn = await fake.user_sends(
            w.channel,
            w.bob,
            "summarise our whole conversation " + "please " * 1000,
            mentions_bot=True,
        )
        traffic = [
            await fake.user_sends(room, u, "quick question", mentions_bot=True)
            for room, u in zip(rooms, others)
        ]
        followup = await export.wait_for_followup(0, timeout=120)
        export_s = time.monotonic() - started
        await env.reply_to(long_turn, timeout=60)
        for m in traffic:
            await env.reply_to(m, timeout=60)
        ticking = False
        await tick
        prompt_tokens = max(r.prompt_tokens for r in vllm.chat_requests)
        upload = sum(len(f.data) for f in followup.files)
        export_bytes = sum(
            len(gzip.decompress(f.data) if f.filename.endswith(".gz") else f.data)
            for f in followup.files
        )
    blocked = [r.getMessage() for r in caplog.records if "heartbeat blocked" in r.getMessage()]
    assert followup.files, followup.content
    assert prompt_tokens >= 30_000
    assert max(lags) <= 0.25, (max(lags), sorted(lags)[-5:])
    assert blocked == []
    figures["R7"] = {
        "export_replies": big_replies,
        "export_seconds": round(export_s, 2),
        "export_bytes": export_bytes,
        "export_upload_bytes": upload,
        "history_tokens_sent": prompt_tokens,
        "history_tokens_estimated": history_tokens,
        "ticks": len(lags),
        "max_lag_ms": round(max(lags) * 1000, 1),
        "p99_lag_ms": round(pct(lags, 99) * 1000, 1),
        "heartbeat_blocked_warnings": len(blocked),
    }


def _seed_big_database(db: Path, w: Any, env: Any) -> tuple[int, int]:
    """Insert (from another connection, like an import would) 200 sessions of 30 rated turns
    in the guild, and a 30k-token history for bob in #general."""
    con = sqlite3.connect(db, timeout=30, isolation_level=None)
    counter = env.app.engine.counter
    prompt_id = con.execute("SELECT id FROM system_prompts LIMIT 1").fetchone()[0]
    now = "2026-11-20T10:00:00.000Z"
    paragraph = (
        "The harbour was quiet that morning; the ships rocked at anchor while the gulls argued "
        "over scraps. Somebody had left a lantern burning on the pier. "
    )
    replies = 0
    con.execute("BEGIN")

    def session(scope: str, user: int, channel: int) -> int:
        return con.execute(
            "INSERT INTO sessions (scope_key, kind, guild_id, channel_id, user_id, created_at)"
            " VALUES (?, 'channel', ?, ?, ?, ?) RETURNING id",
            (scope, w.guild.id, channel, user, now),
        ).fetchone()[0]

    first: dict[int, int] = {}  # session -> its first message: where the context starts

    def turn(sid: int, user: int, asked: str, answered: str, discord_id: int) -> int:
        uid = con.execute(
            "INSERT INTO messages (session_id, role, status, content, tokens, created_at,"
            " author_id, author_name, discord_message_id) VALUES (?, 'user', 'done', ?, ?, ?,"
            " ?, 'someone', ?) RETURNING id",
            (sid, asked, counter.count(asked), now, user, discord_id),
        ).fetchone()[0]
        start = first.setdefault(sid, uid)
        rid = con.execute(
            "INSERT INTO messages (session_id, role, status, content, tokens, created_at,"
            " reply_to, model, system_prompt_id, temperature, top_p, max_tokens, finish_reason,"
            " context_start_id) VALUES (?, 'assistant', 'done', ?, ?, ?, ?, 'tiny', ?, 0.7, 1.0,"
            " 512, 'stop', ?) RETURNING id",
            (sid, answered, counter.count(answered), now, uid, prompt_id, start),
        ).fetchone()[0]
        con.execute(
            "INSERT INTO reply_parts (discord_message_id, message_id, channel_id, part)"
            " VALUES (?, ?, ?, 0)",
            (discord_id + 1, rid, w.channel.id),
        )
        con.execute(
            "INSERT INTO feedback (message_id, user_id, score, created_at, updated_at)"
            " VALUES (?, ?, 1, ?, ?)",
            (rid, user, now, now),
        )
        return rid

    ids = iter(range(8_000_000_000_000, 9_000_000_000_000, 2))
    for s in range(200):
        sid = session(f"channel:{w.channel.id}:{10_000 + s}", 10_000 + s, w.channel.id)
        for t in range(30):
            turn(sid, 10_000 + s, f"question {t}: " + paragraph, paragraph * 3, next(ids))
            replies += 1
    # bob's own conversation in #general: about 30k tokens of history
    scope = f"channel:{w.channel.id}:{w.bob.id}"
    row = con.execute("SELECT id FROM sessions WHERE scope_key = ?", (scope,)).fetchone()
    sid = row[0] if row else session(scope, w.bob.id, w.channel.id)
    history = 0
    while history < 30_500:
        asked, answered = "and then? " + paragraph, paragraph * 8
        turn(sid, w.bob.id, asked, answered, next(ids))
        history += counter.count(asked) + counter.count(answered) + 8
        replies += 1
    con.execute("COMMIT")
    con.close()
    return replies, history
