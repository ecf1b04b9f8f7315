"""REST routes under /api/v10, plus the CDN route serving attachment bytes."""

from __future__ import annotations

import json
import mimetypes
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import payloads
from .interactions import APPLICATION_COMMAND, AUTOCOMPLETE, InteractionHandle, InteractionResponse
from .mentions import Pings, compute_pings
from .model import Attachment, Channel, ChannelType, Json, Message, Perm
from .records import ApiError, RequestRecord
from .validation import (
    EPHEMERAL,
    LOADING,
    Kind,
    Problem,
    command_problems,
    is_empty,
    message_problems,
)

if TYPE_CHECKING:
    from .server import FakeDiscord

API = "/api/v10"
Handler = Callable[[RequestRecord], Awaitable[Any]]
CALLBACK_TYPES = {APPLICATION_COMMAND: {4, 5, 9}, 3: {4, 5, 6, 7, 9}, AUTOCOMPLETE: {8}}


def json_response(status: int, data: Any, headers: dict[str, str] | None = None) -> web.Response:
    # exactly "application/json": with "; charset=utf-8" discord.py does not decode it
    return web.Response(
        status=status,
        body=json.dumps(data).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )


class Rest:
    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake
        self.world = fake.world

    def install(self, app: web.Application) -> None:
        routes: list[tuple[str, str, Handler, bool]] = [
            # (method, path, handler, needs the bot token)
            ("GET", "/users/@me", self.get_me, True),
            ("GET", "/users/{user_id}", self.get_user, True),
            ("GET", "/oauth2/applications/@me", self.get_application, True),
            ("GET", "/applications/@me", self.get_application, True),
            ("GET", "/gateway", self.get_gateway, False),
            ("GET", "/gateway/bot", self.get_gateway, True),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self.get_member, True),
            ("GET", "/channels/{channel_id}", self.get_channel, True),
            ("POST", "/channels/{channel_id}/typing", self.typing, True),
            ("GET", "/channels/{channel_id}/messages", self.history, True),
            ("POST", "/channels/{channel_id}/messages", self.create_message, True),
            ("POST", "/channels/{channel_id}/messages/bulk-delete", self.bulk_delete, True),
            ("GET", "/channels/{channel_id}/messages/{message_id}", self.get_message, True),
            ("PATCH", "/channels/{channel_id}/messages/{message_id}", self.edit_message, True),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}", self.delete_message, True),
            (
                "PUT",
                "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me",
                self.react,
                True,
            ),
            (
                "DELETE",
                "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/{user_id}",
                self.unreact,
                True,
            ),
            (
                "POST",
                "/channels/{channel_id}/messages/{message_id}/threads",
                self.thread_from_message,
                True,
            ),
            ("POST", "/channels/{channel_id}/threads", self.create_thread, True),
            ("POST", "/users/@me/channels", self.open_dm, True),
            ("GET", "/applications/{app_id}/commands", self.get_commands, True),
            ("PUT", "/applications/{app_id}/commands", self.put_commands, True),
            ("GET", "/applications/{app_id}/guilds/{guild_id}/commands", self.get_commands, True),
            ("PUT", "/applications/{app_id}/guilds/{guild_id}/commands", self.put_commands, True),
            # interaction callbacks and webhook follow-ups carry no Authorization header
            ("POST", "/interactions/{interaction_id}/{token}/callback", self.callback, False),
            ("POST", "/webhooks/{app_id}/{token}", self.followup, False),
            ("GET", "/webhooks/{app_id}/{token}/messages/{message_id}", self.webhook_get, False),
            ("PATCH", "/webhooks/{app_id}/{token}/messages/{message_id}", self.webhook_edit, False),
            (
                "DELETE",
                "/webhooks/{app_id}/{token}/messages/{message_id}",
                self.webhook_delete,
                False,
            ),
        ]
        for method, path, handler, auth in routes:
            app.router.add_route(
                method, API + path, self._wrap(handler, f"{method} {path}", auth=auth)
            )
        app.router.add_route(
            "*", API + "/{tail:.*}", self._wrap(self.unknown_route, "unknown", auth=False)
        )
        app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self.cdn)

    # -- plumbing ---------------------------------------------------------------------------------

    def _wrap(
        self, handler: Handler, route: str, *, auth: bool
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        fake = self.fake

        async def aiohttp_handler(request: web.Request) -> web.StreamResponse:
            rec = await fake.new_record(request, route)
            response: web.StreamResponse
            try:
                fault_response = await fake.apply_faults(request, rec)
                if fault_response is not None:
                    response = fault_response
                else:
                    if auth and request.headers.get("Authorization") != f"Bot {fake.token}":
                        raise ApiError(401, 0, "401: Unauthorized")
                    result = await handler(rec)
                    response = (
                        web.Response(status=204) if result is None else json_response(200, result)
                    )
            except ApiError as e:
                if e.violation:
                    fake.violation(e.violation, rec)
                response = json_response(e.status, {"message": e.message, "code": e.code})
            except Exception as e:  # a body the fake cannot handle: loud, and no 5xx retry loop
                fake.violation(f"fake Discord could not handle the request: {e!r}", rec)
                response = json_response(400, {"message": "Invalid Form Body", "code": 50035})
            fake.finish_record(rec, response)
            return response

        return aiohttp_handler

    def _problems(self, rec: RequestRecord, problems: list[Problem]) -> None:
        """Unknown fields are violations Discord would ignore; the rest are 400s and violations."""
        for p in problems:
            if p.status == 0:
                self.fake.violation(p.text, rec)
        errors = [p for p in problems if p.status]
        if errors:
            raise ApiError(
                errors[0].status,
                errors[0].code,
                "; ".join(p.text for p in errors),
                violation="; ".join(p.text for p in errors),
            )

    def _channel(self, rec: RequestRecord) -> Channel:
        ch = self.world.channels.get(rec.id("channel_id"))
        if ch is None:
            raise ApiError(404, 10003, "Unknown Channel")
        return ch

    def _message(self, rec: RequestRecord) -> Message:
        ch = self._channel(rec)
        msg = self.world.messages.get(rec.id("message_id"))
        if msg is None or msg.deleted or msg.channel_id != ch.id:
            raise ApiError(404, 10008, "Unknown Message")
        return msg

    def _require(self, ch: Channel, perm: int) -> None:
        guild_id = ch.guild_id
        if (
            guild_id is not None
            and not self.world.guilds[guild_id].permissions_of(self.world.bot.id) & perm
        ):
            raise ApiError(403, 50013, "Missing Permissions")

    def _check_uploads(self, rec: RequestRecord) -> None:
        for f in rec.files:
            if len(f.data) > self.fake.upload_limit:
                raise ApiError(
                    413,
                    40005,
                    "Request entity too large",
                    violation=f"upload {f.filename!r} of {len(f.data)} bytes over the limit",
                )

    def _new_attachments(self, body: Json, rec: RequestRecord) -> list[Attachment]:
        names = {
            int(a["id"]): a.get("filename")
            for a in body.get("attachments") or []
            if str(a.get("id", "")).isdigit()
        }
        out = []
        for i, f in enumerate(rec.files):
            name = names.get(i) or f.filename
            out.append(
                self.fake.attachment(name, f.data, content_type=mimetypes.guess_type(name)[0])
            )
        return out

    def _apply_body(
        self,
        msg: Message,
        body: Json,
        rec: RequestRecord,
        *,
        create: bool,
        replied_author: int | None = None,
    ) -> None:
        """Set content/embeds/flags/components/attachments of ``msg`` from a create or edit body."""
        if "content" in body or create:
            msg.content = body.get("content") or ""
            pings = compute_pings(
                msg.content,
                body.get("allowed_mentions"),
                in_guild=msg.guild_id is not None,
                replied_author=replied_author,
            )
            msg.mentions, msg.mention_roles = sorted(pings.user_ids), sorted(pings.roles)
            msg.mention_everyone = pings.everyone
            rec.pings = pings
        else:
            rec.pings = Pings()  # no content: Discord does not re-parse mentions
        if "embeds" in body:
            msg.embeds = body["embeds"] or []
        if "components" in body:
            msg.components = body["components"] or []
        if body.get("flags") is not None:
            msg.flags = body["flags"] | (msg.flags & EPHEMERAL)
        if "attachments" in body or rec.files:
            keep = {str(a.get("id")) for a in body.get("attachments") or []}
            kept = [a for a in msg.attachments if str(a.id) in keep] if not create else []
            msg.attachments = kept + self._new_attachments(body, rec)

    def _edit_would_empty(self, msg: Message, body: Json, rec: RequestRecord) -> bool:
        content = body.get("content", msg.content)
        embeds = body.get("embeds", msg.embeds)
        components = body.get("components", msg.components)
        attachments = body.get("attachments", msg.attachments)
        return is_empty(
            {
                "content": content,
                "embeds": embeds,
                "components": components,
                "attachments": attachments,
                "sticker_ids": msg.sticker_ids,
            },
            len(rec.files),
        )

    def _check_edit(self, msg: Message, rec: RequestRecord, kind: Kind) -> Json:
        body = rec.json if isinstance(rec.json, dict) else {}
        self._problems(rec, message_problems(rec.json, kind, n_files=len(rec.files)))
        self._check_uploads(rec)
        if self._edit_would_empty(msg, body, rec):
            raise ApiError(
                400,
                50006,
                "Cannot send an empty message",
                violation="edit would leave the message empty",
            )
        return body

    # -- users, application, gateway --------------------------------------------------------------

    async def get_me(self, rec: RequestRecord) -> Json:
        return payloads.me(self.world.bot)

    async def get_user(self, rec: RequestRecord) -> Json:
        user = self.world.users.get(rec.id("user_id"))
        if user is None:
            raise ApiError(404, 10013, "Unknown User")
        return payloads.user(user)

    async def get_application(self, rec: RequestRecord) -> Json:
        world = self.world
        return {
            "id": str(world.application_id),
            "name": world.bot.name,
            "icon": None,
            "description": "",
            "summary": "",
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": payloads.user(world.owner),
            "verify_key": "0" * 64,
            "team": None,
            "flags": self.fake.application_flags,
            "bot": payloads.user(world.bot),
            "rpc_origins": [],
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "tags": [],
        }

    async def get_gateway(self, rec: RequestRecord) -> Json:
        remaining = max(0, 1000 - self.fake.gateway.identify_count)
        return {
            "url": self.fake.gateway_url,
            "shards": 1,
            "session_start_limit": {
                "total": 1000,
                "remaining": remaining,
                "reset_after": 86_400_000,
                "max_concurrency": 1,
            },
        }

    async def get_member(self, rec: RequestRecord) -> Json:
        member = self.world.member(rec.id("guild_id"), rec.id("user_id"))
        if member is None:
            raise ApiError(404, 10007, "Unknown Member")
        return payloads.member(member)

    # -- channels and messages --------------------------------------------------------------------

    async def get_channel(self, rec: RequestRecord) -> Json:
        return payloads.channel(self._channel(rec), self.world)

    async def typing(self, rec: RequestRecord) -> None:
        self._channel(rec)

    async def history(self, rec: RequestRecord) -> list[Json]:
        ch = self._channel(rec)
        self._require(ch, Perm.READ_MESSAGE_HISTORY)
        limit = int(rec.query.get("limit", 50))
        if not 1 <= limit <= 100:
            raise ApiError(400, 50035, "limit: must be 1-100", violation=f"history limit {limit}")
        msgs = [m for m in self.world.channel_messages(ch.id) if not m.ephemeral]
        if "before" in rec.query:
            msgs = [m for m in msgs if m.id < int(rec.query["before"])][-limit:]
        elif "after" in rec.query:
            msgs = [m for m in msgs if m.id > int(rec.query["after"])][:limit]
        elif "around" in rec.query:
            around = int(rec.query["around"])
            older = [m for m in msgs if m.id <= around][-(limit // 2 + 1) :]
            msgs = older + [m for m in msgs if m.id > around][: limit - len(older)]
        else:
            msgs = msgs[-limit:]
        return [self.fake.message_payload(m) for m in reversed(msgs)]  # newest first

    async def get_message(self, rec: RequestRecord) -> Json:
        return self.fake.message_payload(self._message(rec))

    async def create_message(self, rec: RequestRecord) -> Json:
        ch = self._channel(rec)
        self._problems(rec, message_problems(rec.json, "create", n_files=len(rec.files)))
        self._check_uploads(rec)
        body: Json = rec.json
        self._require(ch, Perm.SEND_MESSAGES_IN_THREADS if ch.is_thread else Perm.SEND_MESSAGES)
        if rec.files:
            self._require(ch, Perm.ATTACH_FILES)
        nonce = body.get("nonce")
        if nonce is not None and body.get("enforce_nonce"):
            dup = self.fake.nonces.get((ch.id, str(nonce)))
            if dup is not None:
                rec.deduplicated = True
                return self.fake.message_payload(dup)
        msg = Message(
            self.world.ids.next(),
            ch.id,
            ch.guild_id,
            self.world.bot,
            nonce=nonce,
            tts=bool(body.get("tts")),
            sticker_ids=body.get("sticker_ids") or [],
        )
        replied_author = None
        ref = body.get("message_reference")
        if ref is not None:
            target = self.world.messages.get(int(ref.get("message_id", 0)))
            if target is None or target.deleted or int(ref.get("channel_id", ch.id)) != ch.id:
                if ref.get("fail_if_not_exists", True):
                    raise ApiError(400, 50035, "message_reference: Unknown message")
            else:
                msg.type = 19
                msg.reference = {"type": 0, "message_id": str(target.id), "channel_id": str(ch.id)}
                if ch.guild_id is not None:
                    msg.reference["guild_id"] = str(ch.guild_id)
                replied_author = target.author.id
        self._apply_body(msg, body, rec, create=True, replied_author=replied_author)
        if nonce is not None and body.get("enforce_nonce"):
            self.fake.nonces[(ch.id, str(nonce))] = msg
        await self.fake.store_and_echo(msg)
        return self.fake.message_payload(msg)

    async def edit_message(self, rec: RequestRecord) -> Json:
        msg = self._message(rec)
        if msg.author.id != self.world.bot.id:
            raise ApiError(
                403,
                50005,
                "Cannot edit a message authored by another user",
                violation=f"edit of message {msg.id} not written by the bot",
            )
        body = self._check_edit(msg, rec, "edit")
        self._apply_body(msg, body, rec, create=False)
        await self.fake.edited(msg)
        return self.fake.message_payload(msg)

    async def delete_message(self, rec: RequestRecord) -> None:
        msg = self._message(rec)
        if msg.author.id != self.world.bot.id:
            self._require(self._channel(rec), Perm.MANAGE_MESSAGES)
        await self.fake.deleted([msg])

    async def bulk_delete(self, rec: RequestRecord) -> None:
        ch = self._channel(rec)
        self._require(ch, Perm.MANAGE_MESSAGES)
        ids = (rec.json or {}).get("messages") or []
        if not 2 <= len(ids) <= 100:
            raise ApiError(
                400, 50035, "messages: 2-100 ids", violation=f"bulk delete of {len(ids)} messages"
            )
        msgs = [self.world.messages[int(i)] for i in ids if int(i) in self.world.messages]
        await self.fake.deleted([m for m in msgs if m.channel_id == ch.id and not m.deleted])

    async def react(self, rec: RequestRecord) -> None:
        msg = self._message(rec)
        self._require(self._channel(rec), Perm.ADD_REACTIONS)
        await self.fake.react(self.world.bot, msg, rec.params["emoji"], add=True)

    async def unreact(self, rec: RequestRecord) -> None:
        msg = self._message(rec)
        who = rec.params["user_id"]
        user_id = self.world.bot.id if who == "@me" else rec.id("user_id")
        if user_id != self.world.bot.id:
            self._require(self._channel(rec), Perm.MANAGE_MESSAGES)
        user = self.world.users.get(user_id)
        if user is None:
            raise ApiError(404, 10013, "Unknown User")
        await self.fake.react(user, msg, rec.params["emoji"], add=False)

    # -- threads and DMs --------------------------------------------------------------------------

    async def thread_from_message(self, rec: RequestRecord) -> Json:
        msg = self._message(rec)
        body = rec.json or {}
        self._problems(
            rec, _fields(body, {"name", "auto_archive_duration", "rate_limit_per_user"}, "thread")
        )
        if msg.thread_id is not None:
            raise ApiError(400, 160004, "A thread has already been created for this message")
        thread = await self._new_thread(rec, body, thread_id=msg.id, kind=ChannelType.PUBLIC_THREAD)
        msg.thread_id = thread.id
        return payloads.thread(thread, self.world)

    async def create_thread(self, rec: RequestRecord) -> Json:
        body = rec.json or {}
        allowed = {"name", "auto_archive_duration", "type", "invitable", "rate_limit_per_user"}
        self._problems(rec, _fields(body, allowed, "thread"))
        kind = body.get("type", ChannelType.PRIVATE_THREAD)
        thread = await self._new_thread(rec, body, thread_id=self.world.ids.next(), kind=kind)
        return payloads.thread(thread, self.world)

    async def _new_thread(
        self, rec: RequestRecord, body: Json, *, thread_id: int, kind: int
    ) -> Channel:
        parent = self._channel(rec)
        name = body.get("name") or ""
        if parent.is_dm or parent.is_thread or not 1 <= len(name) <= 100:
            raise ApiError(
                400,
                50035,
                "Invalid thread",
                violation=f"invalid thread {name!r} in {parent.name!r}",
            )
        self._require(parent, Perm.CREATE_PUBLIC_THREADS)
        return await self.fake.create_thread(
            parent, name, owner=self.world.bot, private=kind == 12, thread_id=thread_id
        )

    async def open_dm(self, rec: RequestRecord) -> Json:
        body = rec.json or {}
        self._problems(rec, _fields(body, {"recipient_id"}, "open DM"))
        user = self.world.users.get(int(body.get("recipient_id", 0)))
        if user is None:
            raise ApiError(400, 50033, "Invalid Recipient(s)")
        return payloads.channel(await self.fake.open_dm(user), self.world)

    # -- application commands ---------------------------------------------------------------------

    def _app(self, rec: RequestRecord) -> int | None:
        if rec.id("app_id") != self.world.application_id:
            raise ApiError(
                403, 50001, "Missing Access", violation=f"application id {rec.params['app_id']}"
            )
        return rec.id("guild_id") if "guild_id" in rec.params else None

    async def get_commands(self, rec: RequestRecord) -> list[Json]:
        return self.fake.commands.get(self._app(rec), [])

    async def put_commands(self, rec: RequestRecord) -> list[Json]:
        guild_id = self._app(rec)
        self._problems(rec, command_problems(rec.json))
        old = {c["name"]: c["id"] for c in self.fake.commands.get(guild_id, [])}
        stored = []
        for cmd in rec.json:
            c = {
                "type": 1,
                **cmd,
                "id": old.get(cmd["name"]) or str(self.world.ids.next()),
                "application_id": str(self.world.application_id),
                "version": str(self.world.ids.next()),
            }
            if guild_id is not None:
                c["guild_id"] = str(guild_id)
            c.setdefault("description", "")
            c.setdefault("default_member_permissions", None)
            stored.append(c)
        self.fake.commands[guild_id] = stored
        return stored

    # -- interactions -----------------------------------------------------------------------------

    def _handle(self, rec: RequestRecord, *, webhook: bool) -> InteractionHandle:
        h = self.fake.interactions.get(rec.params["token"])
        if webhook:
            if h is None or rec.id("app_id") != self.world.application_id:
                raise ApiError(
                    404, 10015, "Unknown Webhook", violation="webhook request with an unknown token"
                )
            if h.token_expired:
                raise ApiError(401, 50027, "Invalid Webhook Token")
        elif h is None or rec.id("interaction_id") != h.id:
            raise ApiError(
                404, 10062, "Unknown interaction", violation="callback for an unknown interaction"
            )
        return h

    def _respond(
        self,
        h: InteractionHandle,
        rec: RequestRecord,
        kind: str,
        *,
        type: int | None = None,
        data: Json | None = None,
        message: Message | None = None,
    ) -> None:
        h.responses.append(
            InteractionResponse(kind, rec.at, 0, type, data or {}, rec.files, message)
        )
        rec.interaction_response = h.responses[-1]

    async def callback(self, rec: RequestRecord) -> Json | None:
        h = self._handle(rec, webhook=False)
        body = rec.json if isinstance(rec.json, dict) else {}
        self._problems(rec, _fields(body, {"type", "data"}, "interaction callback"))
        ctype, data = body.get("type"), body.get("data") or {}
        self._respond(h, rec, "callback", type=ctype, data=data)
        if h.token_expired or h.fake.now() - h.created > self.fake.interaction_ack_deadline:
            late = self.fake.now() - h.created
            raise ApiError(
                404,
                10062,
                "Unknown interaction",
                violation=None
                if h.token_expired
                else f"interaction acknowledged {late:.2f}s after dispatch",
            )
        if h.callback_type is not None:
            raise ApiError(
                400,
                40060,
                "Interaction has already been acknowledged.",
                violation=f"interaction {h.id} acknowledged twice",
            )
        if ctype not in CALLBACK_TYPES[h.kind]:
            raise ApiError(
                400,
                50035,
                f"type {ctype} invalid here",
                violation=f"callback type {ctype} for interaction type {h.kind}",
            )
        msg: Message | None = None
        if ctype in (4, 7):
            problems = message_problems(data, "callback", n_files=len(rec.files))
            if ctype == 7:  # an update may leave the rest of the message as it is
                problems = [p for p in problems if p.code != 50006]
            self._problems(rec, problems)
            self._check_uploads(rec)
        elif ctype in (5, 6):
            self._problems(rec, _fields(data, {"flags"}, "deferred callback data"))
        elif ctype == 8:
            self._problems(rec, _fields(data, {"choices"}, "autocomplete data"))
            if len(data.get("choices") or []) > 25:
                raise ApiError(
                    400, 50035, "choices: at most 25", violation="more than 25 autocomplete choices"
                )
        elif ctype == 9:
            self._problems(rec, _fields(data, {"custom_id", "title", "components"}, "modal"))
        h.callback_type = ctype
        if ctype in (4, 5):
            msg = self._interaction_message(h, original=True)
            if ctype == 5:
                msg.flags = LOADING | (data.get("flags", 0) & EPHEMERAL)
            else:
                msg.flags = data.get("flags") or 0
                self._apply_body(msg, data, rec, create=True)
            h.original = msg
            await self.fake.store_and_echo(msg)
        elif ctype == 7 and h.original is not None:
            msg = h.original
            self._apply_body(msg, data, rec, create=False)
            await self.fake.edited(msg)
        assert rec.interaction_response is not None
        rec.interaction_response.message = msg
        if rec.query.get("with_response") not in ("1", "true", "True"):
            return None
        result: Json = {
            "interaction": {
                "id": str(h.id),
                "type": h.kind,
                "response_message_loading": ctype == 5,
                "response_message_ephemeral": bool(msg and msg.ephemeral),
            }
        }
        if msg is not None:
            result["interaction"]["response_message_id"] = str(msg.id)
        result["resource"] = {
            "type": ctype,
            **({"message": self.fake.message_payload(msg)} if msg else {}),
        }
        return result

    def _interaction_message(self, h: InteractionHandle, *, original: bool) -> Message:
        world = self.world
        return Message(
            world.ids.next(),
            h.channel.id,
            h.channel.guild_id,
            world.bot,
            type=20 if original and h.kind == APPLICATION_COMMAND else 0,
            webhook_id=world.application_id,
            application_id=world.application_id,
            interaction_metadata={
                "id": str(h.id),
                "type": h.kind,
                "user": payloads.user(h.user),
                "authorizing_integration_owners": h.payload.get(
                    "authorizing_integration_owners", {}
                ),
            },
        )

    def _webhook_message(self, h: InteractionHandle, rec: RequestRecord) -> Message:
        mid = rec.params["message_id"]
        if mid == "@original":
            if h.original is None:
                raise ApiError(
                    404, 10008, "Unknown Message", violation="@original used before any response"
                )
            return h.original
        msg = next((m for m in h.followups if str(m.id) == mid and not m.deleted), None)
        if msg is None:
            raise ApiError(404, 10008, "Unknown Message")
        return msg

    async def followup(self, rec: RequestRecord) -> Json | None:
        h = self._handle(rec, webhook=True)
        body = rec.json if isinstance(rec.json, dict) else {}
        self._respond(h, rec, "followup", data=body)
        if h.callback_type is None:
            raise ApiError(
                404,
                10015,
                "Unknown Webhook",
                violation="follow-up before the interaction was acknowledged",
            )
        self._problems(rec, message_problems(rec.json, "webhook", n_files=len(rec.files)))
        self._check_uploads(rec)
        msg = self._interaction_message(h, original=False)
        msg.flags = body.get("flags") or 0
        self._apply_body(msg, body, rec, create=True)
        h.followups.append(msg)
        assert rec.interaction_response is not None
        rec.interaction_response.message = msg
        await self.fake.store_and_echo(msg)
        return (
            self.fake.message_payload(msg)
            if rec.query.get("wait") in ("1", "true", "True")
            else None
        )

    async def webhook_get(self, rec: RequestRecord) -> Json:
        h = self._handle(rec, webhook=True)
        self._respond(
            h, rec, "get_original" if rec.params["message_id"] == "@original" else "get_followup"
        )
        return self.fake.message_payload(self._webhook_message(h, rec))

    async def webhook_edit(self, rec: RequestRecord) -> Json:
        h = self._handle(rec, webhook=True)
        original = rec.params["message_id"] == "@original"
        self._respond(
            h,
            rec,
            "edit_original" if original else "edit_followup",
            data=rec.json if isinstance(rec.json, dict) else {},
        )
        msg = self._webhook_message(h, rec)
        body = self._check_edit(msg, rec, "webhook_edit")
        msg.flags &= ~LOADING
        self._apply_body(msg, body, rec, create=False)
        assert rec.interaction_response is not None
        rec.interaction_response.message = msg
        await self.fake.edited(msg)
        return self.fake.message_payload(msg)

    async def webhook_delete(self, rec: RequestRecord) -> None:
        h = self._handle(rec, webhook=True)
        original = rec.params["message_id"] == "@original"
        self._respond(h, rec, "delete_original" if original else "delete_followup")
        await self.fake.deleted([self._webhook_message(h, rec)])

    # -- fallbacks and CDN ------------------------------------------------------------------------

    async def unknown_route(self, rec: RequestRecord) -> None:
        raise ApiError(404, 0, "404: Not Found", violation="unknown route")

    async def cdn(self, request: web.Request) -> web.StreamResponse:
        att = self.fake.attachments.get(int(request.match_info["attachment_id"]))
        if att is None or att.filename != request.match_info["filename"]:
            return web.Response(status=404, text="Not Found")
        att.downloads += 1
        resp = web.StreamResponse(
            headers={"Content-Type": att.content_type or "application/octet-stream"}
        )
        resp.content_length = att.real_size
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None:  # small kernel buffer: bytes_served stays close to what was read
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        await resp.prepare(request)
        chunk = 64 * 1024
        try:
            if att.stream_size is None:
                for i in range(0, len(att.data), chunk):
                    await resp.write(att.data[i : i + chunk])
                    att.bytes_served += len(att.data[i : i + chunk])
            else:
                block = b"\0" * chunk
                left = att.stream_size
                while left > 0:
                    piece = block[: min(chunk, left)]
                    await resp.write(piece)
                    att.bytes_served += len(piece)
                    left -= len(piece)
            await resp.write_eof()
        except ConnectionError:
            pass  # the client stopped reading
        self.fake.changed()
        return resp


def _fields(body: Any, allowed: set[str], where: str) -> list[Problem]:
    if not isinstance(body, dict):
        return [Problem(400, 50109, f"{where}: body must be a JSON object")]
    return [Problem(0, 0, f"{where}: unknown field {k!r}") for k in body if k not in allowed]
