"""Which mentions Discord would ping for a message body, given its ``allowed_mentions``.

Rules (Discord docs, "Allowed Mentions Object"): with ``allowed_mentions`` absent every mention
in the content is parsed and a reply pings the replied-to author; with it present only what
``parse``/``users``/``roles`` allow pings, and the replied-to author only with
``replied_user: true``. Edits that carry
``content`` are parsed again with the edit's own ``allowed_mentions``.

Deliberately an upper bound: it assumes the sender may mention @everyone and every role, and it does
not exempt mentions inside code blocks, so "0 pings" here means "0 pings whatever the permissions".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .model import Json

USER_RE = re.compile(r"<@!?(\d{1,20})>")
ROLE_RE = re.compile(r"<@&(\d{1,20})>")
EVERYONE_RE = re.compile(r"@(everyone|here)")


@dataclass(frozen=True)
class Pings:
    users: frozenset[int] = field(default_factory=frozenset)
    roles: frozenset[int] = field(default_factory=frozenset)
    everyone: bool = False  # @everyone or @here
    replied_user: int | None = None

    @property
    def count(self) -> int:
        replied = self.replied_user is not None and self.replied_user not in self.users
        return len(self.users) + len(self.roles) + int(self.everyone) + int(replied)

    def __bool__(self) -> bool:
        return self.count > 0

    @property
    def user_ids(self) -> frozenset[int]:
        """Users notified, the replied-to author included."""
        extra = {self.replied_user} if self.replied_user is not None else set()
        return self.users | extra


def allowed_mentions_errors(am: object) -> list[str]:
    """Discord's 50035 checks on an ``allowed_mentions`` object."""
    if not isinstance(am, dict):
        return ["allowed_mentions must be an object"]
    errors = [
        f"allowed_mentions: unknown field {k!r}"
        for k in am
        if k not in ("parse", "users", "roles", "replied_user")
    ]
    parse = am.get("parse", [])
    if not isinstance(parse, list) or any(p not in ("users", "roles", "everyone") for p in parse):
        errors.append(f"allowed_mentions.parse: invalid {parse!r}")
        parse = []
    for kind in ("users", "roles"):
        ids = am.get(kind, [])
        if not isinstance(ids, list) or len(ids) > 100:
            errors.append(f"allowed_mentions.{kind}: must be a list of at most 100 ids")
        elif ids and kind in parse:
            errors.append(
                f"allowed_mentions: parse contains {kind!r} and {kind} is set (mutually exclusive)"
            )
    return errors


def compute_pings(
    content: str | None,
    allowed_mentions: Json | None,
    *,
    in_guild: bool,
    replied_author: int | None = None,
) -> Pings:
    text = content or ""
    users = {int(x) for x in USER_RE.findall(text)}
    roles = {int(x) for x in ROLE_RE.findall(text)} if in_guild else set()
    everyone = in_guild and bool(EVERYONE_RE.search(text))
    if allowed_mentions is None:
        return Pings(frozenset(users), frozenset(roles), everyone, replied_author)
    parse = set(allowed_mentions.get("parse") or [])
    if "users" not in parse:
        users &= {int(x) for x in allowed_mentions.get("users") or []}
    if "roles" not in parse:
        roles &= {int(x) for x in allowed_mentions.get("roles") or []}
    everyone = everyone and "everyone" in parse
    replied = replied_author if allowed_mentions.get("replied_user") else None
    return Pings(frozenset(users), frozenset(roles), everyone, replied)
