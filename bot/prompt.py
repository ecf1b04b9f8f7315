"""Rendering a session's turns into the chat messages sent to the model. Pure functions.

The system prompt carries nothing volatile (a clock in it would defeat vLLM's prefix cache,
facts.md); time awareness comes from a short note before each user message, derived only from
stored timestamps, so a message renders the same way on every later request.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta

from bot.models import Turn

Message = dict[str, str]

_GAP_NOTE = timedelta(hours=1)
_NAME_UNSAFE = re.compile(r"[\[\]\n\r\t]")
MAX_NAME_CHARS = 32


def clean_name(name: str) -> str:
    return _NAME_UNSAFE.sub(" ", name).strip()[:MAX_NAME_CHARS]


def _span(gap: timedelta) -> str:
    minutes = int(gap.total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def time_note(at: datetime, previous: datetime | None, author: str | None = None) -> str:
    """``[Alice, Thu 2026-11-26 05:03 UTC, 3 h 5 min after the previous message]``."""
    parts = [clean_name(author)] if author else []
    parts.append(at.strftime("%a %Y-%m-%d %H:%M UTC"))
    if previous is not None and at - previous >= _GAP_NOTE:
        parts.append(f"{_span(at - previous)} after the previous message")
    return "[" + ", ".join(parts) + "]"


def render_user(
    text: str,
    at: datetime,
    previous: datetime | None,
    author: str | None,
    *,
    time_awareness: bool,
    shared: bool,
) -> str:
    name = author if shared else None
    if time_awareness:
        return f"{time_note(at, previous, name)}\n{text}"
    if name:
        return f"[{clean_name(name)}]\n{text}"
    return text


def build_messages(
    system_prompt: str,
    turns: Sequence[Turn],
    newest_text: str,
    newest_at: datetime,
    newest_author: str | None,
    *,
    time_awareness: bool = True,
    shared: bool = False,
) -> list[Message]:
    messages: list[Message] = [{"role": "system", "content": system_prompt}]
    previous: datetime | None = None
    for turn in turns:
        messages.append(
            {
                "role": "user",
                "content": render_user(
                    turn.user_text,
                    turn.user_at,
                    previous,
                    turn.author_name,
                    time_awareness=time_awareness,
                    shared=shared,
                ),
            }
        )
        messages.append({"role": "assistant", "content": turn.reply_text})
        previous = turn.reply_at
    messages.append(
        {
            "role": "user",
            "content": render_user(
                newest_text,
                newest_at,
                previous,
                newest_author,
                time_awareness=time_awareness,
                shared=shared,
            ),
        }
    )
    return messages
