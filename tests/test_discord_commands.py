"""Slash commands over the real protocol: permissions checked by the bot itself, exports,
/forget, /mydata, /reset, /status, channel modes."""

from __future__ import annotations

import asyncio
import csv
import io
import json

import pytest

from tests.discord_server import Perm
from tests.fake_vllm import FakeVLLM, Script
from tests.harness import running_bot

ADMIN = Perm.DEFAULT | Perm.MANAGE_GUILD
MOD = Perm.DEFAULT | (1 << 4)  # MANAGE_CHANNELS
HOSTILE_USER = '=HYPERLINK("http://evil.example","click") please'
HOSTILE_REPLY = "+cmd|' /C calc'!A0\n=1+1\n@SUM(1)"


@pytest.fixture
async def vllm():
    async with FakeVLLM(model="tiny", max_model_len=4096, default=Script(text="a reply")) as s:
        yield s


@pytest.fixture
async def env(fake_discord, vllm, tmp_path):
    world = await fake_discord.basic_world()
    async with running_bot(fake_discord, vllm, world, tmp_path / "bot.sqlite3") as running:
        yield running


async def slash(env, command, options=None, *, user=None, channel=None, permissions=None):
    handle = await env.fake.invoke_slash(
        command,
        options or {},
        user=user or env.world.alice,
        channel=channel or env.world.channel,
        permissions=permissions,
    )
    await handle.wait_for_callback()
    assert handle.ack_latency is not None and handle.ack_latency < 2.5
    return handle


async def final_text(handle) -> str:
    if handle.callback.type == 5:  # deferred: the answer is a follow-up
        return (await handle.wait_for("followup")).content or ""
    return handle.callback.content or ""


async def chat(env, text, user=None, channel=None):
    msg = await env.fake.user_sends(
        channel or env.world.channel, user or env.world.alice, text, mentions_bot=True
    )
    return msg, await env.reply_to(msg)


async def test_export_is_refused_to_non_admins_even_if_discord_shows_it(env):
    await chat(env, "hello")
    for permissions in (Perm.DEFAULT, 0):
        handle = await slash(env, "export", permissions=permissions)
        assert handle.ephemeral and "admin" in handle.callback.content.lower()
        assert not handle.callback.files
    dm = await env.fake.open_dm(env.world.alice)
    handle = await slash(env, "export", channel=dm, permissions=ADMIN)
    assert handle.ephemeral and "server" in handle.callback.content


async def test_export_for_an_admin_is_complete_private_and_safe(env):
    fake, w = env.fake, env.world
    env.vllm.push(Script(text=HOSTILE_REPLY))
    _msg, (reply,) = await chat(env, HOSTILE_USER)
    await fake.add_reaction(w.bob, reply, "👍")
    await fake.add_reaction(w.alice, reply, "👎")
    await chat(env, "second question")
    # another server and a DM: must not appear in this server's export
    other_guild = await fake.create_guild("other")
    other_channel = await fake.create_channel(other_guild, "elsewhere")
    await fake.add_member(other_guild, w.alice)
    await chat(env, "other server secret", channel=other_channel)
    dm_msg = await fake.user_dms(w.alice, "dm secret")
    await env.reply_to(dm_msg)
    await fake.wait_until(lambda: len(env.rows("SELECT * FROM feedback")) == 2, 5, "scores")

    handle = await slash(env, "export", {"format": "jsonl"}, permissions=ADMIN)
    assert handle.ephemeral and handle.callback.type == 5
    follow = await handle.wait_for("followup")
    assert follow.ephemeral and "2 replies" in follow.content and "pseudonymised" in follow.content
    (upload,) = follow.files
    assert upload.filename.endswith(".jsonl")
    text = upload.data.decode()
    records = [json.loads(line) for line in text.splitlines()]
    assert len(records) == 2
    first = records[0]
    assert first["user_text"] == HOSTILE_USER and first["reply"] == HOSTILE_REPLY
    assert first["model"] == "tiny" and first["temperature"] is not None
    assert first["prompt_tokens"] and first["latency_ms"] is not None and first["reply_at"]
    assert sorted(s["score"] for s in first["scores"]) == [-1, 1] and first["score"] == 0
    assert records[1]["context"][0]["text"] == HOSTILE_USER  # the context that produced it
    for secret in ("other server secret", "dm secret", str(w.alice.id), str(w.bob.id)):
        assert secret not in text
    users = {s["user"] for s in first["scores"]}
    assert first["user"] in users  # alice rated her own reply: same pseudonym both times

    handle = await slash(env, "export", {"format": "csv", "score": "rated"}, permissions=ADMIN)
    (upload,) = (await handle.wait_for("followup")).files
    rows = list(csv.DictReader(io.StringIO(upload.data.decode())))
    assert len(rows) == 1
    for name in ("user_text", "reply", "context"):
        for line in rows[0][name].split("\n"):
            assert not line.lstrip().startswith(("=", "+", "-", "@")), (name, line)
    assert rows[0]["user_text"] == "'" + HOSTILE_USER


