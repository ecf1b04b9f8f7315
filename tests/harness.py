"""Running the real bot in the test's event loop against the fake Discord and scripted vLLM."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.app import App, open_app
from bot.client import ChatBot, point_at
from bot.config import Config, load_config
from tests.discord_server import BasicWorld, ClientRunner, FakeDiscord, RequestRecord
from tests.fake_vllm import FakeVLLM

MESSAGE_WRITES = (
    "POST /channels/{channel_id}/messages",
    "PATCH /channels/{channel_id}/messages/{message_id}",
)


def bot_config(fake: FakeDiscord, vllm: FakeVLLM, db: Path, **sections: dict[str, Any]) -> Config:
    values: dict[str, dict[str, Any]] = {
        "discord": {
            "token": fake.token,
            "api_base": fake.api_url,
            "gateway_url": fake.gateway_url,
            "edit_interval": 0.2,
            "guild_ready_timeout": 0.05,
        },
        "llm": {"base_url": vllm.base_url, "retry_backoff": 0.01, "read_timeout": 5.0},
        "database": {"path": db},
        "limits": {"user_turns_per_minute": 600, "user_burst": 100},
        "chat": {"max_tokens": 2048},
    }
    for name, overrides in sections.items():
        values[name] = {**values.get(name, {}), **overrides}
    return load_config(**values)


@dataclass
class Env:
    fake: FakeDiscord
    vllm: FakeVLLM
    world: BasicWorld
    config: Config
    app: App
    bot: ChatBot

    @property
    def db_path(self) -> Path:
        return Path(self.config.database.path)

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(self.db_path)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def writes(self, channel_id: int | None = None) -> list[RequestRecord]:
        """Every message create/edit the bot sent (optionally in one channel)."""
        return [
            r
            for r in self.fake.requests
            if r.route in MESSAGE_WRITES
            and (channel_id is None or r.params.get("channel_id") == str(channel_id))
        ]

    async def reply_to(
        self,
        message: Any,
        timeout: float = 10.0,  # noqa: ASYNC109 (passed on to the fake's wait)
    ) -> Any:
        """The bot's (final) reply to a user message."""
        await self.fake.wait_until(lambda: self.finished(message), timeout, "the turn to finish")
        return self.parts(message)

    def finished(self, message: Any) -> bool:
        """The bot stored the turn's outcome and delivered its final text."""
        status = self.rows(
            "SELECT status FROM messages WHERE discord_message_id = ?", (message.id,)
        )
        chat = self.bot.get_cog("Chat")
        running = chat is not None and message.id in chat.tasks  # type: ignore[attr-defined]
        return bool(status) and status[0][0] != "pending" and not running

    def parts(self, message: Any) -> list[Any]:
        """The bot's reply messages (as the fake stores them) for a user message."""
        ids = self.rows(
            "SELECT p.discord_message_id FROM reply_parts p JOIN messages a ON a.id = p.message_id"
            " JOIN messages u ON u.id = a.reply_to WHERE u.discord_message_id = ? ORDER BY p.part",
            (message.id,),
        )
        return [self.fake.world.messages[i] for (i,) in ids if i in self.fake.world.messages]


@contextlib.asynccontextmanager
async def running_bot(
    fake: FakeDiscord, vllm: FakeVLLM, world: BasicWorld, db: Path, **sections: dict[str, Any]
) -> AsyncIterator[Env]:
    config = bot_config(fake, vllm, db, **sections)
    point_at(config.discord)
    async with open_app(config) as app:
        bot = ChatBot(app)
        async with ClientRunner(bot, fake):
            yield Env(fake, vllm, world, config, app, bot)
            await bot.drain(1.0)
