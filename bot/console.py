"""``python -m bot console``: chat with the model in a terminal through the bot's own engine.

Interactive on a terminal; otherwise one reply per line of standard input, ending at the end
of input, so it can be scripted (``printf 'hi\\nand again\\n' | python -m bot console``).
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from typing import TextIO

from bot.app import open_app
from bot.config import Config
from bot.engine import Outcome
from bot.models import ChatSettings, Incoming, Kind, Scope

HELP = "Type a message and press Enter. /reset starts a new conversation, /quit leaves."


class ConsoleSink:
    """Streams reply text to a terminal as it arrives."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    async def started(self, reply_id: int) -> None:
        return None

    def on_text(self, delta: str) -> None:
        self._out.write(delta)
        self._out.flush()

    async def finish(self, outcome: Outcome) -> None:
        if outcome.notice:
            self._out.write(f"{' ' if outcome.text else ''}[{outcome.notice}]")
        self._out.write("\n")
        self._out.flush()


def settings_from(config: Config) -> ChatSettings:
    chat = config.chat
    return ChatSettings(
        system_prompt=chat.system_prompt,
        temperature=chat.temperature,
        top_p=chat.top_p,
        max_tokens=chat.max_tokens,
        time_awareness=chat.time_awareness,
    )


async def run_console(
    config: Config, session: str, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout
) -> int:
    interactive = stdin.isatty()
    scope = Scope(Kind.CONSOLE, session)
    settings = settings_from(config)
    author = getpass.getuser()
    loop = asyncio.get_running_loop()
    async with open_app(config) as app:
        if interactive:
            stdout.write(f"Session '{session}'. {HELP}\n")
        while True:
            if interactive:
                stdout.write("> ")
                stdout.flush()
            line = await loop.run_in_executor(None, stdin.readline)
            if not line:
                break
            text = line.strip()
            if not text:
                continue
            if text == "/quit":
                break
            if text == "/reset":
                await app.store.reset_session(scope)
                stdout.write("[New conversation started.]\n")
                continue
            incoming = Incoming(scope=scope, text=text, author_name=author)
            await app.engine.respond(incoming, ConsoleSink(stdout), settings)
    return 0
