"""Edges of chatting: edits and deletes, fairness limits, attachments, fatal logins."""

from __future__ import annotations

import os

import pytest

from tests.fake_vllm import FakeVLLM, Script
from tests.harness import bot_config, running_bot
from tests.process import run_bot


@pytest.fixture
async def vllm():
    async with FakeVLLM(model="tiny", max_model_len=4096, default=Script(text="a reply")) as s:
        yield s


async def test_editing_updates_the_stored_turn_and_deleting_removes_it(
    fake_discord, vllm, tmp_path
):
    world = await fake_discord.basic_world()
    async with running_bot(fake_discord, vllm, world, tmp_path / "bot.sqlite3") as env:
        fake, w = env.fake, env.world
        msg = await fake.user_sends(w.channel, w.alice, "my number is 111", mentions_bot=True)
        (reply,) = await env.reply_to(msg)
        await fake.user_edits(msg, f"<@{fake.bot.id}> my number is 222")
        await fake.wait_until(
            lambda: (
                env.rows("SELECT content FROM messages WHERE discord_message_id = ?", (msg.id,))
                == [("my number is 222",)]
            ),
            5,
            "the edit",
        )
        await fake.add_reaction(w.bob, reply, "👍")
        await fake.wait_until(lambda: env.rows("SELECT * FROM feedback"), 5, "score")
        await fake.user_deletes(msg)
        await fake.wait_until(
            lambda: env.rows("SELECT count(*) FROM messages") == [(0,)], 5, "deletion"
        )
        assert env.rows("SELECT count(*) FROM feedback") == [(0,)]


async def test_deleting_a_message_cancels_its_generation(fake_discord, vllm, tmp_path):
    world = await fake_discord.basic_world()
    vllm.default = Script(tokens=2000, rate=40)
    async with running_bot(fake_discord, vllm, world, tmp_path / "bot.sqlite3") as env:
        msg = await env.fake.user_sends(world.channel, world.alice, "long", mentions_bot=True)
        await env.fake.wait_until(lambda: env.parts(msg), 10, "streaming")
        await env.fake.user_deletes(msg)
        record = await vllm.next_disconnect(within=2.0)
        assert record.disconnect_after_last_byte is not None
        await env.fake.wait_until(
            lambda: env.rows("SELECT count(*) FROM messages") == [(0,)], 5, "deletion"
        )
        assert not env.bot.get_cog("Chat").tasks


async def test_one_turn_in_flight_per_user_a_follow_up_waits_and_a_rate_limit(
    fake_discord, vllm, tmp_path
):
    world = await fake_discord.basic_world()
    vllm.default = Script(tokens=60, rate=30)
    async with running_bot(
        fake_discord,
        vllm,
        world,
        tmp_path / "bot.sqlite3",
        limits={"user_turns_per_minute": 3, "user_burst": 3},
    ) as env:
        fake, w = env.fake, env.world
        first = await fake.user_sends(w.channel, w.alice, "one", mentions_bot=True)
        await fake.wait_until(lambda: env.parts(first), 5, "first reply streaming")
        # a follow-up while the reply streams is answered next; one more is a flood
        second = await fake.user_sends(w.channel, w.alice, "two", mentions_bot=True)
        third = await fake.user_sends(w.channel, w.alice, "three", mentions_bot=True)
        note = await fake.wait_for_message(w.channel, lambda m: "still answering" in m.content)
        assert note.reference["message_id"] == str(third.id)
        await env.reply_to(first)
        await env.reply_to(second)
        assert env.parts(first)[0].id < env.parts(second)[0].id  # in order
        assert vllm.chat_requests[1].body["messages"][-3]["content"].endswith("one")
        fourth = await fake.user_sends(w.channel, w.alice, "four", mentions_bot=True)
        await fake.wait_for_message(w.channel, lambda m: "quickly" in m.content)
        for text in ("five", "six", "seven"):  # a flood gets one note, not one per message
            await fake.user_sends(w.channel, w.alice, text, mentions_bot=True)
        others = await fake.user_sends(w.channel, w.bob, "bob is fine", mentions_bot=True)
        await env.reply_to(others)
        assert vllm.attempts == 3
        notes = [m for m in fake.messages_in(w.channel) if "quickly" in m.content]
        assert len(notes) == 1
        assert env.rows(
            "SELECT count(*) FROM messages WHERE discord_message_id IN (?, ?)",
            (third.id, fourth.id),
        ) == [(0,)]
        for r in env.writes():
            assert r.pings is not None and r.pings.count == 0


async def test_queue_full_is_answered_busy(fake_discord, vllm, tmp_path):
    world = await fake_discord.basic_world()
    vllm.default = Script(tokens=100, rate=25)
    async with running_bot(
        fake_discord,
        vllm,
        world,
        tmp_path / "bot.sqlite3",
        limits={"max_concurrency": 1, "queue_size": 1},
    ) as env:
        fake, w = env.fake, env.world
        users = [w.alice, w.bob, await fake.create_user("carol")]
        await fake.add_member(w.guild, users[2])
        sent = [await fake.user_sends(w.channel, user, "hi", mentions_bot=True) for user in users]
        await fake.wait_for_message(w.channel, lambda m: "busy" in m.content, timeout=5)
        await fake.wait_until(lambda: sum(env.finished(m) for m in sent) == 2, 20, "two replies")
        assert vllm.max_in_flight == 1 and vllm.attempts == 2


async def test_text_attachments_are_read_within_a_cap_and_others_noted(
    fake_discord, vllm, tmp_path
):
    world = await fake_discord.basic_world()
    async with running_bot(
        fake_discord, vllm, world, tmp_path / "bot.sqlite3", discord={"attachment_max_bytes": 1000}
    ) as env:
        fake, w = env.fake, env.world
        notes = fake.attachment("notes.txt", b"line one\nline two")
        image = fake.attachment("cat.png", b"\x89PNG....", content_type="image/png")
        huge = fake.attachment("big.log", b"", size=10, stream_size=50_000_000)  # lies about size
        msg = await fake.user_sends(
            w.channel, w.alice, "read these", mentions_bot=True, attachments=[notes, image, huge]
        )
        (reply,) = await env.reply_to(msg)
        sent = env.vllm.chat_requests[-1].body["messages"][-1]["content"]
        assert "line one\nline two" in sent and "notes.txt" in sent
        assert "cat.png" in reply.content and "text files" in reply.content
        assert "big.log" in reply.content
        assert huge.bytes_served < 2_000_000  # stopped reading at the cap, not at 50 MB


@pytest.mark.parametrize(("code", "what"), [(4004, "token"), (4014, "intent")])
async def test_fatal_gateway_close_ends_the_process_with_a_distinct_code(
    fake_discord, vllm, tmp_path, code, what
):
    await fake_discord.basic_world()
    if code == 4014:
        fake_discord.gateway.privileged_intents = 0
    else:
        fake_discord.close_next_identify(4004)
    config = bot_config(fake_discord, vllm, tmp_path / "bot.sqlite3")
    env = {
        **os.environ,
        "DISCORD_TOKEN": fake_discord.token,
        "DISCORD_API_BASE": config.discord.api_base,
        "DISCORD_GATEWAY_URL": config.discord.gateway_url,
        "LLM_BASE_URL": vllm.base_url,
        "DATABASE_PATH": str(tmp_path / "bot.sqlite3"),
    }
    code, _, err = await run_bot(env, timeout=30)
    assert code == 77, err[-2000:]
    assert fake_discord.gateway.identify_count == 1
    assert what in err.lower()
    assert fake_discord.token not in err
