"""The gateway's failure modes: resume with replay and duplicates (D5), invalid session (D6),
loops with other bots (D7), and fatal close codes (D9)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.conftest import REPO
from tests.discord_server import FakeDiscord, Perm
from tests.fake_vllm import FakeVLLM, Script
from tests.harness import Env, running_bot
from tests.process import BotProcess, bot_env

MOD = Perm.DEFAULT | (1 << 4)  # MANAGE_CHANNELS
UNIT = REPO / "systemd" / "vllm-discord-bot.service"


@pytest.fixture
async def vllm():
    async with FakeVLLM(model="tiny", max_model_len=4096, default=Script(text="a reply")) as s:
        yield s


def replies_to(fake: FakeDiscord, message: Any) -> list[Any]:
    """Bot messages that answer ``message`` (its reply's first part references it)."""
    return [
        m
        for m in fake.world.messages.values()
        if m.author.id == fake.bot.id
        and m.reference
        and m.reference.get("message_id") == str(message.id)
    ]


async def settle(env: Env, seconds: float = 0.5) -> None:
    """Wait until no turn runs, then a little longer for stray (duplicate) work to show."""
    chat: Any = env.bot.get_cog("Chat")
    await env.fake.wait_until(lambda: not chat.tasks, 30, "turns to finish")
    await asyncio.sleep(seconds)
    await env.fake.wait_until(lambda: not chat.tasks, 30, "turns to finish")


async def test_d5_resume_replays_and_duplicates_give_one_reply_each(
    fake_discord, vllm, tmp_path, figures
):
    fake = fake_discord
    w = await fake.basic_world()
    others = [await fake.create_user(f"u{i}") for i in range(3)]
    for u in others:
        await fake.add_member(w.guild, u)
    long_text = " ".join(f"token{i}" for i in range(60))
    vllm.push(Script(text=long_text, rate=20))  # ~3 s: the socket drops in the middle
    async with running_bot(fake, vllm, w, tmp_path / "bot.sqlite3") as env:
        first = await fake.user_sends(w.channel, w.alice, "a long answer please", mentions_bot=True)
        await fake.wait_until(lambda: env.parts(first), 5, "the stream to start")
        identifies = fake.gateway.identify_count
        await fake.drop_gateway(code=4000)
        # three messages while the bot is away: Discord replays them after RESUME
        missed = [
            await fake.user_sends(w.channel, u, f"while away {i}", mentions_bot=True)
            for i, u in enumerate(others)
        ]
        await fake.wait_for_resume(1, timeout=15)
        # at-least-once delivery: duplicates, one while its turn runs, others after
        await fake.redeliver(missed[0])
        await fake.redeliver(first)
        await settle(env)
        for m in (first, *missed):
            await fake.redeliver(m)
        await settle(env)
        final = env.parts(first)
    asked = [first, *missed]
    per_message = {m.id: len(replies_to(fake, m)) for m in asked}
    figures["D5"] = {
        "user_messages": len(asked),
        "duplicates_delivered": 6,
        "replayed_events": fake.gateway.replayed,
        "replies_per_message": sorted(per_message.values()),
        "duplicate_replies": sum(n - 1 for n in per_message.values() if n > 1),
        "model_requests": vllm.attempts,
        "extra_identifies": fake.gateway.identify_count - identifies,
        "resumes": fake.gateway.resume_count,
        "in_flight_stream_completed": "".join(p.content for p in final) == long_text,
    }
    assert all(n == 1 for n in per_message.values()), per_message
    assert vllm.attempts == len(asked)
    assert fake.gateway.identify_count == identifies == 1
    assert fake.gateway.replayed >= 3
    assert "".join(p.content for p in final) == long_text


async def test_d6_invalid_session_reidentifies_once_without_resetting_state(
    fake_discord, vllm, tmp_path, figures
):
    fake = fake_discord
    w = await fake.basic_world()
    long_text = " ".join(f"token{i}" for i in range(200))
    async with running_bot(fake, vllm, w, tmp_path / "bot.sqlite3") as env:
        warm = await fake.user_sends(w.channel, w.bob, "hello", mentions_bot=True)
        await env.reply_to(warm)  # served before the long one starts
        vllm.push(Script(text=long_text, rate=25))  # ~8 s: outlives discord.py's 1-5 s back-off
        first = await fake.user_sends(w.channel, w.alice, "a long answer please", mentions_bot=True)
        await fake.wait_until(lambda: env.parts(first), 5, "the stream to start")
        chat = env.bot.get_cog("Chat")
        cogs = dict(env.bot.cogs)
        turns = env.app.engine.turns_started
        task = chat.tasks[first.id]
        started = time.monotonic()
        await fake.invalidate_session(resumable=False)
        await fake.wait_for_identify(2, timeout=15)
        reidentified = time.monotonic() - started
        await fake.wait_until(lambda: env.bot.is_ready(), 10, "ready again")
        after = await fake.user_sends(w.channel, w.bob, "still there?", mentions_bot=True)
        await env.reply_to(after)
        await env.reply_to(first, timeout=20)
        final = env.parts(first)
        same_state = (
            env.bot.get_cog("Chat") is chat
            and dict(env.bot.cogs) == cogs
            and env.app.engine.turns_started == turns + 1
            and task.done()
            and not task.cancelled()
        )
    syncs = [r for r in fake.requests if r.route.endswith("/commands") and r.method == "PUT"]
    figures["D6"] = {
        "identifies": fake.gateway.identify_count,
        "reidentify_seconds": round(reidentified, 2),
        "command_syncs": len(syncs),
        "state_kept": same_state,
        "in_flight_stream_completed": "".join(p.content for p in final) == long_text,
        "served_after": bool(env.parts(after)),
    }
    assert fake.gateway.identify_count == 2
    assert syncs == []
    assert same_state
    assert "".join(p.content for p in final) == long_text


async def test_d7_no_loops_with_bots_webhooks_or_system_messages(
    fake_discord, vllm, tmp_path, figures
):
    fake = fake_discord
    w = await fake.basic_world()
    other = await fake.create_user("OtherBot", bot=True)
    await fake.add_member(w.guild, other)
    hook = await fake.create_webhook("relay")
    async with running_bot(fake, vllm, w, tmp_path / "bot.sqlite3") as env:
        # The riskiest setting: answer every message in the channel, no mention needed.
        for name in ("reply_to_everything", "sharing"):
            h = await fake.invoke_slash(
                ("settings", "set"),
                {
                    "target": "channel",
                    "name": name,
                    "value": "on" if name != "sharing" else "channel",
                },
                user=w.alice,
                channel=w.channel,
                permissions=MOD,
            )
            await h.wait_for_callback()
        human = await fake.user_sends(w.channel, w.alice, "hello everyone")
        (reply,) = await env.reply_to(human)
        # Another bot answers ours, mentions it, replies to it; a webhook relays; the system
        # posts joins, pins and thread notices; the bot's own messages echo back.
        sent = [
            await fake.user_sends(w.channel, other, "Hello fellow bot!", reply_to=reply),
            await fake.user_sends(w.channel, other, "hey", mentions_bot=True),
            await fake.user_sends(w.channel, other, "plain chatter"),
            await fake.user_sends(w.channel, hook, "relayed message", mentions_bot=True),
            await fake.user_sends(w.channel, hook, "relayed reply", reply_to=reply),
        ]
        for kind in (6, 7, 8, 18, 46):  # pin, join, boost, thread created, poll result
            sent.append(
                await fake.user_sends(w.channel, w.alice, "system", mentions_bot=True, type=kind)
            )
        await fake.redeliver(reply)  # the bot's own reply, seen again
        dm = await fake.open_dm(other)
        sent.append(await fake.user_sends(dm, other, "bot DM"))
        await asyncio.sleep(1.5)
        await settle(env)
    bot_messages = [
        m
        for m in fake.world.messages.values()
        if m.author.id == fake.bot.id and m.interaction_metadata is None  # not /settings answers
    ]
    answered = [m for m in sent if replies_to(fake, m)]
    figures["D7"] = {
        "non_human_messages": len(sent) + 1,
        "replies_to_them": len(answered),
        "bot_messages_total": len(bot_messages),
        "model_requests": vllm.attempts,
    }
    assert answered == []
    assert len(bot_messages) == 1  # the one answer to the human
    assert vllm.attempts == 1


@pytest.mark.parametrize(
    ("code", "when"), [(4004, "identify"), (4014, "identify"), (4004, "mid-session")]
)
async def test_d9_fatal_close_codes_exit_77_after_one_identify(
    fake_discord, vllm, tmp_path, figures, code, when
):
    fake = fake_discord
    await fake.basic_world()
    if when == "identify":
        fake.close_next_identify(code)
    bot = BotProcess(bot_env(fake, vllm, tmp_path / "bot.sqlite3"), ready=when != "identify")
    async with bot:
        if when == "mid-session":
            await fake.drop_gateway(code=code)  # e.g. the token was reset while running
        closed = time.monotonic()
        exit_code = await bot.wait(30)
        seconds = time.monotonic() - closed
    await asyncio.sleep(0.5)
    unit = UNIT.read_text() if UNIT.exists() else ""
    prevented = {
        int(v)
        for line in unit.splitlines()
        if line.startswith("RestartPreventExitStatus=")
        for v in line.split("=", 1)[1].split()
        if v.isdigit()
    }
    key = f"D9 {code} {when}"
    figures[key] = {
        "exit_code": exit_code,
        "seconds_to_exit": round(seconds, 2),
        "identifies": fake.gateway.identify_count,
        "unit_prevents_restart_on": sorted(prevented) if unit else "no unit file",
    }
    assert exit_code == 77, bot.log[-2000:]
    assert fake.gateway.identify_count == 1
    assert seconds <= 5
    assert fake.token not in bot.log
    if unit:
        assert 77 in prevented
