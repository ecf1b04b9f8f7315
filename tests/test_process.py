"""The bot as a long-lived process: SIGTERM drain, one bot per database, crash recovery,
backup and export from the shell, and logs without content or secrets."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time

import pytest

from tests.fake_vllm import FakeVLLM, Script
from tests.process import BotProcess, bot_env, run_bot


@pytest.fixture
async def vllm():
    async with FakeVLLM(model="tiny", max_model_len=4096, default=Script(text="fine")) as s:
        yield s


def rows(db, sql, params=()):
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


async def test_sigterm_finishes_short_replies_and_marks_long_ones(fake_discord, vllm, tmp_path):
    w = await fake_discord.basic_world()
    db = tmp_path / "bot.sqlite3"
    env = bot_env(fake_discord, vllm, db, LIMITS_SHUTDOWN_GRACE=2)
    vllm.push(Script(tokens=1000, rate=20), Script(tokens=20, rate=20))
    async with BotProcess(env) as bot:
        long = await fake_discord.user_sends(w.channel, w.alice, "long one", mentions_bot=True)
        short = await fake_discord.user_sends(w.channel, w.bob, "short one", mentions_bot=True)
        await fake_discord.wait_until(
            lambda: len(rows(db, "SELECT * FROM reply_parts")) == 2, 10, "both replies streaming"
        )
        stopped = time.monotonic()
        bot.signal(signal.SIGTERM)
        code = await bot.wait(2 + 5)
        elapsed = time.monotonic() - stopped
    assert code == 0, bot.log
    assert elapsed <= 2 + 3
    statuses = dict(rows(db, "SELECT discord_message_id, status FROM messages WHERE role='user'"))
    assert statuses == {long.id: "interrupted", short.id: "done"}
    assert rows(db, "SELECT count(*) FROM messages WHERE status = 'pending'") == [(0,)]
    long_reply = [
        m
        for m in fake_discord.messages_in(w.channel)
        if m.reference and m.reference.get("message_id") == str(long.id)
    ]
    assert "interrupted" in long_reply[0].content
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]


async def test_a_second_bot_on_the_same_database_refuses_to_start(fake_discord, vllm, tmp_path):
    await fake_discord.basic_world()
    env = bot_env(fake_discord, vllm, tmp_path / "bot.sqlite3")
    async with BotProcess(env):
        second = BotProcess(env, ready=False)
        await second.start()
        code = await second.wait(30)
    assert code == 78
    assert "in use by pid" in second.log and "one bot per database" in second.log


async def test_after_a_crash_the_cut_reply_is_marked_and_not_answered_twice(
    fake_discord, vllm, tmp_path
):
    w = await fake_discord.basic_world()
    db = tmp_path / "bot.sqlite3"
    env = bot_env(fake_discord, vllm, db)
    vllm.default = Script(tokens=2000, rate=30)
    async with BotProcess(env) as bot:
        msg = await fake_discord.user_sends(w.channel, w.alice, "tell me", mentions_bot=True)
        await fake_discord.wait_until(lambda: rows(db, "SELECT * FROM reply_parts"), 10, "stream")
        await asyncio.sleep(2.5)  # past one checkpoint
        bot.signal(signal.SIGKILL)
        await bot.wait(10)
    vllm.default = Script(text="fine")
    async with BotProcess(env):
        await fake_discord.redeliver(msg)
        reply = await fake_discord.wait_for_message(
            w.channel, lambda m: "restarted" in m.content, timeout=10
        )
        assert reply.content.split("\n")[0].strip()  # the text saved before the crash is kept
        await asyncio.sleep(0.5)
    assert rows(db, "SELECT status FROM messages") == [("interrupted",), ("interrupted",)]
    assert vllm.attempts == 1


async def test_backup_while_running_and_export_from_the_shell(fake_discord, vllm, tmp_path):
    w = await fake_discord.basic_world()
    db = tmp_path / "bot.sqlite3"
    env = bot_env(fake_discord, vllm, db)
    async with BotProcess(env):
        msg = await fake_discord.user_sends(w.channel, w.alice, "=1+1 hello", mentions_bot=True)
        await fake_discord.wait_until(lambda: rows(db, "SELECT * FROM reply_parts"), 10, "reply")
        (part_id,) = rows(db, "SELECT discord_message_id FROM reply_parts")[0]
        await fake_discord.add_reaction(w.bob, fake_discord.world.messages[part_id], "👍")
        await fake_discord.wait_until(lambda: rows(db, "SELECT * FROM feedback"), 10, "score")
        backup = tmp_path / "copy.sqlite3"
        code, _, err = await run_bot(env, "backup", str(backup))
        assert code == 0, err
        assert rows(backup, "PRAGMA integrity_check") == [("ok",)]
        assert rows(backup, "SELECT count(*) FROM messages") == [(2,)]
        code, out, err = await run_bot(
            env, "export", "--format", "jsonl", "--guild", str(w.guild.id)
        )
        assert code == 0, err
        (record,) = [json.loads(line) for line in out.splitlines()]
        assert record["user_text"] == "=1+1 hello" and record["score"] == 1
        assert "1 reply" in err and "pseudonymised" in err
        out_file = tmp_path / "fb.csv"
        await run_bot(env, "export", "--format", "csv", "--out", str(out_file))
        assert "'=1+1 hello" in out_file.read_text()
    del msg


async def test_logs_carry_no_message_content_and_no_token(fake_discord, vllm, tmp_path):
    w = await fake_discord.basic_world()
    secret_text = "my-private-words-5521"
    env = bot_env(fake_discord, vllm, tmp_path / "bot.sqlite3", LOGGING_LEVEL="DEBUG")
    vllm.default = Script(text="private-reply-9931")
    async with BotProcess(env) as bot:
        msg = await fake_discord.user_sends(w.channel, w.alice, secret_text, mentions_bot=True)
        await fake_discord.wait_for_message(w.channel, lambda m: "9931" in m.content)
        handle = await fake_discord.invoke_slash("help", {}, user=w.alice, channel=w.channel)
        await handle.wait_for_callback()
        bot.signal(signal.SIGTERM)
        assert await bot.wait(15) == 0
    log = bot.log
    assert "ready: connected" in log
    for secret in (secret_text, "private-reply-9931", fake_discord.token, handle.token):
        assert secret not in log, secret
    del msg


async def test_sync_commands_registers_the_tree_only_when_asked(fake_discord, vllm, tmp_path):
    w = await fake_discord.basic_world()
    env = bot_env(fake_discord, vllm, tmp_path / "bot.sqlite3")
    async with BotProcess(env):
        await asyncio.sleep(0.5)
    assert not fake_discord.commands.get(w.guild.id) and not fake_discord.commands.get(None)
    code, _, err = await run_bot(env, "sync-commands", "--guild", str(w.guild.id))
    assert code == 0, err
    names = {c["name"] for c in fake_discord.commands[w.guild.id]}
    assert names == {"settings", "reset", "forget", "mydata", "help", "status", "export"}
    assert "synced 7 command(s)" in err


async def test_healthcheck_tells_a_live_bot_from_a_dead_one(fake_discord, vllm, tmp_path):
    await fake_discord.basic_world()
    db = tmp_path / "bot.sqlite3"
    env = bot_env(fake_discord, vllm, db)

    async def health() -> tuple[int, str]:
        code, out, _ = await run_bot(env, "healthcheck", timeout=30)
        return code, out.strip()

    code, out = await health()
    assert (code, out) == (1, "unhealthy: no bot has started on this database")
    assert not db.exists()  # the probe created nothing
    async with BotProcess(env) as bot:
        code, out = await health()
        assert code == 0 and out.startswith(f"healthy: pid {bot.proc.pid}")
        bot.signal(signal.SIGKILL)
        await bot.wait(10)
    code, out = await health()
    assert code == 1 and "is not running" in out
