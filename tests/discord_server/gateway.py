"""The gateway: HELLO, IDENTIFY/READY, heartbeats, RESUME with replay, INVALID_SESSION, RECONNECT
and close codes."""

from __future__ import annotations

import asyncio
import json
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from . import payloads
from .model import Json

if TYPE_CHECKING:
    from .server import FakeDiscord

# opcodes
DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE, VOICE, RESUME = 0, 1, 2, 3, 4, 6
RECONNECT, REQUEST_MEMBERS, INVALID_SESSION, HELLO, HEARTBEAT_ACK = 7, 8, 9, 10, 11

# intents
GUILDS, GUILD_MEMBERS, GUILD_PRESENCES = 1 << 0, 1 << 1, 1 << 8
GUILD_MESSAGES, GUILD_REACTIONS, DM_MESSAGES, DM_REACTIONS = 1 << 9, 1 << 10, 1 << 12, 1 << 13
MESSAGE_CONTENT = 1 << 15
PRIVILEGED = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT
REPLAY_BUFFER = 10_000

EventData = Json | Callable[[int], Json]  # a payload, or a builder taking the session's intents


def required_intent(event: str, d: Json) -> int:
    """The intent an event needs (0: none). Guild vs DM is told by the presence of ``guild_id``."""
    in_guild = "guild_id" in d
    if event.startswith("MESSAGE_REACTION"):
        return GUILD_REACTIONS if in_guild else DM_REACTIONS
    if event.startswith("MESSAGE_"):
        return GUILD_MESSAGES if in_guild else DM_MESSAGES
    if event.startswith("GUILD_MEMBER_"):
        return GUILD_MEMBERS
    if event.startswith(("GUILD_", "CHANNEL_", "THREAD_")):
        return GUILDS
    return 0


class Connection:
    """One websocket; frames are zlib-stream compressed if the client asked for it in the URL."""

    def __init__(
        self, ws: web.WebSocketResponse, request: web.Request, compress: str | None
    ) -> None:
        self.ws = ws
        self.request = request
        self.zlib = zlib.compressobj() if compress == "zlib-stream" else None
        self.session: Session | None = None
        self.closed_by_server = False

    async def send(self, payload: Json) -> None:
        text = json.dumps(payload, separators=(",", ":"))
        if self.zlib is not None:
            await self.ws.send_bytes(
                self.zlib.compress(text.encode()) + self.zlib.flush(zlib.Z_SYNC_FLUSH)
            )
        else:
            await self.ws.send_str(text)

    async def close(self, code: int | None) -> None:
        """Close with ``code``; if ``code`` is None drop the connection without a close frame."""
        self.closed_by_server = True
        if code is None:
            if self.request.transport is not None:
                self.request.transport.abort()
        else:
            await self.ws.close(code=code)


