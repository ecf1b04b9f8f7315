"""Slash commands for everyone: /settings, /reset, /forget, /mydata, /help.

Every answer is ephemeral. Permission checks happen here, in the handler: Discord's
``default_member_permissions`` is only a hint that server admins can override.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import Interaction, reply_ephemeral
from bot.models import Kind, Scope, valid_text
from bot.settings import SPECS, SettingError, describe, parse, resolve
from bot.streaming import NO_PINGS

if TYPE_CHECKING:
    from bot.client import ChatBot

log = logging.getLogger(__name__)

ACK_WITHIN = 1.5  # seconds: answer by then, or acknowledge and answer in a follow-up

HELP = """**How to talk to me**
• Mention me, reply to one of my messages, or DM me. In threads I open, just talk.
• React 👍 or 👎 to any of my replies: it helps the admins improve the model.

**Commands** (only you see the answers)
• `/settings show` · `/settings set` — persona, temperature, reply length (for you, or for \
the channel if you can manage it), sharing, auto-threads, reply-to-everything
• `/reset` — start a new conversation here (I keep the old one for feedback, but stop using it)
• `/forget` — delete your messages and feedback, here, in this server or everywhere
• `/mydata` — download everything I store about you
• `/status`, `/export` — for server admins"""


async def answer_in_time(interaction: Interaction, work: Awaitable[str]) -> None:
    """Answer privately with the text ``work`` returns. Database work is usually instant but
    can be slow (a busy disk, a lock held elsewhere): if the text is not ready within
    ``ACK_WITHIN`` s, acknowledge first ("thinking…") and send it as a follow-up, since Discord
    drops an interaction that is not acknowledged within 3 s."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=ACK_WITHIN)
    if not done:
        try:
            await interaction.response.defer(ephemeral=True, thinking=True)
        except discord.HTTPException as exc:
            log.warning("could not acknowledge an interaction (HTTP %s)", exc.status)
    await reply_ephemeral(interaction, await task)


def place_of(interaction: Interaction) -> tuple[Kind, int, int | None]:
    """(kind, place id, settings channel id) of the channel a command was used in."""
    channel = interaction.channel
    if isinstance(channel, discord.DMChannel) or interaction.guild_id is None:
        return Kind.DM, interaction.channel_id or 0, None
    if isinstance(channel, discord.Thread):
        return Kind.THREAD, channel.id, channel.parent_id or channel.id
    return Kind.CHANNEL, interaction.channel_id or 0, interaction.channel_id


def can_manage_channel(interaction: Interaction) -> bool:
    perms = interaction.permissions
    return interaction.guild_id is not None and (perms.manage_channels or perms.administrator)


class ConfirmForget(discord.ui.View):
    def __init__(self, owner: int) -> None:
        super().__init__(timeout=120)
        self.owner = owner
        self.confirmed: bool | None = None

    async def interaction_check(self, interaction: Interaction) -> bool:  # type: ignore[override]
        return interaction.user.id == self.owner

    @discord.ui.button(label="Delete my data", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: Interaction, _: discord.ui.Button[ConfirmForget]) -> None:
        self.confirmed = True
        await interaction.response.edit_message(content="Deleting…", view=None)
        self.stop()

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: Interaction, _: discord.ui.Button[ConfirmForget]) -> None:
        self.confirmed = False
        await interaction.response.edit_message(content="Nothing was deleted.", view=None)
        self.stop()


