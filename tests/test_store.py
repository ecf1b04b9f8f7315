"""The store on a real SQLite file: schema, migrations, sessions, turns, crash recovery."""

import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from bot import db as dbmod
from bot.models import Incoming, Kind, ReplyRecord, Role, Scope, Status
from bot.store import Store

SCOPE = Scope(Kind.CHANNEL, "100", guild_id=1, user_id=7)


@pytest.fixture
async def store(tmp_path):
    s = await Store.open(tmp_path / "bot.sqlite3")
    yield s
    await s.close()


async def test_blank_database_migrates_to_latest(tmp_path):
    path = tmp_path / "fresh.sqlite3"
    s = await Store.open(path)
    await s.close()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == dbmod.LATEST_VERSION >= 1
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"sessions", "messages", "reply_parts", "feedback", "channel_settings"} <= tables
    strict = con.execute("SELECT sql FROM sqlite_master WHERE name='messages'").fetchone()[0]
    assert strict.rstrip().endswith("STRICT")
    con.close()


async def test_connection_pragmas(store):
    db = store._db
    assert list(await db.execute_fetchall("PRAGMA synchronous"))[0][0] == 2  # FULL
    assert list(await db.execute_fetchall("PRAGMA foreign_keys"))[0][0] == 1
    assert list(await db.execute_fetchall("PRAGMA busy_timeout"))[0][0] == 5000


async def test_reopening_is_idempotent(tmp_path):
    path = tmp_path / "bot.sqlite3"
    for _ in range(2):
        s = await Store.open(path)
        await s.close()


async def test_newer_schema_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "future.sqlite3"
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {dbmod.LATEST_VERSION + 1}")
    con.close()
    with pytest.raises(dbmod.SchemaError, match="written by a newer version"):
        await Store.open(path)


async def test_failed_migration_leaves_the_old_version(tmp_path, monkeypatch):
    path = tmp_path / "bot.sqlite3"
    broken = [
        *dbmod.migrations(),
        "CREATE TABLE extra (x INTEGER) STRICT;\nSELECT nope FROM nowhere;",
    ]
    monkeypatch.setattr(dbmod, "migrations", lambda: broken)
    with pytest.raises(sqlite3.OperationalError):
        await Store.open(path)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == dbmod.LATEST_VERSION
    assert con.execute("SELECT count(*) FROM sqlite_master WHERE name='extra'").fetchone()[0] == 0
    con.close()


async def _turn(store, session_id, text, reply, *, discord_id=None, status=Status.DONE, at=None):
    incoming = Incoming(
        SCOPE,
        text,
        author_id=7,
        author_name="ann",
        discord_message_id=discord_id,
        created_at=at or datetime.now(UTC),
    )
    user_id = await store.add_user_message(session_id, incoming, len(text.split()))
    reply_id = await store.start_reply(
        session_id,
        user_id,
        model="m",
        system_prompt_id=await store.system_prompt_id("sys"),
        temperature=0.5,
        top_p=1.0,
        max_tokens=100,
    )
    await store.finish_turn(user_id, reply_id, ReplyRecord(status, reply, len(reply.split())))
    return user_id, reply_id


async def test_session_is_created_once_and_reset_keeps_the_old_one(store):
    first = await store.current_session(SCOPE)
    assert (await store.current_session(SCOPE)).id == first.id
    await _turn(store, first.id, "hello", "hi there")
    assert await store.reset_session(SCOPE)
    second = await store.current_session(SCOPE)
    assert second.id != first.id
    assert await store.load_context(second.id, 0) == []
    # the old session's messages are kept (feedback and export need them)
    assert [m[1] for m in await store.messages_of(first.id)] == ["hello", "hi there"]


