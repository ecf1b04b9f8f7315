"""Every SQL statement the bot runs, one method each, returning plain data from bot.models.

One aiosqlite connection is the single writer (facts.md: one connection per task gives the worst
tails). The connection is in autocommit mode, so a single statement is one round trip to
aiosqlite's thread; operations that touch several rows wrap them in BEGIN IMMEDIATE … COMMIT.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite

from bot import db as dbmod
from bot.models import (
    ChannelSettings,
    ExportFilter,
    Incoming,
    ReplyRecord,
    Role,
    Scope,
    Session,
    Status,
    Turn,
    UserSettings,
    from_iso,
    to_iso,
    utcnow,
)

_Params = Sequence[Any] | Mapping[str, Any]


class _Serialised:
    """The connection, one operation at a time.

    All tasks share one connection, so without this a statement from one task could run inside
    another task's BEGIN … COMMIT (and be rolled back with it), or a second BEGIN would fail.

    The writes of a turn go through :meth:`write`, which commits together the writes that queue
    up while the connection is busy (group commit): at ``synchronous=FULL`` every commit waits
    for an fsync, so twenty writers at once would otherwise each wait for up to twenty fsyncs.
    """

    def __init__(self, db: aiosqlite.Connection, lock: asyncio.Lock) -> None:
        self._raw = db
        self._lock = lock
        self._queued: list[tuple[str, _Params, asyncio.Future[list[Any]]]] = []
        self._committer: asyncio.Task[None] | None = None

    async def execute(self, sql: str, params: _Params = ()) -> aiosqlite.Cursor:
        async with self._lock:
            return await self._raw.execute(sql, params)

    async def execute_fetchall(self, sql: str, params: Sequence[Any] = ()) -> Iterable[Any]:
        async with self._lock:
            return await self._raw.execute_fetchall(sql, params)

    async def write(self, sql: str, params: _Params = ()) -> list[Any]:
        """Run one writing statement; its rows (RETURNING) once it is committed.

        Like an autocommit statement it is durable when this returns, and it runs even if the
        caller is cancelled meanwhile. Writes queued while a commit is in progress are
        committed together in one transaction; if any of them fails, that transaction is
        rolled back and each is run on its own, so only the failing one raises.
        """
        done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queued.append((sql, params, done))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_queued())
        return await done

    async def _commit_queued(self) -> None:
        batch: list[tuple[str, _Params, asyncio.Future[list[Any]]]] = []
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                async with self._lock:
                    results = await self._run(batch)
                for (_, _, done), result in zip(batch, results, strict=True):
                    if done.done():  # the caller was cancelled; the write stands regardless
                        continue
                    if isinstance(result, BaseException):
                        done.set_exception(result)
                    else:
                        done.set_result(result)
                batch = []
        except BaseException as exc:  # the connection failed, or shutdown: nobody may wait forever
            for _, _, done in batch + self._queued:
                if done.done():
                    continue
                if isinstance(exc, Exception):
                    done.set_exception(exc)
                else:
                    done.cancel()
            self._queued = []
            if not isinstance(exc, Exception):
                raise
        finally:
            self._committer = None

    async def _run(self, batch: list[tuple[str, _Params, Any]]) -> list[Any]:
        db = self._raw
        if len(batch) > 1:
            try:
                await db.execute("BEGIN IMMEDIATE")
                results = [list(await db.execute_fetchall(sql, p)) for sql, p, _ in batch]
                await db.execute("COMMIT")
                return results
            except sqlite3.Error:
                if db.in_transaction:
                    await db.execute("ROLLBACK")
        out: list[Any] = []
        for sql, params, _ in batch:
            try:
                out.append(list(await db.execute_fetchall(sql, params)))
            except sqlite3.Error as exc:
                out.append(exc)
        return out

    async def backup(self, target: aiosqlite.Connection) -> None:
        async with self._lock:
            await self._raw.backup(target)

    async def close(self) -> None:
        if self._committer is not None:
            await asyncio.wait([self._committer])
        async with self._lock:
            await self._raw.close()


class Store:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._raw = db
        self._lock = asyncio.Lock()
        self._db = _Serialised(db, self._lock)
        self._prompt_ids: dict[str, int] = {}
        # Read-through caches of rows that change only through this store: one bot process
        # owns the database (bot.app.instance_lock), so they cannot go stale behind its back.
        # They save three or four round trips to aiosqlite's thread on every turn.
        self._sessions: dict[str, Session] = {}
        self._channels: dict[int, ChannelSettings] = {}
        self._users: dict[int, UserSettings] = {}

    @classmethod
    async def open(
        cls, path: Path | str, *, busy_timeout_ms: int = 5000, migrate: bool = True
    ) -> Store:
        """Connect, migrate to the latest schema, and return a ready store."""
        db = await dbmod.connect(path, busy_timeout_ms=busy_timeout_ms)
        try:
            if migrate:
                await dbmod.migrate(db)
            elif await dbmod.schema_version(db) != dbmod.LATEST_VERSION:
                raise dbmod.SchemaError("the database is not at this bot's schema version")
        except BaseException:
            await db.close()
            raise
        return cls(db)

    async def close(self) -> None:
        # aiosqlite's worker thread is not a daemon: an unclosed connection hangs exit.
        await self._db.close()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE … COMMIT, holding the connection so no other task's statement
        can land inside it."""
        async with self._lock:
            db = self._raw
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = list(await self._db.execute_fetchall(sql, params))
        return tuple(rows[0]) if rows else None

    async def _write_one(self, sql: str, params: _Params = ()) -> tuple[Any, ...] | None:
        rows = await self._db.write(sql, params)
        return tuple(rows[0]) if rows else None

    # -- sessions ---------------------------------------------------------------------------

    async def current_session(self, scope: Scope) -> Session:
        """The open session for this scope, created on first use."""
        key = scope.key
        cached = self._sessions.get(key)
        if cached is not None:
            return cached
        row = await self._one(
            "SELECT id, context_start_id FROM sessions WHERE scope_key = ? AND closed_at IS NULL",
            (key,),
        )
        if row is None:
            row = await self._one(
                "INSERT INTO sessions (scope_key, kind, guild_id, channel_id, user_id, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (scope_key) WHERE closed_at IS NULL DO NOTHING"
                " RETURNING id, context_start_id",
                (
                    key,
                    scope.kind,
                    scope.guild_id,
                    scope.channel_id,
                    scope.user_id,
                    to_iso(utcnow()),
                ),
            )
            if row is None:  # another task created it between our two statements
                return await self.current_session(scope)
        session = Session(id=row[0], scope_key=key, context_start_id=row[1])
        _remember(self._sessions, key, session)
        return session

    async def reset_session(self, scope: Scope) -> bool:
        """Close the open session: kept for feedback and export, no longer sent to the model."""
        cursor = await self._db.execute(
            "UPDATE sessions SET closed_at = ? WHERE scope_key = ? AND closed_at IS NULL",
            (to_iso(utcnow()), scope.key),
        )
        self._sessions.pop(scope.key, None)
        return cursor.rowcount > 0

    async def set_context_start(self, session_id: int, message_id: int) -> None:
        await self._db.execute(
            "UPDATE sessions SET context_start_id = ? WHERE id = ?", (message_id, session_id)
        )
        for key, session in list(self._sessions.items()):
            if session.id == session_id:
                self._sessions[key] = Session(session_id, key, message_id)

    # -- messages ---------------------------------------------------------------------------

    async def add_user_message(
        self, session_id: int, incoming: Incoming, tokens: int, status: Status = Status.PENDING
    ) -> int | None:
        """Store a user's message; None if this Discord message was already stored (a replay)."""
        row = await self._write_one(
            "INSERT INTO messages (session_id, role, status, content, tokens, created_at,"
            " author_id, author_name, discord_message_id) VALUES (?, 'user', ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (discord_message_id) DO NOTHING RETURNING id",
            (
                session_id,
                status,
                incoming.text,
                tokens,
                to_iso(incoming.created_at),
                incoming.author_id,
                incoming.author_name,
                incoming.discord_message_id,
            ),
        )
        return None if row is None else int(row[0])

    async def system_prompt_id(self, text: str) -> int:
        cached = self._prompt_ids.get(text)
        if cached is not None:
            return cached
        row = await self._one(
            "INSERT INTO system_prompts (text) VALUES (?)"
            " ON CONFLICT (text) DO UPDATE SET text = excluded.text RETURNING id",
            (text,),
        )
        assert row is not None
        self._prompt_ids[text] = int(row[0])
        return int(row[0])

    async def start_reply(
        self,
        session_id: int,
        user_message_id: int,
        *,
        model: str,
        system_prompt_id: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
    ) -> int:
        """Create the reply row (pending) before the first token, so parts and reactions can
        point at it while it streams and a crash leaves a trace to mark interrupted."""
        row = await self._write_one(
            "INSERT INTO messages (session_id, role, status, content, tokens, created_at, reply_to,"
            " model, system_prompt_id, temperature, top_p, max_tokens)"
            " VALUES (?, 'assistant', 'pending', '', 0, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                session_id,
                to_iso(utcnow()),
                user_message_id,
                model,
                system_prompt_id,
                temperature,
                top_p,
                max_tokens,
            ),
        )
        assert row is not None
        return int(row[0])

    async def checkpoint_reply(self, reply_id: int, text: str) -> None:
        """Save the text streamed so far, so a crash loses at most one checkpoint interval."""
        await self._db.write(
            "UPDATE messages SET content = ? WHERE id = ? AND status = 'pending'", (text, reply_id)
        )

    # The reply's own columns; the user's message takes only status, updated_at and error.
    _REPLY_COLUMNS = (
        ("content", "text"),
        ("tokens", "tokens"),
        ("finish_reason", "finish_reason"),
        ("prompt_tokens", "prompt_tokens"),
        ("completion_tokens", "completion_tokens"),
        ("cached_tokens", "cached_tokens"),
        ("first_token_ms", "first_token_ms"),
        ("latency_ms", "latency_ms"),
        ("context_start_id", "context_start_id"),
        ("context_turns", "context_turns"),
    )
    _FINISH_TURN = (
        "UPDATE messages SET status = :status, updated_at = :now, error = :error, "
        + ", ".join(f"{c} = CASE id WHEN :reply THEN :{c} ELSE {c} END" for c, _ in _REPLY_COLUMNS)
        + " WHERE id IN (:user, :reply)"
    )

    async def finish_turn(
        self, user_message_id: int, reply_id: int | None, record: ReplyRecord
    ) -> None:
        """Store the reply's outcome and give the user's message the same terminal status.

        One statement updates both rows, so it commits atomically on its own: one round trip
        to the database thread instead of four (BEGIN, two UPDATEs, COMMIT) on every turn.
        """
        params: dict[str, Any] = {
            "status": record.status,
            "now": to_iso(utcnow()),
            "error": record.error,
            "user": user_message_id,
            "reply": reply_id,  # None: only the user's message (no reply row was started)
        }
        for column, attribute in self._REPLY_COLUMNS:
            params[column] = getattr(record, attribute)
        await self._db.write(self._FINISH_TURN, params)

    async def load_context(self, session_id: int, start_id: int) -> list[Turn]:
        """The answered turns of a session from ``start_id`` on, oldest first.

        Only turns whose reply reached the user (done, or interrupted with text) are context:
        a failed turn would leave two user messages in a row.
        """
        rows = await self._db.execute_fetchall(
            "SELECT u.id, u.content, u.tokens, u.created_at, u.author_name,"
            " a.content, a.tokens, COALESCE(a.updated_at, a.created_at)"
            " FROM messages AS u JOIN messages AS a ON a.reply_to = u.id"
            " WHERE u.session_id = ? AND u.id >= ? AND u.role = 'user'"
            " AND a.status IN ('done', 'interrupted') AND a.content != ''"
            " ORDER BY u.id",
            (session_id, start_id),
        )
        return [
            Turn(
                user_id=r[0],
                user_text=r[1],
                user_tokens=r[2],
                user_at=from_iso(r[3]),
                author_name=r[4],
                reply_text=r[5],
                reply_tokens=r[6],
                reply_at=from_iso(r[7]),
            )
            for r in rows
        ]

    async def recover_pending(self) -> list[tuple[int, str, list[tuple[int, int | None]]]]:
        """Mark turns a crash left pending as interrupted.

        Returns each interrupted reply's id, its last checkpointed text and its Discord parts
        (message id, channel id), so the edge can annotate what users saw. Replies stay on
        that list (``meta`` key ``unmarked_replies``) until :meth:`reply_marked` says their
        annotation went out, so a second crash before it did does not lose it.
        """
        async with self._transaction() as db:
            rows = list(
                await db.execute_fetchall("SELECT value FROM meta WHERE key = 'unmarked_replies'")
            )
            earlier = {int(i) for i in rows[0][0].split(",") if i} if rows else set()
            replies = await db.execute_fetchall(
                "SELECT id, content FROM messages WHERE role = 'assistant'"
                f" AND (status = 'pending' OR id IN ({','.join(map(str, earlier)) or 'NULL'}))"
                " ORDER BY id"
            )
            found: list[tuple[int, str, list[tuple[int, int | None]]]] = []
            for reply_id, text in replies:
                parts = await db.execute_fetchall(
                    "SELECT discord_message_id, channel_id FROM reply_parts"
                    " WHERE message_id = ? ORDER BY part",
                    (reply_id,),
                )
                found.append((reply_id, text, [(p[0], p[1]) for p in parts]))
            await db.execute(
                "UPDATE messages SET status = 'interrupted', updated_at = ?,"
                " error = COALESCE(error, 'process stopped') WHERE status = 'pending'",
                (to_iso(utcnow()),),
            )
            unmarked = ",".join(str(reply_id) for reply_id, _, parts in found if parts)
            await db.execute(
                "INSERT INTO meta (key, value) VALUES ('unmarked_replies', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (unmarked,),
            )
        return found

    async def reply_marked(self, reply_id: int) -> None:
        """The edge showed the mark of a reply :meth:`recover_pending` returned."""
        async with self._transaction() as db:
            rows = list(
                await db.execute_fetchall("SELECT value FROM meta WHERE key = 'unmarked_replies'")
            )
            left = [i for i in (rows[0][0].split(",") if rows else []) if i and int(i) != reply_id]
            await db.execute(
                "UPDATE meta SET value = ? WHERE key = 'unmarked_replies'", (",".join(left),)
            )

    async def add_reply_part(
        self, reply_id: int, discord_message_id: int, channel_id: int | None, part: int
    ) -> None:
        await self._db.write(
            "INSERT OR REPLACE INTO reply_parts (discord_message_id, message_id, channel_id, part)"
            " VALUES (?, ?, ?, ?)",
            (discord_message_id, reply_id, channel_id, part),
        )

    async def messages_of(self, session_id: int) -> list[tuple[Role, str, Status]]:
        """Every message of a session in order (for /mydata and tests)."""
        rows = await self._db.execute_fetchall(
            "SELECT role, content, status FROM messages WHERE session_id = ? ORDER BY id",
            (session_id,),
        )
        return [(Role(r[0]), r[1], Status(r[2])) for r in rows]

    async def count(self, table: str, where: str = "1", params: Iterable[Any] = ()) -> int:
        """Row count helper for status pages and tests; ``table`` is never user input."""
        if table not in {"messages", "sessions", "feedback", "reply_parts"}:
            raise ValueError(table)
        row = await self._one(f"SELECT count(*) FROM {table} WHERE {where}", tuple(params))
        return int(row[0]) if row else 0

    # -- edits and deletes from Discord -----------------------------------------------------

    async def edit_user_message(self, discord_message_id: int, text: str, tokens: int) -> bool:
        cursor = await self._db.execute(
            "UPDATE messages SET content = ?, tokens = ?, updated_at = ?"
            " WHERE discord_message_id = ? AND role = 'user'",
            (text, tokens, to_iso(utcnow()), discord_message_id),
        )
        return cursor.rowcount > 0

    async def delete_discord_message(self, discord_message_id: int) -> bool:
        """A user deleted their message: remove it, its reply and the reply's feedback."""
        cursor = await self._db.execute(
            "DELETE FROM messages WHERE discord_message_id = ? AND role = 'user'",
            (discord_message_id,),
        )
        if cursor.rowcount:
            return True
        cursor = await self._db.execute(
            "DELETE FROM reply_parts WHERE discord_message_id = ?", (discord_message_id,)
        )
        return False

    # -- feedback ---------------------------------------------------------------------------

    async def reply_for_part(self, discord_message_id: int) -> int | None:
        row = await self._one(
            "SELECT message_id FROM reply_parts WHERE discord_message_id = ?",
            (discord_message_id,),
        )
        return None if row is None else int(row[0])

    async def add_reaction(
        self, discord_message_id: int, user_id: int, emoji: str, score: int
    ) -> bool:
        """A user put a scoring reaction on a message of a reply: it becomes their score.
        False if the message is not a reply part, or the reaction was already recorded."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "INSERT INTO reactions (discord_message_id, user_id, emoji, message_id, score,"
                " added_at) SELECT discord_message_id, ?, ?, message_id, ?, ? FROM reply_parts"
                " WHERE discord_message_id = ? ON CONFLICT DO NOTHING",
                (user_id, emoji, score, to_iso(utcnow()), discord_message_id),
            )
            if cursor.rowcount > 0:
                await self._rescore(db, discord_message_id, user_id)
            return cursor.rowcount > 0

    async def remove_reaction(self, discord_message_id: int, user_id: int, emoji: str) -> bool:
        """A user took a reaction back: their score falls back to the latest one they still
        show on the reply, or is cleared when none is left."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "DELETE FROM reactions WHERE discord_message_id = ? AND user_id = ? AND emoji = ?",
                (discord_message_id, user_id, emoji),
            )
            if cursor.rowcount > 0:
                await self._rescore(db, discord_message_id, user_id)
            return cursor.rowcount > 0

    @staticmethod
    async def _rescore(db: aiosqlite.Connection, discord_message_id: int, user_id: int) -> None:
        reply = "(SELECT message_id FROM reply_parts WHERE discord_message_id = :part)"
        now = to_iso(utcnow())
        params = {"part": discord_message_id, "user": user_id, "now": now}
        await db.execute(
            "INSERT INTO feedback (message_id, user_id, score, created_at, updated_at)"
            f" SELECT message_id, user_id, score, :now, :now FROM reactions WHERE message_id ="
            f" {reply} AND user_id = :user ORDER BY rowid DESC LIMIT 1"
            " ON CONFLICT (message_id, user_id)"
            " DO UPDATE SET score = excluded.score, updated_at = excluded.updated_at",
            params,
        )
        await db.execute(
            f"DELETE FROM feedback WHERE message_id = {reply} AND user_id = :user AND NOT EXISTS"
            f" (SELECT 1 FROM reactions WHERE message_id = {reply} AND user_id = :user)",
            params,
        )

    async def scores(self, reply_id: int) -> dict[int, int]:
        rows = await self._db.execute_fetchall(
            "SELECT user_id, score FROM feedback WHERE message_id = ?", (reply_id,)
        )
        return {int(r[0]): int(r[1]) for r in rows}

    # -- settings ---------------------------------------------------------------------------

    CHANNEL_FIELDS = frozenset(ChannelSettings.__slots__)
    USER_FIELDS = frozenset(UserSettings.__slots__)

    async def channel_settings(self, channel_id: int) -> ChannelSettings:
        cached = self._channels.get(channel_id)
        if cached is not None:
            return cached
        row = await self._one(
            "SELECT system_prompt, temperature, max_tokens, shared, auto_thread, reply_all"
            " FROM channel_settings WHERE channel_id = ?",
            (channel_id,),
        )
        settings = ChannelSettings()
        if row is not None:
            prompt, temperature, max_tokens, shared, auto_thread, reply_all = row
            settings = ChannelSettings(
                prompt,
                temperature,
                max_tokens,
                _bool(shared),
                _bool(auto_thread),
                _bool(reply_all),
            )
        _remember(self._channels, channel_id, settings)
        return settings

    async def user_settings(self, user_id: int) -> UserSettings:
        cached = self._users.get(user_id)
        if cached is not None:
            return cached
        row = await self._one(
            "SELECT system_prompt, temperature, max_tokens FROM user_settings WHERE user_id = ?",
            (user_id,),
        )
        settings = UserSettings() if row is None else UserSettings(*row)
        _remember(self._users, user_id, settings)
        return settings

    async def set_channel_setting(
        self, channel_id: int, guild_id: int | None, name: str, value: Any, by: int
    ) -> None:
        if name not in self.CHANNEL_FIELDS:
            raise ValueError(name)
        await self._db.execute(
            f"INSERT INTO channel_settings (channel_id, guild_id, {name}, updated_at, updated_by)"
            f" VALUES (?, ?, ?, ?, ?) ON CONFLICT (channel_id) DO UPDATE SET"
            f" {name} = excluded.{name}, updated_at = excluded.updated_at,"
            " updated_by = excluded.updated_by",
            (channel_id, guild_id, value, to_iso(utcnow()), by),
        )
        self._channels.pop(channel_id, None)

    async def set_user_setting(self, user_id: int, name: str, value: Any) -> None:
        if name not in self.USER_FIELDS:
            raise ValueError(name)
        await self._db.execute(
            f"INSERT INTO user_settings (user_id, {name}, updated_at) VALUES (?, ?, ?)"
            f" ON CONFLICT (user_id) DO UPDATE SET {name} = excluded.{name},"
            " updated_at = excluded.updated_at",
            (user_id, value, to_iso(utcnow())),
        )
        self._users.pop(user_id, None)

    # -- threads the bot opened -------------------------------------------------------------

    async def add_bot_thread(
        self, thread_id: int, guild_id: int | None, parent_id: int, user_id: int
    ) -> None:
        await self._db.execute(
            "INSERT OR IGNORE INTO bot_threads (thread_id, guild_id, parent_id, user_id,"
            " created_at) VALUES (?, ?, ?, ?, ?)",
            (thread_id, guild_id, parent_id, user_id, to_iso(utcnow())),
        )

    async def is_bot_thread(self, thread_id: int) -> bool:
        return (
            await self._one("SELECT 1 FROM bot_threads WHERE thread_id = ?", (thread_id,))
            is not None
        )

    # -- privacy ----------------------------------------------------------------------------

    async def forget_user(
        self, user_id: int, *, guild_id: int | None = None, channel_id: int | None = None
    ) -> int:
        """Delete a user's messages, the replies to them, their sessions and their feedback,
        everywhere or only in one guild or one channel. Returns the rows deleted."""
        self._sessions.clear()
        self._users.pop(user_id, None)
        where, params = "1", []
        if channel_id is not None:
            where, params = "s.channel_id = ?", [channel_id]
        elif guild_id is not None:
            where, params = "s.guild_id = ?", [guild_id]
        deleted = 0
        used = "SELECT DISTINCT system_prompt_id FROM messages WHERE system_prompt_id IS NOT NULL"
        async with self._transaction() as db:
            prompts_before = {row[0] for row in await db.execute_fetchall(used)}
            for sql in (
                # their feedback and reactions on replies in scope
                "DELETE FROM feedback WHERE user_id = ? AND message_id IN (SELECT m.id FROM"
                f" messages m JOIN sessions s ON s.id = m.session_id WHERE {where})",
                "DELETE FROM reactions WHERE user_id = ? AND message_id IN (SELECT m.id FROM"
                f" messages m JOIN sessions s ON s.id = m.session_id WHERE {where})",
                # their messages (replies and the replies' feedback go by cascade)
                "DELETE FROM messages WHERE author_id = ? AND session_id IN"
                f" (SELECT s.id FROM sessions s WHERE {where})",
                # sessions they owned, with everything in them
                f"DELETE FROM sessions WHERE user_id = ? AND id IN (SELECT s.id FROM sessions s"
                f" WHERE {where})",
            ):
                cursor = await db.execute(sql, (user_id, *params))
                deleted += max(cursor.rowcount, 0)
            if channel_id is None and guild_id is None:
                for sql in (
                    "DELETE FROM user_settings WHERE user_id = ?",
                    "DELETE FROM bot_threads WHERE user_id = ?",
                    "UPDATE channel_settings SET updated_by = NULL WHERE updated_by = ?",
                ):
                    cursor = await db.execute(sql, (user_id,))
                    deleted += max(cursor.rowcount, 0)
            # Personas only their replies used (their own, which may say anything about them)
            # would otherwise outlive the replies.
            orphaned = prompts_before - {row[0] for row in await db.execute_fetchall(used)}
            for prompt_id in orphaned:
                cursor = await db.execute("DELETE FROM system_prompts WHERE id = ?", (prompt_id,))
                deleted += max(cursor.rowcount, 0)
        if orphaned:
            self._prompt_ids.clear()
        self._sessions.clear()  # again: a turn may have cached one of them meanwhile
        # Copies of the deleted pages may still sit in the write-ahead log.
        await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted

    async def user_data(self, user_id: int) -> dict[str, Any]:
        """Everything stored about one user, for /mydata."""
        messages = await self._db.execute_fetchall(
            "SELECT m.id, s.kind, s.guild_id, s.channel_id, m.role, m.content, m.created_at,"
            " m.status, m.reply_to FROM messages m JOIN sessions s ON s.id = m.session_id"
            " WHERE m.author_id = ? OR m.reply_to IN"
            " (SELECT id FROM messages WHERE author_id = ?) ORDER BY m.id",
            (user_id, user_id),
        )
        feedback = await self._db.execute_fetchall(
            "SELECT f.message_id, f.score, f.updated_at, m.content FROM feedback f"
            " JOIN messages m ON m.id = f.message_id WHERE f.user_id = ? ORDER BY f.updated_at",
            (user_id,),
        )
        settings = await self.user_settings(user_id)
        return {
            "user_id": str(user_id),
            "messages": [
                {
                    "id": r[0],
                    "place": r[1],
                    "guild_id": _str(r[2]),
                    "channel_id": _str(r[3]),
                    "role": r[4],
                    "text": r[5],
                    "created_at": r[6],
                    "status": r[7],
                    "in_reply_to": r[8],
                }
                for r in messages
            ],
            "feedback": [
                {"reply_id": r[0], "score": r[1], "at": r[2], "reply": r[3]} for r in feedback
            ],
            "settings": {k: getattr(settings, k) for k in sorted(self.USER_FIELDS)},
        }

    # -- export and status ------------------------------------------------------------------

    async def export_replies(self, where: ExportFilter) -> AsyncIterator[dict[str, Any]]:
        """Each answered reply with what produced it and how users scored it, oldest first."""
        clauses = ["a.role = 'assistant'", "a.status IN ('done', 'interrupted')"]
        params: list[Any] = []
        if where.guild_id is not None:
            clauses.append("s.guild_id = ?")
            params.append(where.guild_id)
        if where.since is not None:
            clauses.append("a.created_at >= ?")
            params.append(to_iso(where.since))
        if where.until is not None:
            clauses.append("a.created_at < ?")
            params.append(to_iso(where.until))
        if where.channel_id is not None:
            clauses.append("s.channel_id = ?")
            params.append(where.channel_id)
        if where.model is not None:
            clauses.append("a.model = ?")
            params.append(where.model)
        having = {
            "positive": "HAVING COALESCE(SUM(f.score), 0) > 0",
            "negative": "HAVING COALESCE(SUM(f.score), 0) < 0",
            "rated": "HAVING COUNT(f.user_id) > 0",
            "unrated": "HAVING COUNT(f.user_id) = 0",
        }.get(where.score or "", "")
        rows = await self._db.execute_fetchall(
            "SELECT a.id, s.id, s.kind, s.guild_id, s.channel_id, s.user_id IS NULL,"
            " u.id, u.content, u.created_at, u.author_id, u.tokens,"
            " a.content, a.created_at, a.updated_at, a.status, a.model, p.text, a.temperature,"
            " a.top_p, a.max_tokens, a.prompt_tokens, a.completion_tokens, a.cached_tokens,"
            " a.first_token_ms, a.latency_ms, a.finish_reason, a.context_start_id, a.tokens,"
            " group_concat(f.user_id || ':' || f.score)"
            " FROM messages a JOIN sessions s ON s.id = a.session_id"
            " JOIN messages u ON u.id = a.reply_to"
            " LEFT JOIN system_prompts p ON p.id = a.system_prompt_id"
            " LEFT JOIN feedback f ON f.message_id = a.id"
            f" WHERE {' AND '.join(clauses)} GROUP BY a.id {having} ORDER BY a.id",
            params,
        )
        for r in rows:
            context = await self.load_context(r[1], r[26] if r[26] is not None else r[6])
            scores = [
                (int(user), int(score))
                for user, score in (item.split(":") for item in (r[28] or "").split(",") if item)
            ]
            yield {
                "reply_id": r[0],
                "session_id": r[1],
                "place": r[2],
                "guild_id": r[3],
                "channel_id": r[4],
                "shared_session": bool(r[5]),
                "user_message_id": r[6],
                "user_text": r[7],
                "user_at": r[8],
                "author_id": r[9],
                "user_tokens": r[10],
                "reply": r[11],
                "reply_started_at": r[12],
                "reply_finished_at": r[13],
                "status": r[14],
                "model": r[15],
                "system_prompt": r[16],
                "temperature": r[17],
                "top_p": r[18],
                "max_tokens": r[19],
                "prompt_tokens": r[20],
                "completion_tokens": r[21],
                "cached_tokens": r[22],
                "first_token_ms": r[23],
                "latency_ms": r[24],
                "finish_reason": r[25],
                "reply_tokens": r[27],
                "context": [t for t in context if t.user_id < r[6]],
                "scores": scores,
            }

    async def stats_since(self, since: datetime) -> dict[str, Any]:
        at = to_iso(since)
        turns = await self._db.execute_fetchall(
            "SELECT status, count(*), avg(latency_ms), avg(first_token_ms) FROM messages"
            " WHERE role = 'assistant' AND created_at >= ? GROUP BY status",
            (at,),
        )
        feedback = await self._one(
            "SELECT COALESCE(SUM(score = 1), 0), COALESCE(SUM(score = -1), 0) FROM feedback"
            " WHERE updated_at >= ?",
            (at,),
        )
        return {
            "turns": {r[0]: int(r[1]) for r in turns},
            "latency_ms": {r[0]: r[2] for r in turns},
            "first_token_ms": {r[0]: r[3] for r in turns},
            "thumbs_up": int(feedback[0]) if feedback else 0,
            "thumbs_down": int(feedback[1]) if feedback else 0,
        }

    async def meta(self, key: str) -> str | None:
        row = await self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    async def set_meta_if_absent(self, key: str, value: str) -> str:
        await self._db.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value)
        )
        stored = await self.meta(key)
        assert stored is not None
        return stored

    async def backup(self, target: Path) -> None:
        """A consistent online copy through SQLite's backup API, while the bot keeps writing."""
        target.parent.mkdir(parents=True, exist_ok=True)
        async with aiosqlite.connect(target) as copy:
            await self._db.backup(copy)


_CACHED_ROWS = 10_000


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHED_ROWS:
        cache.clear()  # rarely hit; simpler than LRU and the rows are cheap to read again
    cache[key] = value


def _bool(value: int | None) -> bool | None:
    return None if value is None else bool(value)


def _str(value: int | None) -> str | None:
    return None if value is None else str(value)
