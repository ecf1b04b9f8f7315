"""Reactions as quality scores, over the real protocol, including after a restart."""

from __future__ import annotations

import asyncio

import pytest

from tests.fake_vllm import FakeVLLM, Script
from tests.harness import running_bot


@pytest.fixture
async def vllm():
    async with FakeVLLM(model="tiny", max_model_len=4096, default=Script(text="a reply")) as s:
        yield s


def scores(env) -> dict[int, int]:
    return dict(env.rows("SELECT user_id, score FROM feedback"))


async def test_thumbs_record_change_and_clear_a_users_score(fake_discord, vllm, tmp_path):
    world = await fake_discord.basic_world()
    async with running_bot(fake_discord, vllm, world, tmp_path / "bot.sqlite3") as env:
        fake, w = env.fake, env.world
        msg = await fake.user_sends(w.channel, w.alice, "rate me", mentions_bot=True)
        (reply,) = await env.reply_to(msg)
        await fake.add_reaction(w.alice, reply, "👍")
        await fake.add_reaction(w.bob, reply, "👎🏽")  # skin tones count
        await fake.wait_until(lambda: len(scores(env)) == 2, 5, "two scores")
        assert scores(env) == {w.alice.id: 1, w.bob.id: -1}
        await fake.add_reaction(w.alice, reply, "👎")  # changing replaces
        await fake.wait_until(lambda: scores(env).get(w.alice.id) == -1, 5, "changed score")
        await fake.remove_reaction(w.alice, reply, "👍")  # removing the old one keeps the new
        await asyncio.sleep(0.3)
        assert scores(env)[w.alice.id] == -1
        await fake.add_reaction(w.alice, reply, "👍")  # both showing: the later one counts
        await fake.wait_until(lambda: scores(env).get(w.alice.id) == 1, 5, "latest thumb")
        await fake.remove_reaction(w.alice, reply, "👍")  # 👎 still shows: back to -1
        await fake.wait_until(lambda: scores(env).get(w.alice.id) == -1, 5, "fallback score")
        await fake.remove_reaction(w.alice, reply, "👎")
        await fake.wait_until(lambda: w.alice.id not in scores(env), 5, "cleared score")
        await fake.add_reaction(w.alice, reply, "🎉")  # not a score
        await fake.add_reaction(w.alice, msg, "👍")  # not a bot reply
        await asyncio.sleep(0.3)
        assert scores(env) == {w.bob.id: -1}


async def test_bots_own_and_other_bots_reactions_are_ignored(fake_discord, vllm, tmp_path):
    world = await fake_discord.basic_world()
    async with running_bot(fake_discord, vllm, world, tmp_path / "bot.sqlite3") as env:
        fake, w = env.fake, env.world
        other = await fake.create_user("OtherBot", bot=True)
        await fake.add_member(w.guild, other)
        msg = await fake.user_sends(w.channel, w.alice, "hi", mentions_bot=True)
        (reply,) = await env.reply_to(msg)
        await fake.add_reaction(fake.bot, reply, "👍")
        await fake.add_reaction(other, reply, "👍")
        await asyncio.sleep(0.5)
        assert scores(env) == {}


async def test_reactions_on_a_reply_from_before_a_restart(fake_discord, vllm, tmp_path):
    world = await fake_discord.basic_world()
    db = tmp_path / "bot.sqlite3"
    async with running_bot(fake_discord, vllm, world, db) as env:
        msg = await env.fake.user_sends(world.channel, world.alice, "hello", mentions_bot=True)
        (reply,) = await env.reply_to(msg)
    # a new bot process on the same database: the reply is not in its message cache
    async with running_bot(fake_discord, vllm, world, db) as env:
        await env.fake.add_reaction(world.bob, reply, "👍")
        await env.fake.wait_until(lambda: scores(env) == {world.bob.id: 1}, 5, "score")
        # and the restarted bot does not answer the old message again when it is replayed
        await env.fake.redeliver(msg)
        await asyncio.sleep(0.5)
        assert vllm.attempts == 1


async def test_a_long_reply_can_be_rated_on_any_of_its_messages(fake_discord, vllm, tmp_path):
    world = await fake_discord.basic_world()
    vllm.default = Script(text="word " * 900)
    async with running_bot(fake_discord, vllm, world, tmp_path / "bot.sqlite3") as env:
        msg = await env.fake.user_sends(world.channel, world.alice, "long", mentions_bot=True)
        parts = await env.reply_to(msg)
        assert len(parts) >= 2
        await env.fake.add_reaction(world.bob, parts[-1], "👍")
        await env.fake.wait_until(lambda: scores(env) == {world.bob.id: 1}, 5, "score")
        assert env.rows("SELECT count(DISTINCT message_id) FROM feedback")[0][0] == 1