@dataclass(eq=False)
class Session:
    id: str
    intents: int
    seq: int = 0
    events: list[tuple[int, str, Json]] = field(default_factory=list)  # the replay buffer
    conn: Connection | None = None
    resumable: bool = True
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Gateway:
    def __init__(self, fake: FakeDiscord, heartbeat_interval: float) -> None:
        self.fake = fake
        self.heartbeat_interval = heartbeat_interval  # seconds, sent in HELLO
        self.ack_heartbeats = True  # False: a zombie connection (discord.py closes and resumes)
        self.privileged_intents = PRIVILEGED  # enabled in the (fake) developer portal; else 4014
        self.sessions: dict[str, Session] = {}
        self.session: Session | None = None  # the live session, events go there
        self.connections: list[Connection] = []
        self.identifies: list[Json] = []  # IDENTIFY payloads ('d')
        self.resumes: list[Json] = []  # RESUME payloads ('d')
        self.queries: list[dict[str, str]] = []  # query string of each websocket connect
        self.heartbeats = 0
        self.replayed = 0  # events sent again on RESUME
        self.presence_updates: list[Json] = []
        self.undelivered: list[tuple[str, Json]] = []  # events dispatched while no session existed
        self.identify_close_codes: list[int] = []  # close codes to answer the next IDENTIFYs with

    @property
    def identify_count(self) -> int:
        return len(self.identifies)

    @property
    def resume_count(self) -> int:
        return len(self.resumes)

    @property
    def intents(self) -> int | None:
        """Intents of the last IDENTIFY."""
        return self.identifies[-1].get("intents") if self.identifies else None

    @property
    def connected(self) -> bool:
        return self.session is not None and self.session.conn is not None

    # -- connection handling ----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        query = dict(request.query)
        self.queries.append(query)
        if query.get("v") != "10" or query.get("encoding", "json") != "json":
            self.fake.violation(f"gateway: unsupported connect query {query}")
        compress = query.get("compress")
        if compress not in (None, "zlib-stream", "zstd-stream"):
            self.fake.violation(f"gateway: unknown compress={compress!r}")
        # zstd-stream is answered with plain text frames, which discord.py accepts as well
        conn = Connection(ws, request, compress)
        self.connections.append(conn)
        try:
            await conn.send(
                {
                    "op": HELLO,
                    "d": {"heartbeat_interval": int(self.heartbeat_interval * 1000)},
                    "s": None,
                    "t": None,
                }
            )
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    try:
                        await self._on_frame(conn, msg.data)
                    except (ConnectionError, RuntimeError):
                        raise
                    except Exception as e:
                        self.fake.violation(f"gateway: could not handle {msg.data[:200]!r}: {e!r}")
                        await conn.close(1011)
                elif msg.type is WSMsgType.BINARY:
                    self.fake.violation("gateway: client sent a binary frame")
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.connections.remove(conn)
            session = conn.session
            if session is not None and session.conn is conn:
                session.conn = None
                # a client closing with 1000/1001 ends its session (Discord will not resume it)
                if not conn.closed_by_server and ws.close_code in (1000, 1001):
                    session.resumable = False
            self.fake.changed()
        return ws

    async def _on_frame(self, conn: Connection, text: str) -> None:
        try:
            frame = json.loads(text)
            op, d = frame["op"], frame.get("d")
        except (ValueError, KeyError, TypeError):
            self.fake.violation(f"gateway: undecodable frame {text[:200]!r}")
            await conn.close(4002)
            return
        if op == HEARTBEAT:
            self.heartbeats += 1
            if self.ack_heartbeats:
                await conn.send({"op": HEARTBEAT_ACK, "d": None, "s": None, "t": None})
        elif op == IDENTIFY:
            await self._identify(conn, d)
        elif op == RESUME:
            await self._resume(conn, d)
        elif conn.session is None:
            self.fake.violation(f"gateway: op {op} before IDENTIFY")
            await conn.close(4003)
        elif op == PRESENCE:
            self.presence_updates.append(d)
        elif op == REQUEST_MEMBERS:
            await self._members_chunk(conn, d)
        elif op != VOICE:
            self.fake.violation(f"gateway: unknown opcode {op}")
            await conn.close(4001)
        self.fake.changed()

    async def _identify(self, conn: Connection, d: Json) -> None:
        self.identifies.append(d)
        if conn.session is not None:
            self.fake.violation("gateway: second IDENTIFY on one connection")
            await conn.close(4005)
            return
        if d.get("token") != self.fake.token:
            await conn.close(4004)  # Authentication failed
            return
        if self.identify_close_codes:
            await conn.close(self.identify_close_codes.pop(0))
            return
        intents = d.get("intents")
        if not isinstance(intents, int):
            self.fake.violation("gateway: IDENTIFY without intents")
            await conn.close(4013)
            return
        if intents & PRIVILEGED & ~self.privileged_intents:
            await conn.close(4014)  # Disallowed intent(s)
            return
        session = Session(uuid.uuid4().hex, intents)
        self.sessions[session.id] = session
        self.session = session
        world = self.fake.world
        guilds = [g for g in world.guilds.values() if world.bot.id in g.members]
        async with session.lock:
            session.conn, conn.session = conn, session
            ready = {
                "v": 10,
                "user": payloads.me(world.bot),
                "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
                "session_id": session.id,
                "resume_gateway_url": self.fake.gateway_url,
                "session_type": "normal",
                "shard": [0, 1],
                "application": {
                    "id": str(world.application_id),
                    "flags": self.fake.application_flags,
                },
                "private_channels": [],
                "relationships": [],
                "presences": [],
            }
            await self._emit(session, "READY", ready, store=False)
            for g in guilds:
                await self._emit(session, "GUILD_CREATE", payloads.guild_create(g, world))

    async def _resume(self, conn: Connection, d: Json) -> None:
        self.resumes.append(d)
        session = self.sessions.get(d.get("session_id", ""))
        seq = d.get("seq") or 0
        oldest = session.events[0][0] if session and session.events else 0
        if (
            session is None
            or session is not self.session
            or not session.resumable
            or d.get("token") != self.fake.token
            or seq > session.seq
            or (oldest and seq < oldest - 1)
        ):
            await conn.send({"op": INVALID_SESSION, "d": False, "s": None, "t": None})
            return
        async with session.lock:
            old = session.conn
            if old is not None and old is not conn:
                old.session = None
                await old.close(None)
            session.conn, conn.session = conn, session
            for s, event, data in session.events:
                if s > seq:
                    await conn.send({"op": DISPATCH, "s": s, "t": event, "d": data})
                    self.replayed += 1
            await self._emit(session, "RESUMED", {}, store=False)  # d must be an object, not null

    async def _members_chunk(self, conn: Connection, d: Json) -> None:
        guild = self.fake.world.guilds.get(int(d.get("guild_id", 0)))
        if guild is None or conn.session is None:
            return
        wanted = {int(u) for u in d.get("user_ids") or []}
        query = (d.get("query") or "").lower()
        members = [
            m
            for m in guild.members.values()
            if (not wanted or m.user.id in wanted) and m.user.name.lower().startswith(query)
        ]
        chunk: Json = {
            "guild_id": str(guild.id),
            "members": [payloads.member(m) for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if d.get("nonce"):
            chunk["nonce"] = d["nonce"]
        async with conn.session.lock:
            await self._emit(conn.session, "GUILD_MEMBERS_CHUNK", chunk)

    # -- dispatching ------------------------------------------------------------------------------

    async def _emit(self, session: Session, event: str, d: Json, *, store: bool = True) -> None:
        """Give the event the next sequence number, buffer it for RESUME and send it if connected.

        Call with ``session.lock`` held, so sequence numbers go out in order.
        """
        session.seq += 1
        if store:
            session.events.append((session.seq, event, d))
            del session.events[:-REPLAY_BUFFER]
        conn = session.conn
        if conn is None or conn.ws.closed:
            return
        try:
            await conn.send({"op": DISPATCH, "s": session.seq, "t": event, "d": d})
        except (ConnectionError, RuntimeError):
            session.conn = None  # the event stays in the buffer for RESUME

    async def dispatch(self, event: str, data: EventData) -> None:
        """Send an event to the live session (or buffer it while the socket is down)."""
        session = self.session
        if session is None or not session.resumable:
            self.undelivered.append((event, data(0) if callable(data) else data))
            return
        d = data(session.intents) if callable(data) else data
        needed = required_intent(event, d)
        if needed and not session.intents & needed:
            return
        async with session.lock:
            await self._emit(session, event, d)
        self.fake.changed()

    # -- faults -----------------------------------------------------------------------------------

    def _live_connection(self) -> Connection:
        if self.session is None or self.session.conn is None:
            raise RuntimeError("no live gateway connection")
        return self.session.conn

    async def drop(self, code: int | None = None) -> None:
        """Drop the live socket: no close frame if ``code`` is None, else close with ``code``.

        The session stays resumable; events dispatched until the client resumes are replayed.
        """
        conn = self._live_connection()
        assert conn.session is not None
        conn.session.conn = None
        await conn.close(code)

    async def invalidate_session(self, *, resumable: bool = False) -> None:
        """Send op 9 INVALID_SESSION; ``resumable=False`` ends the session (its events are lost)."""
        conn = self._live_connection()
        if not resumable:
            assert conn.session is not None
            conn.session.resumable = False
        await conn.send({"op": INVALID_SESSION, "d": resumable, "s": None, "t": None})

    async def request_reconnect(self) -> None:
        """Send op 7 RECONNECT: discord.py closes the socket and RESUMEs."""
        await self._live_connection().send({"op": RECONNECT, "d": None, "s": None, "t": None})

    async def close_all(self) -> None:
        for conn in list(self.connections):
            await conn.close(1001)
