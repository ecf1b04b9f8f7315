"""Programmable REST faults: rate limits, server errors, Discord error codes, slow answers."""

from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass, field
from typing import Literal

from .model import Json

Scope = Literal["user", "shared", "global"]


def path_pattern(glob: str) -> re.Pattern[str]:
    """``*`` matches one path segment, ``**`` anything: ``"/channels/*/messages/**"``."""
    parts = [
        ".*" if p == "**" else "[^/]+" if p == "*" else re.escape(p)
        for p in re.split(r"(\*\*|\*)", glob)
    ]
    return re.compile("".join(parts))


@dataclass(eq=False)
class Fault:
    """One programmable fault. ``times=None`` fires forever; ``probability`` draws from the
    fake's seeded RNG.

    ``status`` 0 means "no error": only ``delay`` applies (a slow but successful answer).
    """

    method: str  # "POST", ..., or "*"
    path: str  # glob on the path after /api/v10, e.g. "/channels/*/messages"
    status: int = 500
    code: int = 0
    message: str = "Fault injected by the fake Discord"
    times: int | None = 1
    delay: float = 0.0
    probability: float = 1.0
    retry_after: float = 0.0  # 429 only
    scope: Scope = "user"
    via: bool = True  # 429 only: without Via discord.py takes it for a Cloudflare ban and raises
    disconnect: bool = False  # close the connection without an answer
    hits: int = 0
    _regex: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._regex = path_pattern(self.path)

    def matches(self, method: str, path: str, rng: random.Random) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method not in ("*", method) or not self._regex.fullmatch(path):
            return False
        return self.probability >= 1.0 or rng.random() < self.probability

    def body(self) -> Json:
        if self.status == 429:
            return {
                "message": "You are being rate limited.",
                "retry_after": self.retry_after,
                "global": self.scope == "global",
                "code": 0,
            }
        return {"message": self.message, "code": self.code}

    def headers(self) -> dict[str, str]:
        if self.status != 429:
            return {}
        h = {
            "Retry-After": str(math.ceil(self.retry_after)),
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset-After": f"{self.retry_after:.3f}",
            "X-RateLimit-Reset": f"{time.time() + self.retry_after:.3f}",
            "X-RateLimit-Bucket": "fakebucket",
            "X-RateLimit-Scope": self.scope,
        }
        if self.scope == "global":
            h["X-RateLimit-Global"] = "true"
        if self.via:
            h["Via"] = "1.1 google"
        return h


@dataclass
class RetryWindow:
    """A 429 told the client to wait until ``until`` (monotonic) on ``method path`` or anywhere."""

    method: str
    path: str
    until: float
    is_global: bool
