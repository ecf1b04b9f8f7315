"""The Discord client: a ``commands.Bot`` that owns nothing but references to the app's
resources, loads one cog per feature, and shuts down gracefully."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import Any, TypeAlias

import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot.app import App, open_app
from bot.config import Config, DiscordConfig
from bot.engine import SHUTDOWN
from bot.llm import LLMError
from bot.splitting import split_reply
from bot.streaming import NO_PINGS, WARNING

log = logging.getLogger(__name__)

Interaction: TypeAlias = discord.Interaction["ChatBot"]
# Unknown interaction, unknown webhook, invalid webhook token: the interaction is gone.
EXPIRED_CODES = frozenset({10062, 10015, 50027})


class FatalLogin(Exception):
    """Discord refused us for good (bad token, disallowed intents): do not reconnect."""


def point_at(config: DiscordConfig) -> None:
    """Use any Discord-compatible server (facts.md: two discord.py class attributes)."""
    discord.http.Route.BASE = config.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(config.gateway_url)


def intents() -> discord.Intents:
    wanted = discord.Intents.none()
    wanted.guilds = True
    wanted.guild_messages = True
    wanted.dm_messages = True
    wanted.guild_reactions = True
    wanted.dm_reactions = True
    wanted.message_content = True  # to read messages that do not mention the bot
    return wanted


class ChatBot(commands.Bot):
    def __init__(self, app: App, **options: Any) -> None:
        config = app.config.discord
        super().__init__(
            command_prefix=commands.when_mentioned,  # unused: no prefix commands
            intents=intents(),
            allowed_mentions=NO_PINGS,
            help_command=None,
            guild_ready_timeout=config.guild_ready_timeout,
            max_messages=1000,
            **options,
        )
        self.app = app
        self.accepting = True
        self._background: set[asyncio.Task[None]] = set()

    async def setup_hook(self) -> None:
        from bot.cogs.admin import Admin
        from bot.cogs.chat import Chat
        from bot.cogs.feedback import Feedback
        from bot.cogs.user import UserCommands

        for cog in (Chat(self), Feedback(self), UserCommands(self), Admin(self)):
            await self.add_cog(cog)
        self.tree.error(self.on_app_command_error)
        self._spawn(self._watch_model())
        if self.app.interrupted:
            self._spawn(self._annotate_interrupted())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def on_message(self, message: discord.Message, /) -> None:
        return None  # chat is handled by the Chat cog; there are no prefix commands

    async def on_ready(self) -> None:
        # May fire again after a re-IDENTIFY: nothing here may be one-time set-up.
        log.info("ready: connected as %s to %d server(s)", self.user, len(self.guilds))

    async def on_app_command_error(
        self, interaction: Interaction, error: app_commands.AppCommandError
    ) -> None:
        original = getattr(error, "original", None)
        if isinstance(original, discord.HTTPException) and original.code in EXPIRED_CODES:
            # The answer took longer than the interaction lives (15 min): its token is dead, so
            # any further answer through it fails the same way. Say so once, send nothing.
            log.warning(
                "command %s: the interaction expired before its answer was ready; not answered",
                getattr(interaction.command, "name", "?"),
            )
            return
        if isinstance(error, app_commands.CheckFailure):
            text = "You don't have permission to use this command here."
        elif isinstance(error, app_commands.TransformerError):
            # e.g. a channel option naming a channel of another server: the user's input
            name = getattr(interaction.command, "name", "?")
            log.info("command %s: option value refused (%s)", name, error.type.name)
            text = "One of the options is not valid here."
        else:
            log.error(
                "command %s failed", getattr(interaction.command, "name", "?"), exc_info=error
            )
            text = "Sorry, that command failed. The error was logged."
        await reply_ephemeral(interaction, text)

    async def _watch_model(self) -> None:
        """Start-up check of the model server: warn and keep retrying, never crash."""
        delay = 2.0
        while True:
            try:
                await self.app.engine.ensure_model()
                return
            except LLMError as exc:
                log.warning("model server not ready (%s); retrying in %.0f s", exc.kind, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)

    async def _annotate_interrupted(self) -> None:
        """Replies a crash cut short get their last saved text and a visible mark."""
        await self.wait_until_ready()
        for reply_id, text, parts in self.app.interrupted:
            if not parts:
                continue
            message_id, channel_id = parts[-1]
            pieces = split_reply(text) or [""]
            content = pieces[min(len(parts), len(pieces)) - 1]
            mark = f"\n\n{WARNING} *interrupted: the bot restarted.*"
            try:
                channel = self.get_partial_messageable(channel_id or 0)
                await channel.get_partial_message(message_id).edit(
                    content=(content[: 2000 - len(mark)] + mark).strip(), allowed_mentions=NO_PINGS
                )
            except discord.HTTPException as exc:
                log.info("could not mark an interrupted reply (HTTP %s)", exc.status)
            # Done either way (discord.py already retried what can be retried); until here a
            # crash leaves the reply on the list for the next start.
            await self.app.store.reply_marked(reply_id)

    async def drain(self, grace: float) -> None:
        """Stop taking turns; let running ones finish for ``grace`` s, then interrupt them."""
        self.accepting = False
        chat = self.get_cog("Chat")
        tasks = list(getattr(chat, "tasks", {}).values())
        if tasks:
            log.info("waiting up to %.0f s for %d reply(ies) to finish", grace, len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=grace)
            if chat is not None:
                chat.pacer.close()  # type: ignore[attr-defined]
            for task in pending:
                task.cancel(SHUTDOWN)
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        for task in list(self._background):
            task.cancel()


async def reply_ephemeral(interaction: Interaction, text: str, **kwargs: Any) -> None:
    """Answer privately, whether or not the interaction was already acknowledged."""
    try:
        if interaction.response.is_done():
            await interaction.followup.send(
                text, ephemeral=True, allowed_mentions=NO_PINGS, **kwargs
            )
        else:
            await interaction.response.send_message(
                text, ephemeral=True, allowed_mentions=NO_PINGS, **kwargs
            )
    except discord.HTTPException as exc:
        log.warning("could not answer an interaction (HTTP %s, code %s)", exc.status, exc.code)


async def run(config: Config) -> int:
    """``python -m bot``: run until SIGTERM/SIGINT; returns the process exit code."""
    token = config.discord.token
    if token is None or not token.get_secret_value().strip():
        raise FatalLogin("DISCORD_TOKEN is not set (see config/example.env)")
    point_at(config.discord)
    async with open_app(config) as app:
        bot = ChatBot(app)
        # Everything made so far (modules, config, tokenizer, the app) lives as long as the
        # process: frozen out of the cyclic GC, a full collection stops scanning it, and its
        # 50-60 ms pauses (the p99 of a reply's first text) drop to a few ms.
        gc.collect()
        gc.freeze()
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)

        async def stop_on_signal() -> None:
            await stopping.wait()
            log.info("stopping: finishing in-flight replies")
            await bot.drain(config.limits.shutdown_grace)
            await bot.close()

        stopper = asyncio.create_task(stop_on_signal())
        try:
            await bot.start(token.get_secret_value(), reconnect=True)
        except discord.LoginFailure as exc:
            raise FatalLogin("Discord rejected the token (check DISCORD_TOKEN)") from exc
        except discord.PrivilegedIntentsRequired as exc:
            raise FatalLogin(
                "Discord refused the message content intent: enable it for the bot in the "
                "Developer Portal (Bot > Privileged Gateway Intents)"
            ) from exc
        except discord.ConnectionClosed as exc:
            if exc.code in (4004, 4014):
                raise FatalLogin(
                    f"Discord closed the connection for good (code {exc.code})"
                ) from exc
            raise
        finally:
            stopper.cancel()
            if not bot.is_closed():
                await bot.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    return 0
