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
IDLE_CHANNELS_KEPT = 256  # past this many channels, idle ones are forgotten
TYPING_REFRESH = 8.0  # Discord shows typing for ~10 s per request
# Typing starts this long after a message is accepted: a reply whose first text is visible by
# then needs no typing indicator (one Discord request fewer per turn), a slower one gets it
# well within a second.
TYPING_DELAY = 0.3
FINAL_RETRIES = 3  # deliveries of a final text after discord.py gave up on a 429 or 5xx
FINAL_BACKOFF = 1.0  # seconds, times the attempt number
WARNING = "\N{WARNING SIGN}\N{VARIATION SELECTOR-16}"

NO_PINGS = discord.AllowedMentions.none()
AUTHOR_ONLY = discord.AllowedMentions(everyone=False, users=False, roles=False, replied_user=True)


class ChannelPacer:
    """A sliding-window limit on writes per channel, shared by every reply in it.

    Final texts go first: while one waits, no intermediate edit in that channel takes a slot,
    so a finished reply is not left showing partial text behind other replies' progress.
    """

    def __init__(self, writes: int = CHANNEL_WRITES, window: float = CHANNEL_WINDOW) -> None:
        self._writes = writes
        self._window = window
        self._recent: dict[int, collections.deque[float]] = {}
        self._finals: collections.Counter[int] = collections.Counter()  # waiting, per channel
        self._changed: dict[int, asyncio.Event] = {}
        # While the bot shuts down, final edits go out at once (discord.py still handles 429s).
        self._closing = asyncio.Event()

    def close(self) -> None:
        self._closing.set()
        for event in self._changed.values():
            event.set()

    def wake(self, channel_id: int) -> None:
        """Make the channel's waiters look again (a reply's text just became final)."""
        changed = self._changed.pop(channel_id, None)
        if changed is not None:
            changed.set()

    async def wait(self, channel_id: int, final: Callable[[], bool] = lambda: False) -> None:
        """Take a write slot in the channel; ``final()`` says whether the write is a final
        text (asked again whenever the waiter wakes)."""
        if len(self._recent) > IDLE_CHANNELS_KEPT:
            self.forget_idle()
        recent = self._recent.setdefault(channel_id, collections.deque())
        counted = False
        try:
            while not self._closing.is_set():
                if not counted and final():
                    self._finals[channel_id] += 1
                    counted = True
                now = time.monotonic()
                while recent and now - recent[0] >= self._window:
                    recent.popleft()
                if len(recent) < self._writes and (counted or not self._finals[channel_id]):
                    recent.append(now)
                    return
                # Woken when a slot frees up, or when a final text took its slot.
                timeout = self._window - (now - recent[0]) if recent else self._window
                changed = self._changed.setdefault(channel_id, asyncio.Event())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout)
        finally:
            if counted:
                self._finals[channel_id] -= 1
                if not self._finals[channel_id]:
                    del self._finals[channel_id]
                self.wake(channel_id)

    def forget_idle(self) -> None:
        """Drop the history of channels with no write in the last window (nobody waits there:
        a waiter implies a full, recent window)."""
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
        self._last_write = float("-inf")  # monotonic: when the last write was sent
        self._writing_final = False
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
        self._pacer.wake(self.channel_id)  # a write already waiting now carries the final text
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
        await asyncio.sleep(TYPING_DELAY)
        with contextlib.suppress(discord.HTTPException):
            while True:
                await self._channel.typing()
                await asyncio.sleep(TYPING_REFRESH)

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._dirty.wait()
            wait = self._last_write + self._interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._dirty.clear()
            try:
                if await self._deliver():
                    return
            except discord.HTTPException as exc:
                # discord.py already retried 429s and 5xx five times. A final text is worth a
                # few more tries (a nonce keeps a resent message single); then it is logged.
                log.warning("could not update a reply (HTTP %s, code %s)", exc.status, exc.code)
                if self._writing_final:
                    if not (exc.status == 429 or exc.status >= 500) or failures >= FINAL_RETRIES:
                        return
                    failures += 1
                    self._dirty.set()
                    await asyncio.sleep(FINAL_BACKOFF * failures)

    def _newest(self) -> tuple[list[str], bool]:
        final = self._final
        return split_reply(final if final is not None else "".join(self._pieces)), final is not None

    def _first_change(self, parts: list[str], start: int = 0) -> int | None:
        """The first part from ``start`` not yet shown as it is now (parts go out in order)."""
        return next(
            (
                i
                for i in range(start, len(parts))
                if i >= len(self._sent) or self._sent[i] != parts[i]
            ),
            None,
        )

    async def _deliver(self) -> bool:
        """Bring the reply's messages up to its newest text; True once the final text is in.

        Each write first waits for the channel's pacer and then sends the text as it is at that
        moment: never stale text, and a final text that arrived meanwhile goes out at once.
        One delivery writes each changed part once, in order (an edit of the last part, then
        any new parts); the pump waits the edit interval before the next delivery.
        """
        start = 0
        while True:
            parts, final = self._newest()
            if self._first_change(parts, start) is None:
                return final and self._first_change(parts) is None
            await self._pacer.wait(self.channel_id, lambda: self._final is not None)
            parts, final = self._newest()
            index = self._first_change(parts, start)
            if index is None:
                return final and self._first_change(parts) is None
            start = index + 1
            content = parts[index]
            self._writing_final = final
            # The interval runs from the write itself, not from before the pacer's wait.
            self._last_write = time.monotonic()
            if index < len(self._parts):
                await self._parts[index].edit(
                    content=content, allowed_mentions=NO_PINGS, suppress=True
                )
                self._sent[index] = content
                continue
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
