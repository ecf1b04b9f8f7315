"""Every SQL statement the bot runs, one method each, returning plain data from bot.models.

One aiosqlite connection is the single writer (facts.md: one connection per task gives the worst
tails). The connection is in autocommit mode, so a single statement is one round trip to
aiosqlite's thread; operations that touch several rows wrap them in BEGIN IMMEDIATE … COMMIT.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from bot import db as dbmod
from bot.models import (
    Incoming,
    ReplyRecord,
    Role,
    Scope,
    Session,
    Status,
    Turn,
    from_iso,
    to_iso,
    utcnow,
)


class Store:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._prompt_ids: dict[str, int] = {}

    @classmethod
    async def open(cls, path: Path | str, *, busy_timeout_ms: int = 5000) -> Store:
        """Connect, migrate to the latest schema, and return a ready store."""
        db = await dbmod.connect(path, busy_timeout_ms=busy_timeout_ms)
        try:
            await dbmod.migrate(db)
        except BaseException:
            await db.close()
            raise
        return cls(db)

    async def close(self) -> None:
        # aiosqlite's worker thread is not a daemon: an unclosed connection hangs exit.
        await self._db.close()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            await self._db.execute("ROLLBACK")
            raise
        await self._db.execute("COMMIT")

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = list(await self._db.execute_fetchall(sql, params))
        return tuple(rows[0]) if rows else None

    # -- sessions ---------------------------------------------------------------------------

    async def current_session(self, scope: Scope) -> Session:
        """The open session for this scope, created on first use."""
        key = scope.key
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
        return Session(id=row[0], scope_key=key, context_start_id=row[1])

    async def reset_session(self, scope: Scope) -> bool:
        """Close the open session: kept for feedback and export, no longer sent to the model."""
        cursor = await self._db.execute(
            "UPDATE sessions SET closed_at = ? WHERE scope_key = ? AND closed_at IS NULL",
            (to_iso(utcnow()), scope.key),
        )
        return cursor.rowcount > 0

    async def set_context_start(self, session_id: int, message_id: int) -> None:
        await self._db.execute(
            "UPDATE sessions SET context_start_id = ? WHERE id = ?", (message_id, session_id)
        )

    # -- messages ---------------------------------------------------------------------------

    async def add_user_message(
        self, session_id: int, incoming: Incoming, tokens: int, status: Status = Status.PENDING
    ) -> int | None:
        """Store a user's message; None if this Discord message was already stored (a replay)."""
        row = await self._one(
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
        row = await self._one(
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
        await self._db.execute(
            "UPDATE messages SET content = ? WHERE id = ? AND status = 'pending'", (text, reply_id)
        )

    async def finish_turn(
        self, user_message_id: int, reply_id: int | None, record: ReplyRecord
    ) -> None:
        """Store the reply's outcome and give the user's message the same terminal status."""
        now = to_iso(utcnow())
        async with self._transaction() as db:
            if reply_id is not None:
                await db.execute(
                    "UPDATE messages SET status = ?, content = ?, tokens = ?, updated_at = ?,"
                    " finish_reason = ?, error = ?, prompt_tokens = ?, completion_tokens = ?,"
                    " cached_tokens = ?, first_token_ms = ?, latency_ms = ?,"
                    " context_start_id = ?, context_turns = ? WHERE id = ?",
                    (
                        record.status,
                        record.text,
                        record.tokens,
                        now,
                        record.finish_reason,
                        record.error,
                        record.prompt_tokens,
                        record.completion_tokens,
                        record.cached_tokens,
                        record.first_token_ms,
                        record.latency_ms,
                        record.context_start_id,
                        record.context_turns,
                        reply_id,
                    ),
                )
            await db.execute(
                "UPDATE messages SET status = ?, updated_at = ?, error = ? WHERE id = ?",
                (record.status, now, record.error, user_message_id),
            )

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
        (message id, channel id), so the edge can annotate what users saw.
        """
        async with self._transaction() as db:
            replies = await db.execute_fetchall(
                "SELECT id, content FROM messages WHERE status = 'pending' AND role = 'assistant'"
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
        return found

    async def add_reply_part(
        self, reply_id: int, discord_message_id: int, channel_id: int | None, part: int
    ) -> None:
        await self._db.execute(
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
        row = await self._one(f"SELECT count(*) FROM {table} WHERE {where}", tuple(params))  # noqa: S608
        return int(row[0]) if row else 0
