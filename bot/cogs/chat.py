"""Chat: decide whether to answer a message, convert it to plain data, stream the reply."""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import sqlite3
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord
import httpx
from discord.ext import commands

from bot.admission import Busy, RateLimiter
from bot.models import ChannelSettings, Incoming, Kind, Scope, valid_text
from bot.settings import resolve
from bot.streaming import NO_PINGS, ChannelPacer, DiscordReply

if TYPE_CHECKING:
    from bot.client import ChatBot

log = logging.getLogger(__name__)

ANSWERED = (discord.MessageType.default, discord.MessageType.reply)
TEXT_SUFFIXES = (".txt", ".md", ".py", ".json", ".csv", ".log", ".yaml", ".yml", ".toml",
                 ".ini", ".cfg", ".js", ".ts", ".html", ".css", ".sql", ".sh", ".c", ".h",
                 ".cpp", ".rs", ".go", ".java", ".rb", ".xml")  # fmt: skip
NOTICE_SECONDS = 20.0
FOLLOW_UPS = 1  # messages a user may send while a reply streams; they are answered in turn
SEEN_IDS = 4096


@dataclass(frozen=True, slots=True)
class Route:
    """Where and for whom to answer one message."""

    channel: discord.abc.Messageable
    scope: Scope
    channel_settings: ChannelSettings
    reply_to: discord.Message | None


