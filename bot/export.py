"""The feedback export: each rated (or unrated) reply with what produced it, as JSONL or CSV.

User ids are replaced by a keyed hash (HMAC-SHA256), the same user mapping to the same value
within and across exports made with the same key, so scores can be grouped by rater without
revealing who rated. CSV text cells that a spreadsheet would run as a formula are neutralised
(OWASP ASVS: a leading apostrophe); JSONL keeps the exact text, for datasets.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from bot.models import ExportFilter, to_iso, utcnow

SCHEMA_VERSION = 1
FORMULA_START = ("=", "+", "-", "@", "|", "%")
_BLANKS = re.compile(r"^[\s\u200b\u200c\u200d\u2060\ufeff\u180e]+")  # \s: any Unicode space

CSV_FIELDS = [
    "reply_id", "reply_at", "guild_id", "channel_id", "place", "model", "system_prompt",
    "temperature", "top_p", "max_tokens", "prompt_tokens", "completion_tokens", "cached_tokens",
    "first_token_ms", "latency_ms", "finish_reason", "status", "score", "thumbs_up",
    "thumbs_down", "scores", "user", "user_text", "reply", "context",
]  # fmt: skip
_CSV_TEXT = {"model", "system_prompt", "finish_reason", "status", "scores", "user", "user_text",
             "reply", "context", "place"}  # fmt: skip


def pseudonym(key: bytes, user_id: int | None) -> str | None:
    if user_id is None:
        return None
    return hmac.new(key, str(user_id).encode(), hashlib.sha256).hexdigest()[:16]


def record(raw: dict[str, Any], key: bytes) -> dict[str, Any]:
    """One export record from a row of :meth:`bot.store.Store.export_replies`."""
    scores = [{"user": pseudonym(key, user), "score": score} for user, score in raw["scores"]]
    up = sum(1 for s in scores if s["score"] > 0)
    down = len(scores) - up
    context: list[dict[str, Any]] = []
    for turn in raw["context"]:
        context.append({"role": "user", "text": turn.user_text, "at": to_iso(turn.user_at)})
        context.append({"role": "assistant", "text": turn.reply_text, "at": to_iso(turn.reply_at)})
    return {
        "schema_version": SCHEMA_VERSION,
        "reply_id": raw["reply_id"],
        "reply_at": raw["reply_started_at"],
        "reply_finished_at": raw["reply_finished_at"],
        "guild_id": _id(raw["guild_id"]),
        "channel_id": _id(raw["channel_id"]),
        "place": raw["place"],
        "shared_session": raw["shared_session"],
        "model": raw["model"],
        "system_prompt": raw["system_prompt"],
        "temperature": raw["temperature"],
        "top_p": raw["top_p"],
        "max_tokens": raw["max_tokens"],
        "prompt_tokens": raw["prompt_tokens"],
        "completion_tokens": raw["completion_tokens"],
        "cached_tokens": raw["cached_tokens"],
        "first_token_ms": raw["first_token_ms"],
        "latency_ms": raw["latency_ms"],
        "finish_reason": raw["finish_reason"],
        "status": raw["status"],
        "user": pseudonym(key, raw["author_id"]),
        "user_text": raw["user_text"],
        "user_at": raw["user_at"],
        "reply": raw["reply"],
        "context": context,
        "scores": scores,
        "score": up - down,
        "thumbs_up": up,
        "thumbs_down": down,
    }


def _id(value: int | None) -> str | None:
    # Snowflakes exceed JavaScript's safe integers: strings survive every JSON reader.
    return None if value is None else str(value)


def neutralise(text: str) -> str:
    """Make a CSV cell inert in spreadsheets: no line may start with a formula character.

    A lone CR breaks lines in spreadsheets as LF does, and the blanks before a formula
    character are any Unicode space or zero-width character."""
    lines = text.replace("\0", "").split("\n")
    for i, line in enumerate(lines):
        head, *rest = line.split("\r")
        lines[i] = _defuse("\r".join([head, *map(_defuse, rest)]))
    return "\n".join(lines)


def _defuse(line: str) -> str:
    bare = _BLANKS.sub("", line)
    return "'" + line if bare.startswith(FORMULA_START) or line.startswith(("\t", "\r")) else line


def csv_row(rec: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name in CSV_FIELDS:
        value = rec.get(name)
        if name in ("context", "scores"):
            value = json.dumps(value, ensure_ascii=False)
        if name in _CSV_TEXT and value is not None:
            value = neutralise(str(value))
        row[name] = "" if value is None else value
    return row


async def write(records: AsyncIterator[dict[str, Any]], out: io.TextIOBase | Any, fmt: str) -> int:
    """Write records as ``jsonl`` or ``csv``; returns how many were written."""
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\r\n")
        writer.writeheader()
        async for rec in records:
            writer.writerow(csv_row(rec))
            count += 1
        return count
    async for rec in records:
        out.write(json.dumps(rec, ensure_ascii=False) + "\n")
        count += 1
    return count


async def records(rows: AsyncIterator[dict[str, Any]], key: bytes) -> AsyncIterator[dict[str, Any]]:
    async for raw in rows:
        yield record(raw, key)


def describe(where: ExportFilter, count: int, fmt: str) -> str:
    """What an export contains, said alongside the file."""
    parts = [f"{count} repl{'y' if count == 1 else 'ies'}"]
    if where.guild_id is not None:
        parts.append(f"server {where.guild_id}")
    if where.channel_id is not None:
        parts.append(f"channel {where.channel_id}")
    if where.since is not None:
        parts.append(f"since {to_iso(where.since)}")
    if where.until is not None:
        parts.append(f"before {to_iso(where.until)}")
    if where.model:
        parts.append(f"model {where.model}")
    if where.score:
        parts.append(f"{where.score} only")
    return (
        f"Feedback export ({fmt.upper()}, schema v{SCHEMA_VERSION}, made {to_iso(utcnow())}): "
        + ", ".join(parts)
        + ". Each record: the reply, the user message and context that produced it, model and "
        "sampling settings, token counts, latency, timestamps, per-user scores and their sum. "
        "User ids are pseudonymised with a keyed hash. Message content is included: Discord's "
        "Developer Policy requires permission before using it to train models."
    )


def filename(where: ExportFilter, fmt: str) -> str:
    scope = f"server-{where.guild_id}" if where.guild_id is not None else "all"
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    return f"feedback-{scope}-{stamp}.{fmt}"