class UserCommands(commands.Cog):
    settings = app_commands.Group(name="settings", description="Show or change how I answer")

    def __init__(self, bot: ChatBot) -> None:
        self.bot = bot
        self.app = bot.app

    async def _scope(self, interaction: Interaction) -> tuple[Scope, int | None, bool]:
        kind, place, settings_channel = place_of(interaction)
        shared = False
        if settings_channel is not None:
            shared = bool((await self.app.store.channel_settings(settings_channel)).shared)
        owner = None if shared else interaction.user.id
        return Scope(kind, str(place), interaction.guild_id, owner), settings_channel, shared

    @settings.command(name="show", description="Show the settings I use for you here")
    async def settings_show(self, interaction: Interaction) -> None:
        await answer_in_time(interaction, self._show(interaction))

    async def _show(self, interaction: Interaction) -> str:
        _, settings_channel, shared = await self._scope(interaction)
        store = self.app.store
        channel = await store.channel_settings(settings_channel) if settings_channel else None
        from bot.models import ChannelSettings

        channel = channel or ChannelSettings()
        user = await store.user_settings(interaction.user.id)
        effective = resolve(self.app.config, channel, user, shared=shared)
        return "\n".join(describe(effective, channel, shared=shared))

    @settings.command(name="set", description="Change a setting for you or for this channel")
    @app_commands.describe(
        target="'me' changes it for you only; 'channel' for everyone here (Manage Channels)",
        name="which setting",
        value="the new value, or 'default' to go back to the default",
    )
    @app_commands.choices(name=[app_commands.Choice(name=n, value=n) for n in SPECS])
    async def settings_set(
        self,
        interaction: Interaction,
        target: Literal["me", "channel"],
        name: str,
        value: app_commands.Range[str, 1, 4000],
    ) -> None:
        # discord.py passes out-of-range and forged values straight through: check them all.
        name, text = valid_text(name), valid_text(str(value))
        if target not in ("me", "channel"):
            await reply_ephemeral(interaction, "Target must be 'me' or 'channel'.")
            return
        try:
            parsed = parse(name, text)
        except SettingError as exc:
            await reply_ephemeral(interaction, str(exc))
            return
        await answer_in_time(interaction, self._set(interaction, target, name, text, parsed))

    async def _set(
        self, interaction: Interaction, target: str, name: str, value: str, parsed: Any
    ) -> str:
        spec = SPECS[name]
        _, settings_channel, _ = await self._scope(interaction)
        if target == "me":
            if spec.channel_only:
                return f"'{name}' can only be set for a channel."
            await self.app.store.set_user_setting(interaction.user.id, spec.field, parsed)
            where = "for you"
        else:
            if settings_channel is None:
                return "Channel settings only exist in servers."
            if not can_manage_channel(interaction):
                return (
                    "Changing a channel's settings needs the Manage Channels "
                    "permission. You can still change your own with target 'me'."
                )
            await self.app.store.set_channel_setting(
                settings_channel, interaction.guild_id, spec.field, parsed, interaction.user.id
            )
            where = "for this channel"
        shown = "the default" if parsed is None else f"`{value.strip()[:100]}`"
        return f"**{name}** set to {shown} {where}."

    @app_commands.command(name="reset", description="Start a new conversation here")
    async def reset(self, interaction: Interaction) -> None:
        await answer_in_time(interaction, self._reset(interaction))

    async def _reset(self, interaction: Interaction) -> str:
        scope, _, shared = await self._scope(interaction)
        if shared and not can_manage_channel(interaction):
            return (
                "This channel shares one conversation; resetting "
                "it needs the Manage Channels permission."
            )
        changed = await self.app.store.reset_session(scope)
        return (
            "Started a new conversation: I won't use the earlier messages any more."
            if changed
            else "There was no conversation to reset here."
        )

    @app_commands.command(name="forget", description="Delete your messages and feedback")
    @app_commands.describe(where="here (this channel), server (this server) or everywhere")
    async def forget(
        self, interaction: Interaction, where: Literal["here", "server", "everywhere"] = "here"
    ) -> None:
        if where not in ("here", "server", "everywhere"):
            await reply_ephemeral(interaction, "Choose here, server or everywhere.")
            return
        if where == "server" and interaction.guild_id is None:
            where = "here"
        view = ConfirmForget(interaction.user.id)
        label = {"here": "in this channel", "server": "in this server", "everywhere": "everywhere"}[
            where
        ]
        await interaction.response.send_message(
            f"Delete all your messages, my replies to them and your feedback {label}? "
            "This cannot be undone.",
            view=view,
            ephemeral=True,
            allowed_mentions=NO_PINGS,
        )
        await view.wait()
        if not view.confirmed:
            return
        _, place, _ = place_of(interaction)
        deleted = await self.app.store.forget_user(
            interaction.user.id,
            channel_id=place if where == "here" else None,
            guild_id=interaction.guild_id if where == "server" else None,
        )
        await interaction.edit_original_response(
            content=f"Done: {deleted} record(s) deleted {label}.", view=None
        )

    @app_commands.command(name="mydata", description="Download everything I store about you")
    async def mydata(self, interaction: Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        data = await self.app.store.user_data(interaction.user.id)
        body = json.dumps(data, ensure_ascii=False, indent=2).encode()
        await interaction.followup.send(
            f"Your data: {len(data['messages'])} message(s) and {len(data['feedback'])} "
            "feedback score(s), as JSON.",
            file=discord.File(io.BytesIO(body), filename="mydata.json"),
            ephemeral=True,
            allowed_mentions=NO_PINGS,
        )

    @app_commands.command(name="help", description="How to use this bot")
    async def help(self, interaction: Interaction) -> None:
        await reply_ephemeral(interaction, HELP)
