"""Opening the SQLite database and migrating its schema.

Migrations are the numbered ``bot/migrations/NNNN_*.sql`` files. ``PRAGMA user_version`` holds
the number of the last one applied; it is transactional, so each migration and its version bump
commit together or not at all (a migration killed half-way leaves the old version intact).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import aiosqlite

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class SchemaError(Exception):
    """The database cannot be used by this version of the bot."""


def migrations() -> list[str]:
    """The migration scripts, in order; script i (0-based) brings the schema to version i + 1."""
    folder = resources.files("bot").joinpath("migrations")
    found = sorted(
        (int(m.group(1)), entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if (m := _MIGRATION_NAME.match(entry.name))
    )
    numbers = [number for number, _ in found]
    if numbers != list(range(1, len(found) + 1)):
        raise SchemaError(f"migrations must be numbered 1..n without gaps, found {numbers}")
    return [script for _, script in found]


LATEST_VERSION = len(migrations())


async def connect(path: Path | str, *, busy_timeout_ms: int = 5000) -> aiosqlite.Connection:
    """Open the database in autocommit mode with the durability settings the bot relies on."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: every statement commits on its own unless we BEGIN explicitly,
    # which saves a round trip to aiosqlite's thread per write.
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        await db.execute("PRAGMA journal_mode = WAL")
        # FULL: a committed turn also survives power loss, not only a crash of the process.
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute("PRAGMA foreign_keys = ON")
        await db.execute("PRAGMA journal_size_limit = 67108864")
        # /forget must really erase: deleted content is overwritten, not left in free pages.
        await db.execute("PRAGMA secure_delete = ON")
    except BaseException:
        await db.close()
        raise
    return db


async def schema_version(db: aiosqlite.Connection) -> int:
    rows = list(await db.execute_fetchall("PRAGMA user_version"))
    return int(rows[0][0])


async def migrate(db: aiosqlite.Connection) -> int:
    """Bring the schema to the latest version; refuse a database written by a newer bot."""
    scripts = migrations()
    current = await schema_version(db)
    if current > len(scripts):
        raise SchemaError(
            f"the database is at schema version {current}, but this bot only knows up to "
            f"{len(scripts)}: it was written by a newer version. Upgrade the bot, or restore a "
            "backup taken before the upgrade."
        )
    for version in range(current + 1, len(scripts) + 1):
        script = scripts[version - 1]
        try:
            await db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;"
            )
        except BaseException:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            raise
    return len(scripts)
