"""Interactions: INTERACTION_CREATE payloads for slash commands, autocomplete and buttons, and
the handle through which tests see how the bot answered."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import payloads
from .model import Attachment, Channel, Json, Message, Perm, Role, User

if TYPE_CHECKING:
    from .records import UploadedFile
    from .server import FakeDiscord

APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE = 2, 3, 4
# option types
(
    SUB_COMMAND,
    SUB_COMMAND_GROUP,
    STRING,
    INTEGER,
    BOOLEAN,
    USER,
    CHANNEL,
    ROLE,
    NUMBER,
    ATTACHMENT,
) = (1, 2, 3, 4, 5, 6, 7, 8, 10, 11)
TOKEN_LIFETIME = 15 * 60.0


@dataclass(eq=False)
class InteractionResponse:
    """One request the bot made for an interaction (successful or not)."""

    # callback | get_original | edit_original | delete_original
    # | followup | get_followup | edit_followup | delete_followup
    kind: str
    at: float  # time.monotonic()
    status: int
    type: int | None = (
        None  # callback type: 4 message, 5 defer, 6 deferred update, 7 update, 8 choices, 9 modal
    )
    data: Json = field(default_factory=dict)
    files: list[UploadedFile] = field(default_factory=list)
    message: Message | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def content(self) -> str | None:
        return self.data.get("content")

    @property
    def ephemeral(self) -> bool:
        return bool((self.data.get("flags") or 0) & 64) or bool(
            self.message and self.message.ephemeral
        )


class InteractionHandle:
    """What a test holds after ``invoke_slash``/``click``/``invoke_autocomplete``."""

    def __init__(
        self,
        fake: FakeDiscord,
        kind: int,
        user: User,
        channel: Channel,
        message: Message | None = None,
    ) -> None:
        self.fake = fake
        self.id = fake.world.ids.next()
        self.token = "itok_" + secrets.token_urlsafe(24)
        self.kind = kind
        self.user = user
        self.channel = channel
        self.payload: Json = {}
        self.created = fake.now()  # on the fake's clock, which advance_time() moves
        self.dispatched_at = time.monotonic()
        self.responses: list[InteractionResponse] = []
        self.original: Message | None = message  # for components: the message the button was on
        self.followups: list[Message] = []
        self.callback_type: int | None = None
        self.expired = False

    def expire(self) -> None:
        """Make the token invalid now, as if 15 minutes had passed."""
        self.expired = True

    @property
    def token_expired(self) -> bool:
        return self.expired or self.fake.now() - self.created > TOKEN_LIFETIME

    @property
    def callback(self) -> InteractionResponse | None:
        return next((r for r in self.responses if r.kind == "callback" and r.ok), None)

    @property
    def ack_latency(self) -> float | None:
        """Seconds from dispatch to the successful callback."""
        cb = self.callback
        return None if cb is None else cb.at - self.dispatched_at

    @property
    def ephemeral(self) -> bool:
        cb = self.callback
        return bool(cb and cb.ephemeral)

    def of_kind(self, kind: str) -> list[InteractionResponse]:
        return [r for r in self.responses if r.kind == kind]

    def texts(self) -> list[str]:
        """Content of every successful message-bearing response, in order."""
        return [r.content for r in self.responses if r.ok and r.content]

    async def wait_for(
        self,
        kind: str,
        *,
        index: int = 0,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> InteractionResponse:
        """The ``index``-th response of ``kind`` (e.g. ``"followup"``), waiting for it."""

        def found() -> InteractionResponse | None:
            matches = self.of_kind(kind)
            return matches[index] if len(matches) > index else None

        return await self.fake.wait_until(
            found, timeout, f"{kind}[{index}] of interaction {self.id}"
        )

    async def wait_for_callback(self, timeout: float = 3.0) -> InteractionResponse:  # noqa: ASYNC109
        return await self.wait_for("callback", timeout=timeout)

    async def wait_for_followup(self, index: int = 0, timeout: float = 5.0) -> InteractionResponse:  # noqa: ASYNC109
        return await self.wait_for("followup", index=index, timeout=timeout)

    async def wait_for_edit(self, index: int = 0, timeout: float = 5.0) -> InteractionResponse:  # noqa: ASYNC109
        return await self.wait_for("edit_original", index=index, timeout=timeout)


def base_payload(
    fake: FakeDiscord,
    h: InteractionHandle,
    *,
    permissions: int | None,
    app_permissions: int | None,
    locale: str,
) -> Json:
    world, ch = fake.world, h.channel
    p: Json = {
        "id": str(h.id),
        "application_id": str(world.application_id),
        "type": h.kind,
        "token": h.token,
        "version": 1,
        "locale": locale,
        "entitlements": [],
        "entitlement_sku_ids": [],
        "attachment_size_limit": fake.upload_limit,  # required by discord.py (facts item 5)
        "channel_id": str(ch.id),
    }
    if ch.guild_id is None:
        p["user"] = payloads.user(h.user)
        p["context"] = 1
        p["authorizing_integration_owners"] = {"0": str(h.user.id)}
        p["app_permissions"] = str(app_permissions if app_permissions is not None else Perm.DEFAULT)
        p["channel"] = payloads.channel(ch, world)
        return p
    guild = world.guilds[ch.guild_id]
    member = guild.members.get(h.user.id)
    if member is None:
        raise ValueError(f"{h.user.name} is not a member of guild {guild.name}")
    perms = guild.permissions_of(h.user.id) if permissions is None else permissions
    app_perms = guild.permissions_of(world.bot.id) if app_permissions is None else app_permissions
    p.update(
        {
            "guild_id": str(guild.id),
            "guild": {"id": str(guild.id), "locale": guild.locale, "features": []},
            "guild_locale": guild.locale,
            "member": payloads.member(
                member, permissions=perms
            ),  # resolved permissions (facts item 5)
            "app_permissions": str(app_perms),
            "context": 0,
            "authorizing_integration_owners": {"0": str(guild.id)},
            "channel": {**payloads.channel(ch, world), "permissions": str(perms)},
        }
    )
    return p


def command_options(
    fake: FakeDiscord,
    path: list[str],
    values: dict[str, Any],
    schema: list[Json] | None,
    channel: Channel,
    focused: str | None,
) -> tuple[list[Json], Json]:
    """Nest ``values`` under the subcommands of ``path``; returns (options, resolved)."""
    resolved: Json = {}
    missing = [o["name"] for o in schema or [] if o.get("required") and o["name"] not in values]
    if missing and focused is None:
        raise ValueError(f"/{' '.join(path)}: required options missing: {missing}")
    leaf = [
        _option(fake, name, value, _find(schema, name, path), resolved, channel, name == focused)
        for name, value in values.items()
    ]
    options = leaf
    for depth in range(len(path) - 1, 0, -1):  # innermost subcommand first
        options = [
            {
                "type": SUB_COMMAND if depth == len(path) - 1 else SUB_COMMAND_GROUP,
                "name": path[depth],
                "options": options,
            }
        ]
    return options, resolved


def schema_for(command: Json | None, path: list[str]) -> list[Json] | None:
    """The synced options of the subcommand at ``path`` (None if the command was never synced)."""
    if command is None:
        return None
    options: list[Json] = command.get("options") or []
    for name in path[1:]:
        sub = next((o for o in options if o["name"] == name and o.get("type") in (1, 2)), None)
        if sub is None:
            raise ValueError(f"synced command {path[0]!r} has no subcommand {name!r}")
        options = sub.get("options") or []
    return options


def _find(schema: list[Json] | None, name: str, path: list[str]) -> Json | None:
    if schema is None:
        return None
    found = next((o for o in schema if o["name"] == name), None)
    if found is None:
        raise ValueError(f"/{' '.join(path)} has no option {name!r} in the synced schema")
    return found


def _option(
    fake: FakeDiscord,
    name: str,
    value: Any,
    schema: Json | None,
    resolved: Json,
    channel: Channel,
    focused: bool,
) -> Json:
    world = fake.world
    otype = schema["type"] if schema else _infer_type(value)
    opt: Json = {"name": name, "type": otype}
    if isinstance(value, User):
        opt["value"] = str(value.id)
        resolved.setdefault("users", {})[str(value.id)] = payloads.user(value)
        member = world.member(channel.guild_id, value.id)
        if member is not None:
            guild = world.guilds[member.guild_id]
            resolved.setdefault("members", {})[str(value.id)] = payloads.member(
                member, with_user=False, permissions=guild.permissions_of(value.id)
            )
    elif isinstance(value, Channel):
        opt["value"] = str(value.id)
        perms = (
            world.guilds[value.guild_id].permissions_of(world.bot.id)
            if value.guild_id
            else Perm.DEFAULT
        )
        resolved.setdefault("channels", {})[str(value.id)] = {
            **payloads.channel(value, world),
            "permissions": str(perms),
        }
    elif isinstance(value, Role):
        opt["value"] = str(value.id)
        resolved.setdefault("roles", {})[str(value.id)] = payloads.role(value)
    elif isinstance(value, Attachment):
        opt["value"] = str(value.id)
        resolved.setdefault("attachments", {})[str(value.id)] = payloads.attachment(value)
    else:
        opt["value"] = value
    if focused:
        opt["focused"] = True
    return opt


def _infer_type(value: Any) -> int:
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return INTEGER
    if isinstance(value, float):
        return NUMBER
    if isinstance(value, User):
        return USER
    if isinstance(value, Channel):
        return CHANNEL
    if isinstance(value, Role):
        return ROLE
    if isinstance(value, Attachment):
        return ATTACHMENT
    return STRING


def find_component(components: list[Json], custom_id: str) -> Json | None:
    for comp in components:
        if comp.get("custom_id") == custom_id:
            return comp
        for key in ("components", "accessory", "component"):
            inner = comp.get(key)
            inner_list = (
                inner if isinstance(inner, list) else [inner] if isinstance(inner, dict) else []
            )
            found = find_component(inner_list, custom_id)
            if found is not None:
                return found
    return None
