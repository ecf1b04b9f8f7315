"""Command line: ``python -m bot [run|console|export|sync-commands|backup]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from bot.config import Config, ConfigError, load_config

EXIT_CONFIG = 78  # EX_CONFIG: bad config, a locked or too-new database; restarting won't help
EXIT_AUTH = 77  # EX_NOPERM: Discord refused the token or intents; restarting would loop


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bot", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="run the Discord bot (the default)")
    console = commands.add_parser("console", help="chat with the model in this terminal")
    console.add_argument("--session", default="default", help="conversation name to continue")
    export = commands.add_parser("export", help="write the feedback log as JSONL or CSV")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--out", type=Path, help="file to write (default: standard output)")
    export.add_argument("--guild", type=int, help="only this server")
    export.add_argument("--since", help="from this date (2026-11-01) or span (7d)")
    export.add_argument("--until", help="before this date or span")
    export.add_argument("--channel", type=int, help="only this channel")
    export.add_argument("--model", help="only replies of this model")
    export.add_argument("--score", choices=("positive", "negative", "rated", "unrated"))
    sync = commands.add_parser("sync-commands", help="register the slash commands with Discord")
    sync.add_argument("--guild", type=int, help="only this server (instant; global takes ~1 h)")
    backup = commands.add_parser("backup", help="consistent copy of the database, bot running")
    backup.add_argument("path", type=Path)
    commands.add_parser("healthcheck", help="exit 0 if the bot on this database is alive, else 1")
    return parser


# At DEBUG these libraries log what passes through them: message content (aiosqlite's SQL
# parameters, discord.py's gateway payloads) and interaction tokens (discord.py's request URLs).
# Content reaches the logs only through LOGGING_LOG_CONTENT, never through the log level.
_CHATTY = {
    "aiosqlite": logging.INFO,
    "discord": logging.INFO,
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
}


class _Redact(logging.Filter):
    """Last line of defence: secrets never leave in a log line, whoever logged them."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if len(s) >= 8]

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            message = record.getMessage()
            if any(s in message for s in self._secrets):
                for s in self._secrets:
                    message = message.replace(s, "[redacted]")
                record.msg, record.args = message, None
        return True


def setup_logging(config: Config) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    secrets = [s.get_secret_value() for s in (config.discord.token, config.llm.api_key) if s]
    handler.addFilter(_Redact(secrets))
    logging.basicConfig(level=config.logging.level, handlers=[handler])
    for name, floor in _CHATTY.items():
        logging.getLogger(name).setLevel(max(floor, logging.getLogger().level))


async def _export(config: Config, args: argparse.Namespace) -> int:
    from bot import export
    from bot.cogs.admin import build_export, export_key, parse_when
    from bot.models import ExportFilter
    from bot.store import Store

    where = ExportFilter(
        guild_id=args.guild,
        since=parse_when(args.since),
        until=parse_when(args.until),
        channel_id=args.channel,
        model=args.model,
        score=args.score,
    )
    store = await Store.open(config.database.path, migrate=False)
    try:
        key = await export_key(store, config)
    finally:
        await store.close()
    body, count = await build_export(config.database.path, where, args.format, key)
    if args.out:
        args.out.write_bytes(body)
    else:
        sys.stdout.buffer.write(body)
    print(export.describe(where, count, args.format), file=sys.stderr)
    return 0


async def _backup(config: Config, target: Path) -> int:
    from bot.store import Store

    store = await Store.open(config.database.path, migrate=False)
    try:
        await store.backup(target)
    finally:
        await store.close()
    print(f"backed up {config.database.path} to {target}", file=sys.stderr)
    return 0


async def _sync(config: Config, guild: int | None) -> int:
    import discord

    from bot.app import open_app
    from bot.client import ChatBot, FatalLogin, point_at

    if config.discord.token is None:
        raise FatalLogin("DISCORD_TOKEN is not set")
    point_at(config.discord)
    # The command tree does not need the real database: sync while the bot runs.
    memory = config.model_copy(
        update={"database": config.database.model_copy(update={"path": Path(":memory:")})}
    )
    async with open_app(memory) as app:
        bot = ChatBot(app)
        try:
            await bot.login(config.discord.token.get_secret_value())
            target = discord.Object(guild) if guild else None
            if target is not None:
                bot.tree.copy_global_to(guild=target)
            synced = await bot.tree.sync(guild=target)
        except discord.LoginFailure as exc:
            raise FatalLogin("Discord rejected the token (check DISCORD_TOKEN)") from exc
        finally:
            await bot.close()
    where = f"server {guild}" if guild else "all servers (may take up to an hour to appear)"
    print(f"synced {len(synced)} command(s) to {where}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1 if args.command == "healthcheck" else EXIT_CONFIG
    if args.command == "healthcheck":  # before the heavy imports: Docker runs it every 30 s
        from bot.health import check

        healthy, why = check(config)
        print(why if healthy else f"unhealthy: {why}")
        return 0 if healthy else 1
    setup_logging(config)
    from bot.app import AlreadyRunning
    from bot.client import FatalLogin
    from bot.db import SchemaError

    try:
        if args.command == "console":
            from bot.console import run_console

            return asyncio.run(run_console(config, args.session))
        if args.command == "export":
            return asyncio.run(_export(config, args))
        if args.command == "backup":
            if args.path.exists():
                print(f"error: {args.path} exists; choose a new file", file=sys.stderr)
                return 1
            return asyncio.run(_backup(config, args.path))
        if args.command == "sync-commands":
            return asyncio.run(_sync(config, args.guild))
        from bot.client import run

        return asyncio.run(run(config))
    except FatalLogin as exc:
        logging.getLogger("bot").critical("%s; not retrying", exc)
        return EXIT_AUTH
    except (AlreadyRunning, SchemaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
