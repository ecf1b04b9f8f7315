"""Streaming into Discord under load: edit pacing (D3) and 429 storms (D4).

Both run on the wall clock (pacing is the point), with the production edit interval of 1 s.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from typing import Any

from tests.discord_server import RequestRecord
from tests.fake_vllm import FakeVLLM, Script
from tests.harness import Env, running_bot
from tests.reliability.helpers import model_asked, until_all_finished

WRITES = (
    "POST /channels/{channel_id}/messages",
    "PATCH /channels/{channel_id}/messages/{message_id}",
)
CHANNEL_WRITES, CHANNEL_WINDOW = 4, 5.0
# Request arrival at the fake lags the bot's pacing decision by a few ms, unevenly.
CLOCK_SLACK = 0.05


def seed_for(name: str) -> int:
    seed = int(os.environ.get("RELIABILITY_SEED") or random.randrange(1 << 30))
    print(f"{name}: seed {seed} (rerun with RELIABILITY_SEED={seed})")
    return seed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best = 0
    for i, start in enumerate(times):
        best = max(best, sum(1 for t in times[i:] if t < start + window))
    return best


def message_id_of(r: RequestRecord) -> int | None:
    if r.method == "PATCH":
        return int(r.params["message_id"])
    return int(r.response["id"]) if isinstance(r.response, dict) and "id" in r.response else None


def stream_figures(env: Env, vllm: FakeVLLM, asked: dict[str, Any], texts: dict[str, str]):
    """Per reply: its writes, whether its final text landed, and last token → final write."""
    fake = env.fake
    writes = [r for r in fake.requests if r.route in WRITES and r.status < 300]
    by_message: dict[int, list[RequestRecord]] = {}
    for r in writes:
        mid = message_id_of(r)
        if mid is not None:
            by_message.setdefault(mid, []).append(r)
    lags, gaps, lost = [], [], []
    for marker, msg in asked.items():
        parts = env.parts(msg)
        text = texts[marker]
        if "".join(p.content for p in parts) != text:
            lost.append(marker)
            continue
        mine = sorted((r for p in parts for r in by_message.get(p.id, [])), key=lambda r: r.at)
        gaps += [b.at - a.at for a, b in zip(mine, mine[1:])]
        request = next(r for r in vllm.chat_requests if marker in str(r.body))
        final = next(r for r in reversed(mine) if r.json.get("content") == parts[-1].content)
        lags.append(final.done_at - request.last_byte_at)
    per_channel: dict[str, list[float]] = {}
    for r in writes:
        per_channel.setdefault(r.params["channel_id"], []).append(r.at)
    window = max(
        (max_in_window(t, CHANNEL_WINDOW - CLOCK_SLACK) for t in per_channel.values()), default=0
    )
    return writes, lags, gaps, lost, window


async def test_d3_twenty_streams_in_two_channels_are_paced(fake_discord, tmp_path, figures):
    """20 streams at 25 tok/s in 2 channels, started together: the plan's load, shortened from
    60 s to streams of 4-22 s to keep the suite within its budget.

    Adapted figure. A channel takes 4 writes per 5 s; with 10 replies streaming in it that
    budget is always in use, so a final text waits for the oldest write to leave the window:
    up to 5 s, whatever the bot does. The bot's part is to send finals ahead of every
    intermediate edit, which bounds the lag by one window plus one edit interval (instead of
    the plan's 2 s, reachable only in a channel the streams do not saturate). The ends are
    spread 2 s apart per channel, as real replies' are; ends closer than the channel's budget
    (0.8 a second) would queue behind each other, whatever the pacing.
    """
    rng = random.Random(seed_for("D3"))
    fake = fake_discord
    world = await fake.basic_world()
    channels = [world.channel, await fake.create_channel(world.guild, "second")]
    users = [await fake.create_user(f"streamer{i}") for i in range(20)]
    for u in users:
        await fake.add_member(world.guild, u)
    interval = 1.0  # production edit interval
    texts: dict[str, str] = {}
    async with (
        FakeVLLM(model="tiny", max_model_len=8192) as vllm,
        running_bot(
            fake,
            vllm,
            world,
            tmp_path / "bot.sqlite3",
            discord={"edit_interval": interval},
            limits={"max_concurrency": 20},
        ) as env,
    ):
        asked = {}
        started = time.monotonic()
        per_channel = [[4.0 + 2 * k for k in range(10)] for _ in channels]  # 4, 6, ... 22 s
        for order in per_channel:
            rng.shuffle(order)
        lengths = [per_channel[i % 2][i // 2] for i in range(len(users))]
        for i, user in enumerate(users):
            marker = f"stream-{i}-marker"
            seconds = lengths[i] + rng.uniform(-0.2, 0.2)
            # short tokens: one Discord message per reply, so gaps are per message
            texts[marker] = "".join(f" w{rng.randint(0, 9)}" for _ in range(round(25 * seconds)))
            vllm.push(Script(text=texts[marker], rate=25))
            before = vllm.attempts
            asked[marker] = await fake.user_sends(channels[i % 2], user, marker, mentions_bot=True)
            await model_asked(vllm, before)  # one at a time: scripts map to turns
        texts = {m: t.rstrip() for m, t in texts.items()}
        await until_all_finished(env, len(users), timeout=60)
        elapsed = time.monotonic() - started
        writes, lags, gaps, lost, window = stream_figures(env, vllm, asked, texts)
    figures["D3"] = {
        "streams": len(users),
        "seconds": round(elapsed, 1),
        "edit_interval": interval,
        "writes": len(writes),
        "min_write_gap_per_reply": round(min(gaps), 3),
        "max_writes_per_channel_5s": window,
        "final_delivered_pct": 100 * (len(users) - len(lost)) / len(users),
        "final_lag_p50": round(statistics.median(lags), 2),
        "final_lag_p95": round(percentile(lags, 0.95), 2),
        "final_lag_max": round(max(lags), 2),
    }
    assert lost == []
    assert min(gaps) >= interval - CLOCK_SLACK
    assert window <= CHANNEL_WRITES
    assert percentile(lags, 0.95) <= CHANNEL_WINDOW + interval


async def test_d4_429_storm_loses_no_final_and_respects_every_window(
    fake_discord, tmp_path, figures
):
    """30% of message edits answered 429 (user scope, retry_after 2-5 s, with Via), and one
    global 429. The fake records any request inside an announced window as a violation (the
    fixture fails the test on it)."""
    rng = random.Random(seed_for("D4"))
    fake = fake_discord
    world = await fake.basic_world()
    channels = [world.channel] + [await fake.create_channel(world.guild, f"c{i}") for i in range(7)]
    users = [await fake.create_user(f"u{i}") for i in range(16)]
    for u in users:
        await fake.add_member(world.guild, u)
    texts: dict[str, str] = {}
    async with (
        FakeVLLM(model="tiny", max_model_len=8192) as vllm,
        running_bot(
            fake,
            vllm,
            world,
            tmp_path / "bot.sqlite3",
            discord={"edit_interval": 0.5},
            limits={"max_concurrency": 16},
        ) as env,
    ):
        # The global 429, alone on the wire (a request already in flight when it is
        # announced could not have known).
        fake.rate_limit("POST", "/channels/*/messages", 1.0, scope="global", times=1)
        texts["global-marker"] = "answered after a global rate limit"
        vllm.push(Script(text=texts["global-marker"]))
        first = await fake.user_sends(
            world.channel, world.alice, "global-marker", mentions_bot=True
        )
        asked = {"global-marker": first}
        await until_all_finished(env, 1, timeout=15)
        # p = 0.113 for each of three windows: 1 - (1 - p)^3 = 30% of edits get a 429
        storm = [
            fake.rate_limit("PATCH", "/channels/*/messages/*", after, times=None, probability=0.113)
            for after in (2.0, 3.5, 5.0)
        ]
        for i, user in enumerate(users):
            marker = f"storm-{i}-marker"
            long = i % 4 == 0  # some replies span two messages
            words = 500 if long else 240
            texts[marker] = "".join(f" word{rng.randint(0, 99)}" for _ in range(words))
            vllm.push(Script(text=texts[marker], rate=40 if not long else 80))
            before = vllm.attempts
            asked[marker] = await fake.user_sends(
                channels[i % len(channels)], user, marker, mentions_bot=True
            )
            await model_asked(vllm, before)  # one at a time: scripts map to turns
        texts = {m: t.rstrip() for m, t in texts.items()}
        await until_all_finished(env, len(asked), timeout=120)
        for fault in storm:
            fault.times = fault.hits  # the storm is over
        # Worst case of a storm: the final text refused five times in a row, when
        # discord.py gives up on it. The bot tries again rather than leave it unsent.
        # (A reply cut by the model server: its final text, with the mark, differs from
        # everything streamed before, so the refusals can target it alone.)
        unlucky = await fake.create_channel(world.guild, "unlucky")
        vllm.push(Script(text="one two three four", rate=4, cut_after=4, cut="rst"))
        msg = await fake.user_sends(unlucky, world.bob, "unlucky-marker", mentions_bot=True)
        await fake.wait_until(lambda: env.parts(msg), 10, "the first message")
        refused = fake.rate_limit("PATCH", f"/channels/{unlucky.id}/messages/*", 0.05, times=None)

        def refusals_of_final() -> int:
            return sum(
                1
                for r in fake.requests
                if r.fault is refused and "interrupted" in (r.json or {}).get("content", "")
            )

        await fake.wait_until(lambda: refusals_of_final() >= 5, 15, "five refusals")
        refused.times = refused.hits  # the storm is over
        await until_all_finished(env, len(asked) + 1, timeout=30)
        unlucky_final = env.parts(msg)[-1].content
        writes, lags, _gaps, lost, window = stream_figures(env, vllm, asked, texts)
        statuses = env.rows("SELECT status, count(*) FROM messages GROUP BY status")
    edits = [r for r in writes if r.method == "PATCH"]
    answered_429 = [r for r in fake.requests if r.status == 429]
    injected = sum(f.hits for f in storm) + 1 + refused.hits
    unlucky_delivered = "interrupted" in unlucky_final
    unprovoked = [r for r in fake.requests if r.status in (401, 403, 429) and r.fault is None]
    figures["D4"] = {
        "replies": len(asked) + 1,
        "edits_landed": len(edits),
        "requests": len(fake.requests),
        "answered_429": len(answered_429),
        "injected_429": injected,
        "edit_429_share": round(
            sum(f.hits for f in storm) / max(1, sum(f.hits for f in storm) + len(edits)), 2
        ),
        "requests_inside_retry_window": sum(
            "retry_after window" in v.text for v in fake.violations
        ),
        "unprovoked_invalid_requests": len(unprovoked),
        "lost_finals": len(lost) + (not unlucky_delivered),
        "final_refused_5_times_then_delivered": unlucky_delivered,
        "final_lag_p95": round(percentile(lags, 0.95), 2),
        "max_writes_per_channel_5s": window,
        "statuses": dict(statuses),
    }
    assert lost == []
    assert unlucky_delivered, unlucky_final
    assert dict(statuses) == {"done": 2 * len(asked), "interrupted": 2}
    assert len(answered_429) == injected >= 10  # the storm happened
    assert unprovoked == []
    # Not asserted here: the channel window. discord.py retries a 429'd edit when Discord says
    # it may, after the pacer counted that write at its first attempt, so landed writes can
    # bunch up (D3 checks the window without faults).