class Chat(commands.Cog):
    def __init__(self, bot: ChatBot) -> None:
        self.bot = bot
        self.app = bot.app
        limits = bot.app.config.limits
        self.limiter = RateLimiter(limits.user_turns_per_minute, limits.user_burst)
        self.pacer = ChannelPacer()
        self.tasks: dict[int, asyncio.Task[None]] = {}  # Discord message id -> its turn
        self._seen: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._last_notice: dict[tuple[int, str], float] = {}  # (user, reason) -> last note
        # Turns of a one-user session taken in and not yet over, claimed the moment they pass
        # admission (the engine's own queue only sees them after they are stored).
        self._session_turns: collections.Counter[int] = collections.Counter()
        self._claims: dict[int, int] = {}  # Discord message -> its session
        self._downloads = httpx.AsyncClient(timeout=10.0, follow_redirects=True)

    async def cog_unload(self) -> None:
        await self._downloads.aclose()

    # -- events -----------------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if not self._is_candidate(message):
            return
        # Marked before the first await: a replayed copy arriving meanwhile is dropped here
        # (the database's unique Discord id catches replays after a restart).
        self._seen[message.id] = None
        if len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)
        route = await self._route(message)
        if route is None:
            return
        task = asyncio.create_task(self._answer(message, route))
        self.tasks[message.id] = task
        task.add_done_callback(lambda _: self.tasks.pop(message.id, None))

    @commands.Cog.listener()
    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        content = payload.data.get("content")
        if content is None or payload.data.get("author", {}).get("bot"):
            return
        text = self._strip_mention(content)
        await self.app.store.edit_user_message(
            payload.message_id, text, self.app.engine.counter.count(text)
        )

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        await self._deleted(payload.message_id)

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        for message_id in payload.message_ids:
            await self._deleted(message_id)

    async def _deleted(self, message_id: int) -> None:
        task = self.tasks.get(message_id)
        if task is not None:  # the user withdrew the message: stop generating
            task.cancel()
            await asyncio.wait([task], timeout=5.0)
        await self.app.store.delete_discord_message(message_id)

    # -- deciding ---------------------------------------------------------------------------

    def _is_candidate(self, message: discord.Message) -> bool:
        me = self.bot.user
        return (
            self.bot.accepting
            and me is not None
            and not message.author.bot
            and message.webhook_id is None
            and message.author.id != me.id
            and message.type in ANSWERED
            and message.id not in self._seen
        )

    def _mentions_me(self, message: discord.Message) -> bool:
        me = self.bot.user
        return me is not None and any(user.id == me.id for user in message.mentions)

    async def _replies_to_me(self, message: discord.Message) -> bool:
        ref = message.reference
        if ref is None or ref.message_id is None:
            return False
        resolved = ref.resolved
        me = self.bot.user
        if isinstance(resolved, discord.Message) and me is not None:
            return resolved.author.id == me.id
        return await self.app.store.reply_for_part(ref.message_id) is not None

    async def _route(self, message: discord.Message) -> Route | None:
        store = self.app.store
        channel = message.channel
        author = message.author.id
        if isinstance(channel, discord.DMChannel):
            scope = Scope(Kind.DM, str(channel.id), None, author)
            return Route(channel, scope, ChannelSettings(), message)
        guild_id = message.guild.id if message.guild else None
        if isinstance(channel, discord.Thread):
            parent = channel.parent_id or channel.id
            settings = await store.channel_settings(parent)
            mine = channel.owner_id == getattr(self.bot.user, "id", None)
            if not (
                mine
                or await store.is_bot_thread(channel.id)
                or settings.reply_all
                or self._mentions_me(message)
                or await self._replies_to_me(message)
            ):
                return None
            owner = None if settings.shared else author
            return Route(
                channel, Scope(Kind.THREAD, str(channel.id), guild_id, owner), settings, message
            )
        settings = await store.channel_settings(channel.id)
        mentioned = self._mentions_me(message)
        if not (mentioned or settings.reply_all or await self._replies_to_me(message)):
            return None
        if mentioned and settings.auto_thread and isinstance(channel, discord.TextChannel):
            thread = await self._open_thread(message)
            if thread is not None:
                owner = None if settings.shared else author
                scope = Scope(Kind.THREAD, str(thread.id), guild_id, owner)
                return Route(thread, scope, settings, None)
        owner = None if settings.shared else author
        return Route(
            channel, Scope(Kind.CHANNEL, str(channel.id), guild_id, owner), settings, message
        )

    async def _open_thread(self, message: discord.Message) -> discord.Thread | None:
        name = self._strip_mention(message.content)[:80] or f"Chat with {message.author.name}"
        try:
            thread = await message.create_thread(name=name, auto_archive_duration=1440)
        except discord.HTTPException as exc:
            log.warning("could not open a thread (HTTP %s); answering in the channel", exc.status)
            return None
        await self.app.store.add_bot_thread(
            thread.id,
            message.guild.id if message.guild else None,
            message.channel.id,
            message.author.id,
        )
        return thread

    # -- answering --------------------------------------------------------------------------

    def _strip_mention(self, content: str) -> str:
        content = valid_text(content)
        me = self.bot.user
        if me is None:
            return content.strip()
        return re.sub(rf"<@!?{me.id}>", "", content).strip()

    async def _answer(self, message: discord.Message, route: Route) -> None:
        config = self.app.config
        engine = self.app.engine
        sink = DiscordReply(
            route.channel,
            reply_to=route.reply_to,
            pacer=self.pacer,
            edit_interval=config.discord.edit_interval,
            ping_author=config.discord.ping_author,
            record_part=self._record_part,
            show_typing=config.discord.typing,
        )
        try:
            # Downloads cost bandwidth and memory: a message that the rate limit or the
            # one-turn rule refuses is refused before its attachments are fetched.
            downloads = bool(message.attachments)
            refusal = await self._admission(message, route) if downloads else None
            if refusal is None:
                text, skipped = await self._read(message)
                refusal = await self._refusal(message, route, text, admitted=downloads)
            if refusal:
                reason, notice = refusal
                self.app.engine.metrics.refusals.labels(reason).inc()
                sink.stop_typing()
                if not self._noticed_recently(message.author.id, reason):
                    await self._notice(message, route, notice)
                return
            shared = route.scope.user_id is None
            user = await self.app.store.user_settings(message.author.id)
            settings = resolve(config, route.channel_settings, user, shared=shared)
            incoming = Incoming(
                scope=route.scope,
                text=text,
                author_id=message.author.id,
                author_name=valid_text(message.author.display_name),
                discord_message_id=message.id,
                created_at=message.created_at,
            )
            if skipped:
                sink.footer = skipped
            outcome = await engine.respond(incoming, sink, settings)
            if outcome is None:
                sink.stop_typing()  # a replay of a message already answered
        except Busy:
            self.app.engine.metrics.refusals.labels("busy").inc()
            sink.stop_typing()
            await self._notice(
                message,
                route,
                "I'm busy with other conversations right now. Please try again in a minute.",
            )
        except sqlite3.Error as exc:
            # Full disk, I/O error: nothing is lost that was stored; say so and keep serving.
            log.error("storage error while answering: %s", type(exc).__name__)
            await self._notice(
                message,
                route,
                "I couldn't save your message (storage error), "
                "so I didn't answer it. Please try again later.",
            )
        finally:
            sink.stop_typing()
            self._release(message)

    async def _refusal(
        self, message: discord.Message, route: Route, text: str, *, admitted: bool = False
    ) -> tuple[str, str] | None:
        """(reason, a short and polite note) for not answering, or None. ``admitted``: the
        rate limit and the one-turn rule were already checked (:meth:`_admission`)."""
        limits = self.app.config.limits
        if not text:
            return "empty", "Ask me something after the mention."
        if len(text) > limits.max_message_chars:
            return "too_long", (
                f"That message is {len(text)} characters; I can read up to "
                f"{limits.max_message_chars}. Please shorten it or split it up."
            )
        return None if admitted else await self._admission(message, route)

    async def _admission(self, message: discord.Message, route: Route) -> tuple[str, str] | None:
        """The per-user rate limit and the one-turn-at-a-time rule."""
        wait = self.limiter.allow(message.author.id)
        if wait:
            return "rate_limited", (
                f"You're sending messages quickly. Please wait {max(1, round(wait))} s."
            )
        if route.scope.user_id is not None:
            # A follow-up sent while the reply streams waits its turn, as in a conversation;
            # more than one waiting is a flood, and a note says which message was skipped.
            session = await self.app.store.current_session(route.scope)
            if self._session_turns[session.id] > FOLLOW_UPS:
                return "in_flight", (
                    "I'm still answering your earlier messages, so I skipped this one. "
                    "Please send it again when I'm done."
                )
            if message.id not in self._claims:  # a redelivered message claims nothing more
                self._session_turns[session.id] += 1
                self._claims[message.id] = session.id
        return None

    def _release(self, message: discord.Message) -> None:
        session_id = self._claims.pop(message.id, None)
        if session_id is not None:
            self._session_turns[session_id] -= 1
            if self._session_turns[session_id] <= 0:
                del self._session_turns[session_id]

    def _noticed_recently(self, user_id: int, reason: str) -> bool:
        """A user flooding the bot gets one note per NOTICE_SECONDS, not one per message:
        each note is a write that spends the channel's Discord rate limit."""
        if reason not in ("rate_limited", "in_flight"):
            return False
        now = time.monotonic()
        key = (user_id, reason)
        if now - self._last_notice.get(key, -NOTICE_SECONDS) < NOTICE_SECONDS:
            return True
        self._last_notice[key] = now
        if len(self._last_notice) > SEEN_IDS:
            self._last_notice = {
                u: t for u, t in self._last_notice.items() if now - t < NOTICE_SECONDS
            }
        return False

    async def _notice(self, message: discord.Message, route: Route, text: str) -> None:
        """Tell the author something briefly; the note removes itself after a while."""
        try:
            if route.reply_to is not None:
                await message.reply(
                    text,
                    mention_author=False,
                    allowed_mentions=NO_PINGS,
                    delete_after=NOTICE_SECONDS,
                    suppress_embeds=True,
                )
            else:
                await route.channel.send(
                    text,
                    allowed_mentions=NO_PINGS,
                    delete_after=NOTICE_SECONDS,
                    suppress_embeds=True,
                )
        except discord.HTTPException as exc:
            log.info("could not send a notice (HTTP %s)", exc.status)

    async def _record_part(self, reply_id: int, part: discord.Message, index: int) -> None:
        try:
            await self.app.store.add_reply_part(reply_id, part.id, part.channel.id, index)
        except sqlite3.Error as exc:  # full disk: the reply is still delivered, unscorable
            log.warning("reply part not stored: %s", type(exc).__name__)

    async def _read(self, message: discord.Message) -> tuple[str, str | None]:
        """The message's text with readable text attachments appended, and a note on the
        attachments that were skipped."""
        text = self._strip_mention(message.content)
        cap = self.app.config.discord.attachment_max_bytes
        skipped: list[str] = []
        for attachment in message.attachments:
            is_text = (attachment.content_type or "").startswith("text/") or (
                attachment.filename.lower().endswith(TEXT_SUFFIXES)
            )
            if not is_text:
                skipped.append(f"{attachment.filename} (I can only read text files)")
                continue
            if attachment.size > cap:
                skipped.append(f"{attachment.filename} (over {cap // 1000} kB)")
                continue
            body = await self._download(attachment.url, cap)
            if body is None:
                skipped.append(f"{attachment.filename} (could not be downloaded)")
                continue
            content = body.decode("utf-8", errors="replace")
            text += f"\n\n[Attached file: {attachment.filename}]\n```\n{content}\n```"
        note = "Skipped: " + "; ".join(skipped) + "." if skipped else None
        return text.strip(), note

    async def _download(self, url: str, cap: int) -> bytes | None:
        """Read at most ``cap`` bytes, whatever size the server claims."""
        chunks: list[bytes] = []
        size = 0
        try:
            async with self._downloads.stream("GET", url) as response:
                if response.status_code != 200:
                    return None
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > cap:
                        return None
                    chunks.append(chunk)
        except httpx.HTTPError:
            return None
        return b"".join(chunks)
