"""Chat text of known token counts, and databases seeded fast in the bot's own schema.

Seeding uses plain ``sqlite3`` with ``executemany`` on the schema that ``bot.db.migrations()``
gives (a million messages in seconds); every measurement then goes through the bot's ``Store``.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bot import db as dbmod
from bot.config import DEFAULT_SYSTEM_PROMPT
from bot.tokens import TokenCounter


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Common words that are one cl100k token each with their leading space.
WORDS = _words(
    "the bot keeps a memory of each conversation and trims it by tokens so that the server can "
    "reuse the cached prefix of the last request while the card stays busy with other people "
    "who ask about python code threads games music food travel work school weather news sport "
    "when why how what where which could would should please thanks again also just still then "
    "more less many few first last next time day week year home city world life story idea"
)
REPLY_WORDS = _words(
    "sure here is how that works in short you can try this first and then check the result "
    "if it still fails tell me the error message and the version you use so we can look at it "
    "together one more thing to keep in mind is that the order matters"
)


def text(rng: random.Random, tokens: int, words: tuple[str, ...] | list[str] = WORDS) -> str:
    """About ``tokens`` cl100k tokens of chat-like text."""
    body = " ".join(rng.choice(words) for _ in range(max(1, tokens)))
    return body[0].upper() + body[1:] + "."


class TextPool:
    """A few thousand texts of 20-200 tokens with their exact token counts, drawn at random."""

    def __init__(
        self, counter: TokenCounter | None, seed: int = 1, size: int = 2000, lo: int = 20,
        hi: int = 200,
    ) -> None:  # fmt: skip
        rng = random.Random(seed)
        self.rng = rng
        self.items: list[tuple[str, int]] = []
        for i in range(size):
            words = REPLY_WORDS if i % 2 else WORDS
            body = text(rng, rng.randint(lo, hi), words)
            count = counter.count(body) if counter is not None else len(body.split())
            self.items.append((body, count))

    def draw(self) -> tuple[str, int]:
        return self.items[self.rng.randrange(len(self.items))]


def create_schema(path: Path) -> sqlite3.Connection:
    """A new database at the bot's latest schema, tuned for a bulk load (the bot's own
    connection puts WAL and synchronous=FULL back when it opens it)."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = OFF")
    con.execute("PRAGMA synchronous = OFF")
    for version, script in enumerate(dbmod.migrations(), start=1):
        con.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;")
    con.execute("INSERT INTO system_prompts (id, text) VALUES (1, ?)", (DEFAULT_SYSTEM_PROMPT,))
    return con


@dataclass
class Seeded:
    sessions: list[int]  # session ids
    messages: int
    next_id: int  # first free message id (and Discord message id offset)


def seed_sessions(
    con: sqlite3.Connection,
    pool: TextPool,
    *,
    sessions: int,
    turns: int,
    scope: str = "channel:{s}:{s}",
    first_session: int = 1,
    first_message: int = 1,
) -> Seeded:
    """``sessions`` sessions of ``turns`` answered turns each (two messages a turn)."""
    session_rows = []
    ids = []
    for k in range(sessions):
        sid = first_session + k
        ids.append(sid)
        session_rows.append(
            (sid, scope.format(s=sid), "channel", 1, sid, sid, "2026-11-01T10:00:00.000Z")
        )
    con.execute("BEGIN")
    con.executemany(
        "INSERT INTO sessions (id, scope_key, kind, guild_id, channel_id, user_id, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        session_rows,
    )
    mid = first_message
    batch: list[tuple[object, ...]] = []
    sql = (
        "INSERT INTO messages (id, session_id, role, status, content, tokens, created_at,"
        " author_id, author_name, discord_message_id, reply_to, model, system_prompt_id,"
        " temperature, top_p, max_tokens, finish_reason)"
        " VALUES (?, ?, ?, 'done', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    for sid in ids:
        for t in _turn_times(turns):
            asked, asked_tokens = pool.draw()
            answer, answer_tokens = pool.draw()
            batch.append(
                (mid, sid, "user", asked, asked_tokens, t, sid, "someone", mid,
                 None, None, None, None, None, None, None)
            )  # fmt: skip
            batch.append(
                (mid + 1, sid, "assistant", answer, answer_tokens, t, None, None, None,
                 mid, "tiny", 1, 0.7, 1.0, 512, "stop")
            )  # fmt: skip
            mid += 2
            if len(batch) >= 20_000:
                con.executemany(sql, batch)
                batch.clear()
    con.executemany(sql, batch)
    con.execute("COMMIT")
    return Seeded(ids, mid - first_message, mid)


def _turn_times(turns: int) -> Iterator[str]:
    for i in range(turns):
        day, minute = divmod(i, 600)
        yield f"2026-11-{1 + day % 28:02d}T{10 + minute // 60:02d}:{minute % 60:02d}:00.000Z"
