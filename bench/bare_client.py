"""``python -m bench.bare_client``: a bare discord.py client, the floor under figure 6.

It logs in to the Discord-compatible server named by ``DISCORD_API_BASE`` and
``DISCORD_GATEWAY_URL`` with the bot's intents and prints the same ready line as the bot;
nothing else (no database, tokenizer, model server or cogs).
"""

from __future__ import annotations

import asyncio
import os

import discord
import yarl


async def main() -> None:
    discord.http.Route.BASE = os.environ["DISCORD_API_BASE"]
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["DISCORD_GATEWAY_URL"])
    intents = discord.Intents.none()
    intents.guilds = intents.guild_messages = intents.dm_messages = True
    intents.message_content = True
    client = discord.Client(intents=intents, guild_ready_timeout=0.05)

    @client.event
    async def on_ready() -> None:
        print(f"ready: connected as {client.user}", flush=True)

    await client.start(os.environ["DISCORD_TOKEN"])


if __name__ == "__main__":
    asyncio.run(main())
