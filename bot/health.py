"""``python -m bot healthcheck``: is the bot on this database alive? (Docker's HEALTHCHECK.)

It must not disturb the bot: no lock taken, the database opened read-only, nothing created,
no token needed, neither Discord nor vLLM contacted. The running bot touches its lock file
every HEARTBEAT_SECONDS from the event loop, so a hung loop shows as a stale heartbeat.
"""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.request
from pathlib import Path

from bot.config import Config

HEARTBEAT_SECONDS = 15.0
STALE_AFTER = 90.0


def lock_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".lock")


def check(config: Config) -> tuple[bool, str]:
    db_path = Path(config.database.path)
    lock = lock_path(db_path)
    try:
        holder = lock.read_text().strip()
        age = time.time() - lock.stat().st_mtime
    except OSError:
        return False, "no bot has started on this database"
    if not holder.startswith("pid "):
        return False, "no bot is running on this database"
    pid = int(holder.removeprefix("pid "))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, f"the bot (pid {pid}) is not running"
    except PermissionError:
        pass  # alive, owned by another user
    if age > STALE_AFTER:
        return False, f"the bot's event loop has not run for {age:.0f} s"
    try:
        con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=2.0)
        try:
            version = con.execute("PRAGMA user_version").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error as exc:
        return False, f"the database cannot be read ({exc})"
    if not version:
        return False, "the database has no schema"
    if config.metrics.port:
        wildcard = config.metrics.host in ("0.0.0.0", "")  # noqa: S104 (a comparison, not a bind)
        host = "127.0.0.1" if wildcard else config.metrics.host
        try:
            with urllib.request.urlopen(
                f"http://{host}:{config.metrics.port}/metrics", timeout=3
            ) as response:
                if response.status != 200:
                    return False, f"metrics answered {response.status}"
        except OSError as exc:
            return False, f"metrics unreachable ({exc})"
    return True, f"healthy: pid {pid}, schema v{version}"
