"""Plain data shared by the engine, the store and the edges. Nothing here imports discord."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime


class Role(enum.StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


class Status(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Kind(enum.StrEnum):
    DM = "dm"
    CHANNEL = "channel"
    THREAD = "thread"
    CONSOLE = "console"


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_iso(moment: datetime) -> str:
    """UTC ISO-8601 with milliseconds: sortable as text, readable in the sqlite3 shell."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def from_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


def valid_text(text: str) -> str:
    """``text`` as valid Unicode: a lone surrogate (which SQLite and UTF-8 refuse) becomes
    '?'. Applied to text that arrives from Discord before it is stored or echoed."""
    return text.encode("utf-8", "replace").decode("utf-8")


@dataclass(frozen=True, slots=True)
class Scope:
    """Where a conversation lives (a DM, channel, thread or console name) and whose it is.

    ``user_id`` is the owner; ``None`` means everyone in the place shares the session.
    """

    kind: Kind
    place: str  # channel/thread id for Discord, the session name for the console
    guild_id: int | None = None
    user_id: int | None = None

    @property
    def key(self) -> str:
        owner = "all" if self.user_id is None else str(self.user_id)
        return f"{self.kind}:{self.place}:{owner}"

    @property
    def channel_id(self) -> int | None:
        return int(self.place) if self.kind is not Kind.CONSOLE else None


@dataclass(frozen=True, slots=True)
class Session:
    id: int
    scope_key: str
    context_start_id: int


@dataclass(frozen=True, slots=True)
class ChatSettings:
    """The settings one turn runs with, resolved from config, channel and user overrides."""

    system_prompt: str
    temperature: float
    top_p: float
    max_tokens: int
    time_awareness: bool = True


@dataclass(frozen=True, slots=True)
class Incoming:
    """A user's message, converted from the edge (Discord, console) into plain data."""

    scope: Scope
    text: str
    author_id: int | None = None
    author_name: str | None = None
    discord_message_id: int | None = None
    created_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class Turn:
    """One user message and the reply it got, as loaded for the model's context."""

    user_id: int  # row id of the user message
    user_text: str
    user_tokens: int
    user_at: datetime
    author_name: str | None
    reply_text: str
    reply_tokens: int
    reply_at: datetime


@dataclass(frozen=True, slots=True)
class ReplyRecord:
    """Everything stored about a finished (or failed) reply."""

    status: Status
    text: str
    tokens: int
    finish_reason: str | None = None
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    first_token_ms: int | None = None
    latency_ms: int | None = None
    context_start_id: int | None = None
    context_turns: int | None = None


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """Overrides an admin set for a channel; None means "inherit"."""

    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    shared: bool | None = None
    auto_thread: bool | None = None
    reply_all: bool | None = None


@dataclass(frozen=True, slots=True)
class UserSettings:
    """Overrides a user set for themselves; None means "inherit"."""

    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class ExportFilter:
    guild_id: int | None = None  # None: every guild and DMs (the shell export only)
    since: datetime | None = None
    until: datetime | None = None
    channel_id: int | None = None
    model: str | None = None
    score: str | None = None  # "positive", "negative", "rated", "unrated" or None for all
