"""Showing a streamed reply in Discord: typing, then one message that grows by edits.

The policy follows facts.md: at most one write in flight per reply, writes of one reply at
least ``edit_interval`` apart, at most ``CHANNEL_WRITES`` per ``CHANNEL_WINDOW`` seconds per
channel, only the newest text is ever sent, and the final text is always delivered. Every send
and edit carries an explicit ``allowed_mentions`` (an edit without one is re-parsed by Discord
with the defaults), and link previews are suppressed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

import discord

from bot.engine import Outcome
from bot.models import Status
from bot.splitting import split_reply

log = logging.getLogger(__name__)

CHANNEL_WRITES = 4
CHANNEL_WINDOW = 5.0
TYPING_REFRESH = 8.0  # Discord shows typing for ~10 s per request
WARNING = "\N{WARNING SIGN}\N{VARIATION SELECTOR-16}"

NO_PINGS = discord.AllowedMentions.none()
AUTHOR_ONLY = discord.AllowedMentions(everyone=False, users=False, roles=False, replied_user=True)


class ChannelPacer:
    """A sliding-window limit on writes per channel, shared by every reply in it."""

    def __init__(self, writes: int = CHANNEL_WRITES, window: float = CHANNEL_WINDOW) -> None:
        self._writes = writes
        self._window = window
        self._recent: dict[int, collections.deque[float]] = {}
        # While the bot shuts down, final edits go out at once (discord.py still handles 429s).
        self._closing = asyncio.Event()

    def close(self) -> None:
        self._closing.set()

    async def wait(self, channel_id: int) -> None:
        recent = self._recent.setdefault(channel_id, collections.deque())
        while not self._closing.is_set():
            now = time.monotonic()
            while recent and now - recent[0] >= self._window:
                recent.popleft()
            if len(recent) < self._writes:
                recent.append(now)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self._window - (now - recent[0]))

    def forget_idle(self) -> None:
        now = time.monotonic()
        for channel_id, recent in list(self._recent.items()):
            if not recent or now - recent[-1] >= self._window:
                del self._recent[channel_id]


def render_final(outcome: Outcome) -> str:
    """The text a reply ends with, including a visible mark when it is not a clean reply."""
    text = outcome.text.rstrip()
    if outcome.status is Status.DONE:
        if outcome.notice:
            return f"{text}\n-# {outcome.notice}" if text else f"{WARNING} {outcome.notice}"
        return text
    mark = {
        Status.INTERRUPTED: "interrupted",
        Status.CANCELLED: "cancelled",
        Status.FAILED: "failed",
    }.get(outcome.status, str(outcome.status))
    notice = outcome.notice or "The reply could not be completed."
    if text:
        return f"{text}\n\n{WARNING} *{mark}: {notice}*"
    return f"{WARNING} {notice}"


PartRecorder = Callable[[int, discord.Message, int], Awaitable[None]]


class DiscordReply:
    """A :class:`bot.engine.ReplySink` that streams into Discord messages."""

    def __init__(
        self,
        channel: discord.abc.Messageable,
        *,
        reply_to: discord.Message | None,
        pacer: ChannelPacer,
        edit_interval: float,
        ping_author: bool,
        record_part: PartRecorder,
        show_typing: bool = True,
    ) -> None:
        self._channel = channel
        self._reply_to = reply_to
        self._pacer = pacer
        self._interval = edit_interval
        self._ping_author = ping_author
        self._record_part = record_part
        self._pieces: list[str] = []
        self._parts: list[discord.Message] = []
        self._sent: list[str] = []
        self._dirty = asyncio.Event()
        self._final: str | None = None
        self._pump: asyncio.Task[None] | None = None
        self._typing: asyncio.Task[None] | None = None
        self._reply_id: int | None = None
        self.footer: str | None = None  # a small note under the final reply
        self.first_text_at: float | None = None  # monotonic: first model text received
        self.first_visible_at: float | None = None  # monotonic: first text sent to Discord
        if show_typing:
            self._typing = asyncio.create_task(self._keep_typing())

    @property
    def channel_id(self) -> int:
        return int(getattr(self._channel, "id", 0))

    @property
    def message_ids(self) -> list[int]:
        return [m.id for m in self._parts]

    # -- ReplySink --------------------------------------------------------------------------

    async def started(self, reply_id: int) -> None:
        self._reply_id = reply_id

    def on_text(self, delta: str) -> None:
        self._pieces.append(delta)
        if self.first_text_at is None:
            self.first_text_at = time.monotonic()
            self._pump = asyncio.create_task(self._run())
        self._dirty.set()

    async def finish(self, outcome: Outcome) -> None:
        final = render_final(outcome) or f"{WARNING} The model returned an empty reply."
        self._final = f"{final}\n-# {self.footer}" if self.footer else final
        self._dirty.set()
        if self._pump is None:
            self._pump = asyncio.create_task(self._run())
        try:
            await asyncio.shield(self._pump)
        finally:
            self.stop_typing()

    async def notice(self, text: str) -> None:
        """Answer with a short notice instead of a reply (busy, rate limited, ...)."""
        await self.finish(Outcome(Status.FAILED, "", text))

    def stop_typing(self) -> None:
        if self._typing is not None:
            self._typing.cancel()
            self._typing = None

    # -- delivery ---------------------------------------------------------------------------

    async def _keep_typing(self) -> None:
        with contextlib.suppress(discord.HTTPException):
            while True:
                await self._channel.typing()
                await asyncio.sleep(TYPING_REFRESH)

    async def _run(self) -> None:
        last_write = float("-inf")
        while True:
            await self._dirty.wait()
            wait = last_write + self._interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._dirty.clear()
            final = self._final
            text = final if final is not None else "".join(self._pieces)
            last_write = time.monotonic()
            try:
                await self._deliver(text)
            except discord.HTTPException as exc:
                # discord.py already retried 429s and 5xx; a final that cannot land is logged.
                log.warning("could not update a reply (HTTP %s, code %s)", exc.status, exc.code)
                if final is not None:
                    return
            if final is not None:
                return

    async def _deliver(self, text: str) -> None:
        for index, content in enumerate(split_reply(text)):
            if index < len(self._parts):
                if self._sent[index] != content:
                    await self._pacer.wait(self.channel_id)
                    await self._parts[index].edit(
                        content=content, allowed_mentions=NO_PINGS, suppress=True
                    )
                    self._sent[index] = content
                continue
            await self._pacer.wait(self.channel_id)
            message = await self._send(content, index)
            if self.first_visible_at is None:
                self.first_visible_at = time.monotonic()
                self.stop_typing()
            self._parts.append(message)
            self._sent.append(content)
            if self._reply_id is not None:
                await self._record_part(self._reply_id, message, index)

    async def _send(self, content: str, index: int) -> discord.Message:
        # A nonce makes Discord drop a duplicate if discord.py retries a send that did land.
        reply = self._reply_id
        nonce = f"r{reply}p{index}" if reply is not None else f"n{secrets.token_hex(8)}"
        if index == 0 and self._reply_to is not None:
            try:
                return await self._channel.send(
                    content,
                    reference=self._reply_to.to_reference(fail_if_not_exists=False),
                    mention_author=self._ping_author,
                    allowed_mentions=AUTHOR_ONLY if self._ping_author else NO_PINGS,
                    suppress_embeds=True,
                    nonce=nonce,
                )
            except discord.HTTPException as exc:
                if exc.status != 400:
                    raise
                # The message we answer was deleted meanwhile: answer without the reference.
        return await self._channel.send(
            content, allowed_mentions=NO_PINGS, suppress_embeds=True, nonce=nonce
        )
