"""Command line: ``python -m bot [run|console|export|sync-commands|backup]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from bot.app import AlreadyRunning
from bot.config import Config, ConfigError, load_config
from bot.db import SchemaError

EXIT_CONFIG = 78  # EX_CONFIG: a service manager should not restart into the same error


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bot", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="run the Discord bot (the default)")
    console = commands.add_parser("console", help="chat with the model in this terminal")
    console.add_argument("--session", default="default", help="conversation name to continue")
    return parser


def setup_logging(config: Config) -> None:
    logging.basicConfig(
        level=config.logging.level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request URL at INFO; keep that out unless debugging.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config)
    try:
        if args.command == "console":
            from bot.console import run_console

            return asyncio.run(run_console(config, args.session))
        print("the Discord bot is not available in this build", file=sys.stderr)
        return 2
    except (AlreadyRunning, SchemaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
