"""Admin slash commands: /status and /export, checked here, scoped to the invoking server."""

from __future__ import annotations

import asyncio
import gzip
import io
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot import export
from bot.client import Interaction, reply_ephemeral
from bot.config import Config
from bot.models import ExportFilter, utcnow, valid_text
from bot.store import Store
from bot.streaming import NO_PINGS

if TYPE_CHECKING:
    from bot.client import ChatBot

Score = Literal["all", "positive", "negative", "rated", "unrated"]


def is_admin(interaction: Interaction, admin_ids: tuple[int, ...]) -> bool:
    if interaction.user.id in admin_ids:
        return True
    perms = interaction.permissions
    return interaction.guild_id is not None and (perms.manage_guild or perms.administrator)


def parse_when(text: str | None) -> datetime | None:
    """'2026-11-01', '2026-11-01T12:00' or a span back from now: '7d', '12h'."""
    if not text:
        return None
    text = text.strip()
    units = {"d": "days", "h": "hours", "w": "weeks"}
    if text[-1:].lower() in units and text[:-1].isdigit():
        try:
            return utcnow() - timedelta(**{units[text[-1].lower()]: int(text[:-1])})
        except OverflowError:  # '99999999999d': before year 1
            raise ValueError(f"{text[:40]!r} reaches too far back") from None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Admin(commands.Cog):
    def __init__(self, bot: ChatBot) -> None:
        self.bot = bot
        self.app = bot.app

    def _admin(self, interaction: Interaction) -> bool:
        return is_admin(interaction, self.app.config.discord.admin_user_ids)

    @app_commands.command(name="status", description="Model, backend health, queue, last day")
    @app_commands.default_permissions(manage_guild=True)
    async def status(self, interaction: Interaction) -> None:
        if not self._admin(interaction):
            await reply_ephemeral(interaction, "Only server admins (Manage Server) can see this.")
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        engine = self.app.engine
        healthy = await engine.llm.health()
        stats = await self.app.store.stats_since(utcnow() - timedelta(days=1))
        model = engine.model
        turns = stats["turns"]
        lines = [
            f"**Model**: {model.id if model else 'not resolved yet'}"
            + (f" (context {model.max_model_len} tokens)" if model else ""),
            f"**Backend**: {'healthy' if healthy else 'NOT answering'}"
            + (" — circuit open, failing fast" if engine.llm.breaker.is_open else ""),
            f"**Queue**: {engine.gate.running} generating, {engine.gate.waiting} waiting",
            f"**Last 24 h**: {sum(turns.values())} replies ("
            + ", ".join(f"{n} {s}" for s, n in sorted(turns.items()))
            + ")"
            if turns
            else "**Last 24 h**: no replies",
            f"**Feedback, last 24 h**: {stats['thumbs_up']} 👍 / {stats['thumbs_down']} 👎",
            f"**Token estimate ratio**: {engine.ratio:.2f} (vLLM tokens per tiktoken token); "
            f"context trims since start: {engine.trims}",
        ]
        await interaction.followup.send("\n".join(lines), ephemeral=True, allowed_mentions=NO_PINGS)

    @app_commands.command(name="export", description="Download this server's feedback log")
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.describe(
        format="jsonl (datasets) or csv (spreadsheets)",
        since="from: 2026-11-01 or a span like 7d / 12h",
        until="before: a date or span",
        score="which replies: all, positive, negative, rated or unrated",
        channel="only this channel",
        model="only replies from this model",
    )
    async def export(
        self,
        interaction: Interaction,
        format: Literal["jsonl", "csv"] = "jsonl",
        since: str | None = None,
        until: str | None = None,
        score: Score = "all",
        channel: discord.TextChannel | None = None,
        model: str | None = None,
    ) -> None:
        # Checked here, not only through default_permissions: admins can override that hint.
        if interaction.guild_id is None:
            await reply_ephemeral(
                interaction, "Run /export in a server; it exports that server's feedback only."
            )
            return
        if not self._admin(interaction):
            await reply_ephemeral(interaction, "Only server admins (Manage Server) can export.")
            return
        if format not in ("jsonl", "csv") or score not in (
            "all",
            "positive",
            "negative",
            "rated",
            "unrated",
        ):
            await reply_ephemeral(interaction, "Unknown format or score filter.")
            return
        try:
            where = ExportFilter(
                guild_id=interaction.guild_id,
                since=parse_when(since),
                until=parse_when(until),
                channel_id=channel.id if channel else None,
                model=valid_text(model) if model is not None else None,
                score=None if score == "all" else score,
            )
        except ValueError:
            await reply_ephemeral(interaction, "Dates look like 2026-11-01 or 7d (7 days ago).")
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        key = await export_key(self.app.store, self.app.config)
        body, count = await build_export(self.app.config.database.path, where, format, key)
        name = export.filename(where, format)
        limit = interaction.filesize_limit
        if len(body) > limit:
            # tens of MB: compressing on the event loop would stall the gateway heartbeat
            body, name = await asyncio.to_thread(gzip.compress, body), name + ".gz"
        if len(body) > limit:
            await interaction.followup.send(
                f"The export is {len(body) // 1_000_000} MB, over Discord's upload limit. Narrow "
                "it with since/until, or run `python -m bot export` on the server.",
                ephemeral=True,
                allowed_mentions=NO_PINGS,
            )
            return
        await interaction.followup.send(
            export.describe(where, count, format),
            file=discord.File(io.BytesIO(body), filename=name),
            ephemeral=True,
            allowed_mentions=NO_PINGS,
        )


async def export_key(store: Store, config: Config) -> bytes:
    """The pseudonymisation key: from config, else generated once and kept in the database."""
    configured = config.export.pseudonym_key
    if configured is not None:
        return bytes(configured.get_secret_value(), "utf-8")
    return (await store.set_meta_if_absent("pseudonym_key", secrets.token_hex(32))).encode()


async def build_export(path: Path, where: ExportFilter, fmt: str, key: bytes) -> tuple[bytes, int]:
    """Run the export on its own read connection, so replies keep being stored meanwhile."""
    reader = await Store.open(path, migrate=False)
    try:
        out = io.StringIO()
        count = await export.write(export.records(reader.export_replies(where), key), out, fmt)
    finally:
        await reader.close()
    # off the event loop too: encoding tens of MB takes tens of ms
    return await asyncio.to_thread(lambda: out.getvalue().encode()), count