async def test_sessions_are_private_to_their_scope(store):
    mine = await store.current_session(SCOPE)
    theirs = await store.current_session(Scope(Kind.CHANNEL, "100", guild_id=1, user_id=8))
    shared = await store.current_session(Scope(Kind.CHANNEL, "100", guild_id=1, user_id=None))
    assert len({mine.id, theirs.id, shared.id}) == 3
    await _turn(store, mine.id, "secret", "ok")
    assert await store.load_context(theirs.id, 0) == []


async def test_context_pairs_turns_in_order_and_skips_failed_ones(store):
    s = await store.current_session(SCOPE)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    await _turn(store, s.id, "one", "r1", at=base)
    await _turn(store, s.id, "two", "", status=Status.FAILED, at=base + timedelta(minutes=1))
    await _turn(
        store,
        s.id,
        "three",
        "partial r3",
        status=Status.INTERRUPTED,
        at=base + timedelta(minutes=2),
    )
    turns = await store.load_context(s.id, 0)
    assert [(t.user_text, t.reply_text) for t in turns] == [("one", "r1"), ("three", "partial r3")]
    assert turns[0].user_at == base
    later = await store.load_context(s.id, turns[1].user_id)
    assert [t.user_text for t in later] == ["three"]


async def test_a_discord_message_is_stored_once(store):
    s = await store.current_session(SCOPE)
    incoming = Incoming(SCOPE, "hi", discord_message_id=555)
    assert await store.add_user_message(s.id, incoming, 1) is not None
    assert await store.add_user_message(s.id, incoming, 1) is None


async def test_timestamps_are_utc_iso(store, tmp_path):
    s = await store.current_session(SCOPE)
    await _turn(store, s.id, "hello", "hi", at=datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC))
    rows = list(
        await store._db.execute_fetchall("SELECT created_at FROM messages WHERE role = 'user'")
    )
    assert rows[0][0] == "2026-03-04T05:06:07.890Z"


async def test_pending_turns_left_by_a_crash_become_interrupted(tmp_path):
    path = tmp_path / "bot.sqlite3"
    s = await Store.open(path)
    session = await s.current_session(SCOPE)
    user_id = await s.add_user_message(session.id, Incoming(SCOPE, "q"), 1)
    reply_id = await s.start_reply(
        session.id,
        user_id,
        model="m",
        system_prompt_id=await s.system_prompt_id("sys"),
        temperature=0.5,
        top_p=1.0,
        max_tokens=10,
    )
    await s.add_reply_part(reply_id, 9001, 100, 0)
    await s.checkpoint_reply(reply_id, "half an ans")
    await s.close()  # the process "dies" here, with the turn pending

    s = await Store.open(path)
    recovered = await s.recover_pending()
    assert recovered == [(reply_id, "half an ans", [(9001, 100)])]
    statuses = [(role, status) for role, _, status in await s.messages_of(session.id)]
    assert statuses == [(Role.USER, Status.INTERRUPTED), (Role.ASSISTANT, Status.INTERRUPTED)]
    # an interrupted reply with text is still context: the user saw it
    assert [t.reply_text for t in await s.load_context(session.id, 0)] == ["half an ans"]
    # until the edge says it marked the reply on Discord, another crash must not lose it
    assert await s.recover_pending() == recovered
    await s.reply_marked(reply_id)
    assert await s.recover_pending() == []
    await s.close()


async def test_concurrent_turns_on_one_connection_do_not_interleave_transactions(store):
    """Many tasks share the store; a transaction must never see another task's statement."""
    import asyncio

    async def one(i: int) -> None:
        scope = Scope(Kind.CHANNEL, str(i % 3), guild_id=1, user_id=i)
        session = await store.current_session(scope)
        await _turn(store, session.id, f"q{i}", f"a{i}", discord_id=1000 + i)
        await store.recover_pending()

    await asyncio.gather(*(one(i) for i in range(60)))
    rows = list(
        await store._db.execute_fetchall("SELECT status, count(*) FROM messages GROUP BY 1")
    )
    assert rows == [("done", 120)]
