"""The real bot over the real Discord protocol (fake server) with a scripted vLLM: chatting."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.splitting import DISCORD_LIMIT
from tests.fake_vllm import FakeVLLM, Script
from tests.harness import running_bot

HOSTILE = (
    "@everyone look! @here too <@&{role}> and <@{user}> <@!{user}> "
    "```\n@everyone in code\n``` https://evil.example/?q=secret"
)


@pytest.fixture
async def vllm():
    async with FakeVLLM(model="tiny", max_model_len=4096) as server:
        yield server


@pytest.fixture
async def env(fake_discord, vllm, tmp_path):
    world = await fake_discord.basic_world()
    async with running_bot(fake_discord, vllm, world, tmp_path / "bot.sqlite3") as running:
        yield running


def _no_pings(env) -> None:
    writes = env.writes()
    assert writes, "the bot wrote nothing"
    for r in writes:
        assert r.pings is not None and r.pings.count == 0, (r.path, r.json)
        assert r.json.get("allowed_mentions", {}).get("parse") == [], r.json


async def test_mention_gets_a_streamed_reply_that_pings_nobody(env):
    fake, w = env.fake, env.world
    text = HOSTILE.format(role=w.mod_role.id, user=w.bob.id) + " " + " ".join(["word"] * 60)
    env.vllm.push(Script(text=text, rate=60))
    sent_at = time.monotonic()
    msg = await fake.user_sends(w.channel, w.alice, "hi bot, ping everyone", mentions_bot=True)
    # the first sign of life (typing, or the reply itself) comes within a second
    first = await fake.wait_for_request(
        lambda r: r.route.endswith("/typing") or r.route.startswith("POST /channels"), timeout=2
    )
    assert first.at - sent_at < 1.0
    parts = await env.reply_to(msg)
    assert parts[0].content == text
    assert parts[0].reference and parts[0].reference.get("message_id") == str(msg.id)
    writes = env.writes(w.channel.id)
    assert len(writes) >= 3  # a first message, then edits as the text grew
    assert all(r.json.get("flags", 0) & 4 or r.route.startswith("PATCH") for r in writes)
    _no_pings(env)
    # edit cadence: one write in flight, writes of one reply ≥ edit_interval apart
    times = sorted((r.at, r.done_at) for r in writes)
    for (start_a, done_a), (start_b, _) in zip(times, times[1:]):
        assert start_b >= done_a - 0.001
        assert start_b - start_a >= 0.2 - 0.02


async def test_a_slow_model_shows_typing_within_a_second_and_keeps_it_up(env):
    env.vllm.push(Script(text="finally", ttft=2.5))
    sent_at = time.monotonic()
    msg = await env.fake.user_sends(env.world.channel, env.world.alice, "hm?", mentions_bot=True)
    typing = await env.fake.wait_for_request(lambda r: r.route.endswith("/typing"), timeout=2)
    assert typing.at - sent_at < 1.0
    assert [p.content for p in await env.reply_to(msg)] == ["finally"]


async def test_a_fast_reply_needs_no_typing_request(env):
    env.vllm.push(Script(text="quick"))
    msg = await env.fake.user_sends(env.world.channel, env.world.alice, "hi", mentions_bot=True)
    await env.reply_to(msg)
    await asyncio.sleep(0.5)
    assert not [r for r in env.fake.requests if r.route.endswith("/typing")]


async def test_every_edit_keeps_link_previews_suppressed(env):
    env.vllm.push(Script(text="see https://example.com/a " * 30, rate=100))
    msg = await env.fake.user_sends(env.world.channel, env.world.alice, "link?", mentions_bot=True)
    await env.reply_to(msg)
    for r in env.writes():
        if r.method == "PATCH":
            assert r.json.get("flags", 0) & 4, r.json
        else:
            assert r.json.get("flags", 0) & 4


async def test_long_reply_is_split_with_balanced_fences(env):
    code = "\n".join(f"    print('line {i}')" for i in range(300))
    text = "Here is the code:\n```python\ndef f():\n" + code + "\n```\nThat's all." + " end" * 50
    env.vllm.push(Script(text=text, rate=0))
    msg = await env.fake.user_sends(env.world.channel, env.world.alice, "code", mentions_bot=True)
    parts = await env.reply_to(msg)
    await env.fake.wait_until(
        lambda: len(env.parts(msg)) >= 3 and env.parts(msg)[-1].content.endswith("end"),
        10,
        "all parts",
    )
    parts = env.parts(msg)
    assert len(parts) >= 3
    for part in parts:
        assert 0 < len(part.content) <= DISCORD_LIMIT
    for part in parts[:-1]:
        fences = sum(1 for line in part.content.split("\n") if line.strip().startswith("```"))
        assert fences % 2 == 0
    assert parts[1].content.startswith("```python\n")
    _no_pings(env)


async def test_dm_reply_and_no_answer_without_mention(env):
    fake, w = env.fake, env.world
    env.vllm.push(Script(text="hello in DM"), Script(text="continued"))
    dm = await fake.user_dms(w.alice, "hi in private")
    assert [p.content for p in await env.reply_to(dm)] == ["hello in DM"]
    quiet = await fake.user_sends(w.channel, w.bob, "just chatting, not to the bot")
    answered = await fake.user_sends(
        w.channel,
        w.bob,
        "but this replies to the bot",
        reply_to=(await env.reply_to(dm))[0],
        ping_reply=False,
    )
    await asyncio.sleep(0.5)
    assert env.parts(quiet) == []
    # a reply to one of the bot's messages (in the DM) continues without a mention
    assert (
        env.rows("SELECT count(*) FROM messages WHERE discord_message_id = ?", (quiet.id,))[0][0]
        == 0
    )
    del answered


async def test_ignores_bots_webhooks_and_system_messages(env):
    fake, w = env.fake, env.world
    other_bot = await fake.create_user("OtherBot", bot=True)
    await fake.add_member(w.guild, other_bot)
    hook = await fake.create_webhook("hook")
    await fake.user_sends(w.channel, other_bot, "hey bot", mentions_bot=True)
    await fake.user_sends(w.channel, hook, "hey bot", mentions_bot=True)
    await fake.user_sends(w.channel, w.alice, "joined", mentions_bot=True, type=7)
    await asyncio.sleep(1.0)
    assert env.writes() == []
    assert env.vllm.attempts == 0


async def test_one_reply_per_message_across_resume_and_redelivery(env):
    fake, w = env.fake, env.world
    env.vllm.default = Script(text="answer", rate=20)
    first = await fake.user_sends(w.channel, w.alice, "one", mentions_bot=True)
    await fake.drop_gateway()
    second = await fake.user_sends(w.channel, w.bob, "two", mentions_bot=True)  # while away
    await fake.wait_for_resume(1, timeout=15)
    await fake.redeliver(first)
    await fake.redeliver(second)
    for m in (first, second):
        await env.reply_to(m)
    await asyncio.sleep(1.0)
    assert env.vllm.attempts == 2
    posts = [r for r in env.writes() if r.method == "POST"]
    assert len(posts) == 2
    assert fake.gateway.identify_count == 1


async def test_settings_change_what_the_model_receives(env):
    fake, w = env.fake, env.world
    handle = await fake.invoke_slash(
        ("settings", "set"),
        {"target": "me", "name": "persona", "value": "You are a pirate."},
        user=w.alice,
        channel=w.channel,
    )
    response = await handle.wait_for_callback()
    assert response.ephemeral and "persona" in response.content
    handle = await fake.invoke_slash(
        ("settings", "set"),
        {"target": "me", "name": "temperature", "value": "0.25"},
        user=w.alice,
        channel=w.channel,
    )
    await handle.wait_for_callback()
    msg = await fake.user_sends(w.channel, w.alice, "ahoy?", mentions_bot=True)
    await env.reply_to(msg)
    body = env.vllm.chat_requests[-1].body
    assert body["messages"][0]["content"] == "You are a pirate."
    assert body["temperature"] == 0.25
    # bob is not affected by alice's own settings
    msg = await fake.user_sends(w.channel, w.bob, "hello?", mentions_bot=True)
    await env.reply_to(msg)
    assert env.vllm.chat_requests[-1].body["messages"][0]["content"] != "You are a pirate."


async def test_failure_mid_reply_leaves_a_visible_interrupted_mark(env):
    env.vllm.push(Script(text="The first part of a long answer " * 4, cut_after=6, cut="rst"))
    msg = await env.fake.user_sends(env.world.channel, env.world.alice, "go", mentions_bot=True)
    await env.fake.wait_until(
        lambda: env.parts(msg) and "interrupted" in env.parts(msg)[-1].content, 10, "the mark"
    )
    content = env.parts(msg)[-1].content
    assert content.startswith("The first part")
    assert env.rows("SELECT status FROM messages WHERE reply_to IS NOT NULL")[0][0] == "interrupted"


async def test_backend_down_gets_a_clear_answer(env):
    await env.vllm.close()  # the model server dies: its connections go with it
    msg = await env.fake.user_sends(env.world.channel, env.world.alice, "hi", mentions_bot=True)
    parts = await env.reply_to(msg)
    assert "unavailable" in parts[0].content
    _no_pings(env)
