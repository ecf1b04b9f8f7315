"""Feedback: 👍/👎 on any message of a bot reply record that user's score for the reply.

Raw reaction events fire for uncached messages too, so this works on replies sent before a
restart. A user has one score per reply: the thumb they added last among those still showing
on any of its messages. A new reaction replaces the score; removing it brings back the one
still showing, or clears the score when none is left. The bot's own and other bots'
reactions are ignored.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

if TYPE_CHECKING:
    from bot.client import ChatBot

log = logging.getLogger(__name__)

_SKIN_TONES = "".join(chr(c) for c in range(0x1F3FB, 0x1F400))


def emoji_scores(up: tuple[str, ...], down: tuple[str, ...]) -> dict[str, int]:
    scores = {_base(e): 1 for e in up}
    scores.update({_base(e): -1 for e in down})
    return scores


def _base(emoji: str) -> str:
    """👍🏽 counts as 👍: drop skin tones and presentation selectors."""
    return emoji.translate({ord(c): None for c in _SKIN_TONES + "\ufe0f\ufe0e"})


class Feedback(commands.Cog):
    def __init__(self, bot: ChatBot) -> None:
        self.bot = bot
        config = bot.app.config.discord
        self.scores = emoji_scores(config.reactions_up, config.reactions_down)

    def _score(self, payload: discord.RawReactionActionEvent) -> int | None:
        me = self.bot.user
        if me is None or payload.user_id == me.id:
            return None
        if payload.member is not None and payload.member.bot:
            return None
        name = payload.emoji.name
        return self.scores.get(_base(name)) if name else None

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        score = self._score(payload)
        if score is None:
            return
        if payload.member is None and payload.guild_id is None:
            user = self.bot.get_user(payload.user_id)
            if user is not None and user.bot:
                return
        store = self.bot.app.store
        if await store.add_reaction(payload.message_id, payload.user_id, str(payload.emoji), score):
            self.bot.app.engine.metrics.feedback.labels(str(score)).inc()

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        if self._score(payload) is not None:
            store = self.bot.app.store
            await store.remove_reaction(payload.message_id, payload.user_id, str(payload.emoji))
