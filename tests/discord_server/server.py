"""``FakeDiscord``: the server, its recorded traffic, and the driving API tests use."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from aiohttp import BodyPartReader, web

from . import payloads
from .faults import Fault, RetryWindow, Scope
from .gateway import MESSAGE_CONTENT, Gateway
from .interactions import (
    APPLICATION_COMMAND,
    AUTOCOMPLETE,
    MESSAGE_COMPONENT,
    InteractionHandle,
    base_payload,
    command_options,
    find_component,
    schema_for,
)
from .mentions import compute_pings
from .model import (
    Attachment,
    Channel,
    ChannelType,
    Guild,
    Json,
    Member,
    Message,
    Perm,
    Reaction,
    Role,
    User,
    World,
    emoji_key,
    iso_now,
    parse_emoji,
)
from .records import ApiError, RequestRecord, UploadedFile, Violation
from .rest import API, Rest, json_response

T = TypeVar("T")
RETRY_WINDOW_TOLERANCE = 0.02  # seconds of clock slack before an early retry counts as a violation


@dataclass
class BasicWorld:
    guild: Guild
    channel: Channel
    alice: User
    bob: User
    mod_role: Role


class FakeDiscord:
    """A Discord-compatible HTTP + WebSocket server on 127.0.0.1 (see the package docstring)."""

    def __init__(
        self,
        *,
        token: str = "fake-bot-token",
        bot_name: str = "TestBot",
        heartbeat_interval: float = 41.25,
        interaction_ack_deadline: float = 3.0,
        upload_limit: int = 10 * 1024 * 1024,
        message_content_enabled: bool = True,
        seed: int = 0,
    ) -> None:
        self.world = World(bot_name)
        self.token = token
        self.interaction_ack_deadline = interaction_ack_deadline
        self.upload_limit = upload_limit
        self.gateway = Gateway(self, heartbeat_interval)
        if not message_content_enabled:
            self.gateway.privileged_intents &= ~MESSAGE_CONTENT
        self.rng = random.Random(seed)
        self.requests: list[RequestRecord] = []
        self.violations: list[Violation] = []
        self.faults: list[Fault] = []
        self.retry_windows: list[RetryWindow] = []
        self.interactions: dict[str, InteractionHandle] = {}  # by token
        self.commands: dict[int | None, list[Json]] = {}  # synced commands; key None = global
        self.nonces: dict[tuple[int, str], Message] = {}
        self.attachments: dict[int, Attachment] = {}
        self.port = 0
        self._time_offset = 0.0
        self._change: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> Self:
        app = web.Application(client_max_size=1024**3)
        app.router.add_get("/", self.gateway.handle)
        Rest(self).install(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        await self.gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return self.base_url + API

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def bot(self) -> User:
        return self.world.bot

    @property
    def application_flags(self) -> int:
        flags = 1 << 12 | 1 << 14  # GATEWAY_PRESENCE, GATEWAY_GUILD_MEMBERS
        return flags | (1 << 18 if self.gateway.privileged_intents & MESSAGE_CONTENT else 0)

    # -- time -------------------------------------------------------------------------------------

    def now(self) -> float:
        """The fake's clock (monotonic seconds), which ``advance_time`` moves forward."""
        return time.monotonic() + self._time_offset

    def advance_time(self, seconds: float) -> None:
        """Jump the fake's clock: e.g. 15 * 60 expires every interaction token issued so far."""
        self._time_offset += seconds

    # -- violations and waiting -------------------------------------------------------------------

    def violation(self, text: str, rec: RequestRecord | None = None) -> None:
        self.violations.append(Violation(text, f"{rec.method} {rec.path}" if rec else None))
        self.changed()

    def pop_violations(self) -> list[Violation]:
        """Take the recorded violations (for tests that provoke them on purpose)."""
        out, self.violations = self.violations, []
        return out

    def violation_report(self) -> str:
        lines = [f"fake Discord recorded {len(self.violations)} violation(s):"]
        lines += [f"  - {v}" for v in self.violations]
        return "\n".join(lines)

    def changed(self) -> None:
        if self._change is not None:
            self._change.set()
            self._change = None

    async def wait_until(
        self,
        predicate: Callable[[], T | None],
        timeout: float = 5.0,  # noqa: ASYNC109
        what: str = "condition",
    ) -> T:
        """Return ``predicate()`` once truthy; re-checked whenever the fake records something."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"fake Discord: timed out after {timeout}s waiting for {what}")
            if self._change is None:
                self._change = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._change.wait(), min(remaining, 0.5))

    async def wait_for_request(
        self,
        predicate: Callable[[RequestRecord], bool],
        timeout: float = 5.0,  # noqa: ASYNC109
        *,
        start: int = 0,
    ) -> RequestRecord:
        """The first finished request from ``requests[start:]`` matching ``predicate``."""
        return await self.wait_until(
            lambda: next((r for r in self.requests[start:] if predicate(r)), None),
            timeout,
            "a request",
        )

    async def wait_for_message(
        self,
        channel: Channel,
        predicate: Callable[[Message], bool] | None = None,
        *,
        author: User | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> Message:
        """The first message in ``channel`` by ``author`` (default: bot) passing ``predicate``."""
        who = author or self.bot
        return await self.wait_until(
            lambda: next(
                (
                    m
                    for m in self.messages_in(channel)
                    if m.author.id == who.id and (predicate is None or predicate(m))
                ),
                None,
            ),
            timeout,
            f"a message from {who.name} in #{channel.name or channel.id}",
        )

    async def wait_for_identify(self, count: int = 1, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        await self.wait_until(
            lambda: self.gateway.identify_count >= count, timeout, f"{count} IDENTIFY"
        )

    async def wait_for_resume(self, count: int = 1, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        await self.wait_until(
            lambda: self.gateway.resume_count >= count, timeout, f"{count} RESUME"
        )

    def requests_to(self, route: str) -> list[RequestRecord]:
        """Finished requests of a route template: ``"POST /channels/{channel_id}/messages"``."""
        return [r for r in self.requests if r.route == route]

    def messages_in(self, channel: Channel) -> list[Message]:
        return self.world.channel_messages(channel.id)

    # -- REST plumbing (used by rest.py) ----------------------------------------------------------

    async def new_record(self, request: web.Request, route: str) -> RequestRecord:
        rec = RequestRecord(
            request.method,
            request.path[len(API) :],
            route,
            dict(request.match_info),
            dict(request.query),
            request.headers.get("Authorization"),
        )
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    self.violation("nested multipart body", rec)
                    continue
                name, data = part.name or "", bytes(await part.read())
                if name == "payload_json":
                    rec.json = self._loads(data, rec)
                else:
                    ctype = part.headers.get("Content-Type", "")
                    rec.files.append(UploadedFile(name, part.filename or "", ctype, data))
        elif request.can_read_body:
            raw = await request.read()
            if raw:
                if request.content_type != "application/json":
                    self.violation(f"body sent as {request.content_type!r}", rec)
                rec.json = self._loads(raw, rec)
        return rec

    def _loads(self, raw: bytes, rec: RequestRecord) -> Any:
        try:
            return json.loads(raw)
        except ValueError:
            self.violation("invalid JSON body", rec)
            return None

    async def apply_faults(
        self, request: web.Request, rec: RequestRecord
    ) -> web.StreamResponse | None:
        now = time.monotonic()
        for w in self.retry_windows:
            if now < w.until - RETRY_WINDOW_TOLERANCE and (
                w.is_global or (w.method, w.path) == (rec.method, rec.path)
            ):
                self.violation(f"request {w.until - now:.3f}s inside a 429 retry_after window", rec)
        for fault in self.faults:
            if not fault.matches(rec.method, rec.path, self.rng):
                continue
            fault.hits += 1
            rec.fault = fault
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.disconnect and request.transport is not None:
                request.transport.abort()
                return web.Response(status=599)
            if fault.status == 0:
                return None
            if fault.status == 429:
                self.retry_windows.append(
                    RetryWindow(
                        rec.method,
                        rec.path,
                        time.monotonic() + fault.retry_after,
                        fault.scope == "global",
                    )
                )
            return json_response(fault.status, fault.body(), fault.headers())
        return None

    def finish_record(self, rec: RequestRecord, response: web.StreamResponse) -> None:
        rec.status, rec.done_at = response.status, time.monotonic()
        body = getattr(response, "body", None)
        if isinstance(body, bytes) and body:
            rec.response = json.loads(body)
        if rec.interaction_response is not None:
            rec.interaction_response.status = response.status
        self.requests.append(rec)
        self.changed()

    # -- faults -----------------------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def rate_limit(
        self,
        method: str,
        path: str,
        retry_after: float = 0.2,
        *,
        scope: Scope = "user",
        times: int | None = 1,
        via: bool = True,
        probability: float = 1.0,
    ) -> Fault:
        """Answer 429 with ``retry_after`` in the body, X-RateLimit-* headers and (unless
        ``via=False``) a Via header."""
        return self.add_fault(
            Fault(
                method,
                path,
                429,
                retry_after=retry_after,
                scope=scope,
                times=times,
                via=via,
                probability=probability,
                message="You are being rate limited.",
            )
        )

    def fail(
        self,
        method: str,
        path: str,
        status: int = 500,
        *,
        code: int = 0,
        message: str = "Fault",
        times: int | None = 1,
        probability: float = 1.0,
        delay: float = 0.0,
        disconnect: bool = False,
    ) -> Fault:
        """Answer ``status`` with a Discord error body, e.g.
        ``fail("PATCH", "/channels/*/messages/*", 404, code=10008)``;
        ``disconnect=True`` closes the connection without an answer."""
        return self.add_fault(
            Fault(
                method,
                path,
                status,
                code=code,
                message=message,
                times=times,
                probability=probability,
                delay=delay,
                disconnect=disconnect,
            )
        )

    def slow(self, method: str, path: str, delay: float, *, times: int | None = None) -> Fault:
        """Answer normally, after ``delay`` seconds."""
        return self.add_fault(Fault(method, path, 0, delay=delay, times=times))

    # gateway faults
    async def drop_gateway(self, code: int | None = None) -> None:
        """Kill the socket (no close frame if ``code`` is None); RESUME replays missed events."""
        await self.gateway.drop(code)

    async def invalidate_session(self, *, resumable: bool = False) -> None:
        await self.gateway.invalidate_session(resumable=resumable)

    async def request_reconnect(self) -> None:
        await self.gateway.request_reconnect()

    def close_next_identify(self, code: int) -> None:
        """Answer the next IDENTIFY by closing with ``code`` (4004 bad token, 4014 intents...)."""
        self.gateway.identify_close_codes.append(code)

    # -- state changes the bot causes (used by rest.py) -------------------------------------------

    def message_payload(self, msg: Message) -> Json:
        """The message as REST returns it (no content if MESSAGE_CONTENT is off in the portal)."""
        return payloads.message(
            msg, self.world, scrub=not self.gateway.privileged_intents & MESSAGE_CONTENT
        )

    def _register(self, msg: Message) -> None:
        self.world.messages[msg.id] = msg
        for a in msg.attachments:
            a.url = f"{self.base_url}/attachments/{msg.channel_id}/{a.id}/{a.filename}"
            self.attachments[a.id] = a

    def _message_event(self, msg: Message) -> Callable[[int], Json]:
        return lambda intents: payloads.message(
            msg, self.world, scrub=not intents & MESSAGE_CONTENT
        )

    async def store_and_echo(self, msg: Message) -> None:
        """Store a new message and send MESSAGE_CREATE (ephemeral ones are never dispatched)."""
        self._register(msg)
        if not msg.ephemeral:
            await self.gateway.dispatch("MESSAGE_CREATE", self._message_event(msg))
        self.changed()

    async def edited(self, msg: Message) -> None:
        self._register(msg)
        msg.edited_timestamp = iso_now()
        msg.edits += 1
        if not msg.ephemeral:
            await self.gateway.dispatch("MESSAGE_UPDATE", self._message_event(msg))
        self.changed()

    async def deleted(self, msgs: Sequence[Message], *, bulk: bool = False) -> None:
        for m in msgs:
            m.deleted = True
        visible = [m for m in msgs if not m.ephemeral]
        if not visible:
            return
        where: Json = {"channel_id": str(visible[0].channel_id)}
        if visible[0].guild_id is not None:
            where["guild_id"] = str(visible[0].guild_id)
        if bulk:
            await self.gateway.dispatch(
                "MESSAGE_DELETE_BULK", {"ids": [str(m.id) for m in visible], **where}
            )
        for m in [] if bulk else visible:
            await self.gateway.dispatch("MESSAGE_DELETE", {"id": str(m.id), **where})
        self.changed()

    async def react(self, user: User, msg: Message, emoji_text: str, *, add: bool) -> None:
        emoji = parse_emoji(emoji_text)
        reaction = next((r for r in msg.reactions if r.key == emoji_key(emoji)), None)
        if reaction is None:
            if not add:
                return
            reaction = Reaction(emoji)
            msg.reactions.append(reaction)
        if add == (user.id in reaction.user_ids):
            return  # no change, no event (as Discord)
        if add:
            reaction.user_ids.append(user.id)
        else:
            reaction.user_ids.remove(user.id)
        event = "MESSAGE_REACTION_ADD" if add else "MESSAGE_REACTION_REMOVE"
        await self.gateway.dispatch(
            event, payloads.reaction_event(msg, user.id, emoji, self.world, add=add)
        )
        self.changed()

    # -- building the world -----------------------------------------------------------------------

    async def create_user(self, name: str, *, bot: bool = False, system: bool = False) -> User:
        return self.world.add_user(name, bot=bot, system=system)

    async def create_webhook(self, name: str = "Captain Hook") -> User:
        """A webhook "author": messages by it carry ``webhook_id`` and no member."""
        return self.world.add_user(name, webhook=True)

    async def create_guild(
        self,
        name: str = "Test Guild",
        *,
        owner: User | None = None,
        bot_permissions: int = Perm.DEFAULT,
        everyone_permissions: int = Perm.DEFAULT,
        locale: str = "en-US",
    ) -> Guild:
        """A guild the bot is in (GUILD_CREATE if connected), with @everyone and a bot role."""
        ids = self.world.ids
        owner = owner or self.world.add_user(f"{name} owner")
        guild = Guild(ids.next(), name, owner.id, locale=locale)
        guild.roles[guild.id] = Role(guild.id, guild.id, "@everyone", everyone_permissions)
        bot_role = Role(
            ids.next(), guild.id, self.bot.name, bot_permissions, position=1, managed=True
        )
        guild.roles[bot_role.id] = bot_role
        guild.members[self.bot.id] = Member(self.bot, guild.id, [bot_role.id])
        guild.members[owner.id] = Member(owner, guild.id)
        self.world.guilds[guild.id] = guild
        await self.gateway.dispatch("GUILD_CREATE", payloads.guild_create(guild, self.world))
        return guild

    async def create_role(
        self, guild: Guild, name: str, permissions: int = 0, *, mentionable: bool = False
    ) -> Role:
        role = Role(
            self.world.ids.next(),
            guild.id,
            name,
            permissions,
            position=len(guild.roles),
            mentionable=mentionable,
        )
        guild.roles[role.id] = role
        await self.gateway.dispatch(
            "GUILD_ROLE_CREATE", {"guild_id": str(guild.id), "role": payloads.role(role)}
        )
        return role

    async def add_member(
        self,
        guild: Guild,
        user: User,
        *,
        roles: Sequence[Role] = (),
        permissions: int | None = None,
        nick: str | None = None,
    ) -> Member:
        """``permissions`` overrides the member's resolved permissions (else: from roles)."""
        member = Member(
            user, guild.id, [r.id for r in roles], nick=nick, permissions_override=permissions
        )
        guild.members[user.id] = member
        await self.gateway.dispatch(
            "GUILD_MEMBER_ADD", {**payloads.member(member), "guild_id": str(guild.id)}
        )
        return member

    async def create_channel(self, guild: Guild, name: str, *, topic: str | None = None) -> Channel:
        ch = Channel(
            self.world.ids.next(),
            ChannelType.TEXT,
            name,
            guild.id,
            topic=topic,
            position=len(guild.channel_ids),
        )
        self.world.channels[ch.id] = ch
        guild.channel_ids.append(ch.id)
        await self.gateway.dispatch("CHANNEL_CREATE", payloads.channel(ch, self.world))
        return ch

    async def create_thread(
        self,
        parent: Channel,
        name: str,
        *,
        owner: User | None = None,
        private: bool = False,
        thread_id: int | None = None,
    ) -> Channel:
        assert parent.guild_id is not None
        kind = ChannelType.PRIVATE_THREAD if private else ChannelType.PUBLIC_THREAD
        th = Channel(
            thread_id or self.world.ids.next(),
            kind,
            name,
            parent.guild_id,
            parent_id=parent.id,
            owner_id=(owner or self.bot).id,
        )
        self.world.channels[th.id] = th
        self.world.guilds[parent.guild_id].channel_ids.append(th.id)
        await self.gateway.dispatch(
            "THREAD_CREATE", {**payloads.thread(th, self.world), "newly_created": True}
        )
        return th

    async def open_dm(self, user: User) -> Channel:
        ch = self.world.dm_with(user)
        if ch is None:
            ch = Channel(self.world.ids.next(), ChannelType.DM, recipients=[user])
            self.world.channels[ch.id] = ch
        return ch

    async def basic_world(self) -> BasicWorld:
        """Guild "Test Guild" with #general, members alice and bob, a "mod" role (MANAGE_GUILD)."""
        guild = await self.create_guild()
        channel = await self.create_channel(guild, "general")
        mod = await self.create_role(guild, "mod", Perm.DEFAULT | Perm.MANAGE_GUILD)
        alice, bob = await self.create_user("alice"), await self.create_user("bob")
        await self.add_member(guild, alice)
        await self.add_member(guild, bob)
        return BasicWorld(guild, channel, alice, bob, mod)

    def attachment(
        self,
        filename: str,
        data: bytes = b"",
        *,
        content_type: str | None = None,
        stream_size: int | None = None,
        size: int | None = None,
    ) -> Attachment:
        """An attachment for ``user_sends``; ``stream_size`` serves that many generated bytes."""
        return Attachment(self.world.ids.next(), filename, data, content_type, stream_size, size)

    # -- users acting -----------------------------------------------------------------------------

    async def user_sends(
        self,
        channel: Channel,
        author: User,
        content: str = "",
        *,
        mentions_bot: bool = False,
        reply_to: Message | None = None,
        ping_reply: bool = True,
        attachments: Sequence[Attachment] = (),
        embeds: Sequence[Json] = (),
        components: Sequence[Json] = (),
        type: int | None = None,
        flags: int = 0,
        nonce: str | None = None,
    ) -> Message:
        """A message by a human, another bot, a webhook or the system → MESSAGE_CREATE."""
        if mentions_bot:
            content = f"{self.bot.mention} {content}".rstrip()
        guild = self.world.guilds.get(channel.guild_id or 0)
        if guild is not None and not (
            author.webhook or author.system or author.id in guild.members
        ):
            raise ValueError(f"{author.name} is not a member of the channel's guild")
        msg = Message(
            self.world.ids.next(),
            channel.id,
            channel.guild_id,
            author,
            content,
            type=type if type is not None else 19 if reply_to else 0,
            embeds=list(embeds),
            attachments=list(attachments),
            components=list(components),
            flags=flags,
            nonce=nonce,
            webhook_id=author.id if author.webhook else None,
        )
        if reply_to is not None:
            msg.reference = {
                "type": 0,
                "message_id": str(reply_to.id),
                "channel_id": str(channel.id),
            }
            if channel.guild_id is not None:
                msg.reference["guild_id"] = str(channel.guild_id)
        pings = compute_pings(
            content,
            None,
            in_guild=channel.guild_id is not None,
            replied_author=reply_to.author.id if reply_to and ping_reply else None,
        )
        msg.mentions, msg.mention_roles = sorted(pings.user_ids), sorted(pings.roles)
        msg.mention_everyone = pings.everyone
        await self.store_and_echo(msg)
        return msg

    async def user_dms(self, author: User, content: str = "", **kwargs: Any) -> Message:
        """``author`` writes to the bot in their DM channel."""
        return await self.user_sends(await self.open_dm(author), author, content, **kwargs)

    async def user_edits(self, msg: Message, content: str) -> Message:
        msg.content = content
        pings = compute_pings(content, None, in_guild=msg.guild_id is not None)
        msg.mentions, msg.mention_roles, msg.mention_everyone = (
            sorted(pings.users),
            sorted(pings.roles),
            pings.everyone,
        )
        await self.edited(msg)
        return msg

    async def user_deletes(self, *msgs: Message) -> None:
        """MESSAGE_DELETE for one message, MESSAGE_DELETE_BULK for several (same channel)."""
        await self.deleted(msgs, bulk=len(msgs) > 1)

    async def redeliver(self, msg: Message) -> None:
        """Send MESSAGE_CREATE for ``msg`` once more (Discord delivers at least once)."""
        await self.gateway.dispatch("MESSAGE_CREATE", self._message_event(msg))

    async def add_reaction(self, user: User, msg: Message, emoji: str) -> None:
        """MESSAGE_REACTION_ADD. ``emoji``: ``"👍"`` or ``"name:id"`` for a custom one."""
        await self.react(user, msg, emoji, add=True)

    async def remove_reaction(self, user: User, msg: Message, emoji: str) -> None:
        await self.react(user, msg, emoji, add=False)

    # -- interactions -----------------------------------------------------------------------------

    def synced_command(self, name: str, guild_id: int | None) -> Json | None:
        scopes = [guild_id, None] if guild_id is not None else [None]
        for scope in scopes:
            found = next((c for c in self.commands.get(scope, []) if c["name"] == name), None)
            if found is not None:
                return found
        return None

    async def invoke_slash(
        self,
        command: str | Sequence[str],
        options: dict[str, Any] | None = None,
        *,
        user: User,
        channel: Channel,
        permissions: int | None = None,
        app_permissions: int | None = None,
        locale: str = "en-US",
        require_synced: bool = False,
    ) -> InteractionHandle:
        """INTERACTION_CREATE for ``/command [group] [sub]`` (``"settings set"`` or a tuple).

        Option values: str/int/float/bool, or ``User``/``Channel``/``Role``/``Attachment`` objects
        (resolved data is filled in). Types come from the synced schema when the command was synced.
        ``permissions``: the invoker's resolved permissions (default: from roles).
        """
        return await self._command(
            APPLICATION_COMMAND,
            command,
            options,
            None,
            user,
            channel,
            permissions,
            app_permissions,
            locale,
            require_synced,
        )

    async def invoke_autocomplete(
        self,
        command: str | Sequence[str],
        options: dict[str, Any],
        focused: str,
        *,
        user: User,
        channel: Channel,
        locale: str = "en-US",
    ) -> InteractionHandle:
        return await self._command(
            AUTOCOMPLETE, command, options, focused, user, channel, None, None, locale, False
        )

    async def _command(
        self,
        kind: int,
        command: str | Sequence[str],
        options: dict[str, Any] | None,
        focused: str | None,
        user: User,
        channel: Channel,
        permissions: int | None,
        app_permissions: int | None,
        locale: str,
        require_synced: bool,
    ) -> InteractionHandle:
        path = command.split() if isinstance(command, str) else list(command)
        synced = self.synced_command(path[0], channel.guild_id)
        if synced is None and require_synced:
            raise ValueError(f"/{path[0]} was never synced")
        h = InteractionHandle(self, kind, user, channel)
        opts, resolved = command_options(
            self, path, options or {}, schema_for(synced, path), channel, focused
        )
        data: Json = {
            "id": synced["id"] if synced else str(self.world.ids.next()),
            "name": path[0],
            "type": 1,
            "options": opts,
        }
        if resolved:
            data["resolved"] = resolved
        if synced is not None and "guild_id" in synced:
            data["guild_id"] = synced["guild_id"]
        h.payload = {
            **base_payload(
                self, h, permissions=permissions, app_permissions=app_permissions, locale=locale
            ),
            "data": data,
        }
        await self._dispatch_interaction(h)
        return h

    async def click(
        self,
        msg: Message,
        custom_id: str,
        *,
        user: User,
        values: list[str] | None = None,
        permissions: int | None = None,
        locale: str = "en-US",
    ) -> InteractionHandle:
        """A component interaction (button click, or select with ``values``) on a bot message."""
        comp = find_component(msg.components, custom_id)
        if comp is None:
            raise ValueError(f"message {msg.id} has no component with custom_id {custom_id!r}")
        h = InteractionHandle(
            self, MESSAGE_COMPONENT, user, self.world.channels[msg.channel_id], message=msg
        )
        data: Json = {"custom_id": custom_id, "component_type": comp["type"]}
        if values is not None:
            data["values"] = values
        h.payload = {
            **base_payload(self, h, permissions=permissions, app_permissions=None, locale=locale),
            "data": data,
            "message": self.message_payload(msg),
        }
        await self._dispatch_interaction(h)
        return h

    async def _dispatch_interaction(self, h: InteractionHandle) -> None:
        self.interactions[h.token] = h
        h.created, h.dispatched_at = self.now(), time.monotonic()
        await self.gateway.dispatch("INTERACTION_CREATE", h.payload)


__all__ = ["ApiError", "BasicWorld", "FakeDiscord"]