async def test_forget_leaves_no_trace_of_the_user(env):
    fake, w = env.fake, env.world
    marker = "my-unique-marker-7f3a"
    _msg, (reply,) = await chat(env, f"remember {marker}")
    await fake.add_reaction(w.alice, reply, "👍")
    dm = await fake.user_dms(w.alice, f"dm {marker}")
    await env.reply_to(dm)
    _bob_msg, (bob_reply,) = await chat(env, "bob here", user=w.bob)
    await fake.add_reaction(w.alice, bob_reply, "👎")
    await fake.wait_until(lambda: len(env.rows("SELECT * FROM feedback")) == 2, 5, "scores")

    handle = await slash(env, "forget", {"where": "everywhere"})
    prompt = handle.callback
    assert prompt.ephemeral and "cannot be undone" in prompt.content
    buttons = [c for row in prompt.data["components"] for c in row["components"]]
    confirm = next(b for b in buttons if b["label"] == "Delete my data")
    message = handle.original or prompt.message
    click = await fake.click(message, confirm["custom_id"], user=w.alice)
    await click.wait_for_callback()
    await handle.wait_for("edit_original")
    await fake.wait_until(
        lambda: not env.rows("SELECT 1 FROM messages WHERE author_id = ?", (w.alice.id,)),
        5,
        "deletion",
    )
    assert env.rows("SELECT count(*) FROM feedback WHERE user_id = ?", (w.alice.id,)) == [(0,)]
    assert env.rows("SELECT count(*) FROM sessions WHERE user_id = ?", (w.alice.id,)) == [(0,)]
    # bob's conversation stays
    assert env.rows("SELECT count(*) FROM messages WHERE author_id = ?", (w.bob.id,)) == [(1,)]
    raw = b"".join(p.read_bytes() for p in env.db_path.parent.glob("bot.sqlite3*"))
    assert marker.encode() not in raw


async def test_forget_can_be_cancelled_and_only_the_invoker_can_confirm(env):
    fake, w = env.fake, env.world
    await chat(env, "keep me")
    handle = await slash(env, "forget")
    buttons = [c for row in handle.callback.data["components"] for c in row["components"]]
    message = handle.original or handle.callback.message
    confirm = next(b for b in buttons if b["label"] == "Delete my data")
    await fake.click(message, confirm["custom_id"], user=w.bob)  # not bob's data
    cancel = next(b for b in buttons if b["label"] == "Cancel")
    click = await fake.click(message, cancel["custom_id"], user=w.alice)
    await click.wait_for_callback()
    await asyncio.sleep(0.3)
    assert env.rows("SELECT count(*) FROM messages WHERE author_id = ?", (w.alice.id,)) == [(1,)]


async def test_mydata_returns_the_users_own_history_and_feedback(env):
    fake, w = env.fake, env.world
    _msg, (reply,) = await chat(env, "alice question")
    await chat(env, "bob question", user=w.bob)
    await fake.add_reaction(w.alice, reply, "👍")
    await fake.wait_until(lambda: env.rows("SELECT * FROM feedback"), 5, "score")
    handle = await slash(env, "mydata")
    follow = await handle.wait_for("followup")
    assert follow.ephemeral
    data = json.loads(follow.files[0].data)
    texts = [m["text"] for m in data["messages"]]
    assert "alice question" in texts and "a reply" in texts and "bob question" not in texts
    assert data["feedback"][0]["score"] == 1


async def test_reset_starts_a_new_conversation(env):
    await chat(env, "my name is Ann")
    handle = await slash(env, "reset")
    assert handle.ephemeral and "new conversation" in handle.callback.content
    await chat(env, "what is my name?")
    sent = " ".join(m["content"] for m in env.vllm.chat_requests[-1].body["messages"])
    assert "Ann" not in sent
    assert env.rows("SELECT count(*) FROM sessions WHERE closed_at IS NOT NULL") == [(1,)]


async def test_status_for_admins_only(env):
    await chat(env, "hi")
    handle = await slash(env, "status", permissions=Perm.DEFAULT)
    assert "only" in handle.callback.content.lower()
    handle = await slash(env, "status", permissions=ADMIN)
    text = await final_text(handle)
    assert "tiny" in text and "healthy" in text and "1 replies" in text


async def test_channel_settings_need_manage_channels_and_values_are_checked(env):
    denied = await slash(
        env,
        ("settings", "set"),
        {"target": "channel", "name": "persona", "value": "pirate"},
        permissions=Perm.DEFAULT,
    )
    assert "Manage Channels" in denied.callback.content
    for name, value in (
        ("temperature", "9"),
        ("reply_length", "-5"),
        ("sharing", "all"),
        ("bogus", "1"),
    ):
        bad = await slash(
            env,
            ("settings", "set"),
            {"target": "channel", "name": name, "value": value},
            permissions=MOD,
        )
        assert bad.ephemeral and "set to" not in bad.callback.content
    assert env.rows("SELECT count(*) FROM channel_settings") == [(0,)]
    ok = await slash(
        env,
        ("settings", "set"),
        {"target": "channel", "name": "persona", "value": "You are a pirate."},
        permissions=MOD,
    )
    assert "set to" in ok.callback.content
    await chat(env, "hello", user=env.world.bob)
    assert env.vllm.chat_requests[-1].body["messages"][0]["content"] == "You are a pirate."
    show = await slash(env, ("settings", "show"), user=env.world.bob)
    assert "pirate" in show.callback.content and show.ephemeral


async def test_shared_channel_session_and_reply_to_everything(env):
    fake, w = env.fake, env.world
    for name in ("sharing", "reply_to_everything"):
        value = "channel" if name == "sharing" else "on"
        await slash(
            env,
            ("settings", "set"),
            {"target": "channel", "name": name, "value": value},
            permissions=MOD,
        )
    alice = await fake.user_sends(w.channel, w.alice, "The password is swordfish")
    await env.reply_to(alice)
    bob = await fake.user_sends(w.channel, w.bob, "What did alice say?")  # no mention needed
    await env.reply_to(bob)
    sent = env.vllm.chat_requests[-1].body["messages"]
    assert any("swordfish" in m["content"] for m in sent)
    assert sent[-1]["content"].startswith("[bob")


async def test_auto_threads_continue_without_mentions(env):
    fake, w = env.fake, env.world
    await slash(
        env,
        ("settings", "set"),
        {"target": "channel", "name": "auto_threads", "value": "on"},
        permissions=MOD,
    )
    msg = await fake.user_sends(w.channel, w.alice, "let's talk", mentions_bot=True)
    await fake.wait_until(lambda: fake.world.messages[msg.id].thread_id, 5, "a thread")
    thread = fake.world.channels[fake.world.messages[msg.id].thread_id]
    await env.reply_to(msg)
    reply = await fake.wait_for_message(thread)
    assert reply.content == "a reply"
    follow = await fake.user_sends(thread, w.alice, "and more, without a mention")
    await env.reply_to(follow)
    sent = " ".join(m["content"] for m in env.vllm.chat_requests[-1].body["messages"])
    assert "let's talk" in sent


async def test_help_is_ephemeral(env):
    handle = await slash(env, "help")
    assert handle.ephemeral and "/forget" in handle.callback.content
