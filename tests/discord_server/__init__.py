"""A Discord-compatible test server: HTTP + WebSocket on 127.0.0.1 for an unmodified discord.py.

Use the ``fake_discord`` fixture (``fixtures.py``; options through
``@pytest.mark.fake_discord(heartbeat_interval=0.5, ...)``), or ``async with FakeDiscord() as
fake:`` plus ``point_discord_py_at(fake.base_url)`` before the client logs in. The bot token is
``fake.token``, the bot user ``fake.bot``; ``fake.world`` holds every object by id.

Building the world (async; each sends its gateway event if the bot is connected)::

    w = await fake.basic_world()  # guild, #general, alice, bob, "mod" role
    g = await fake.create_guild(name, owner=None, bot_permissions=Perm.DEFAULT)
    ch = await fake.create_channel(g, "name")
    th = await fake.create_thread(ch, "name", owner=user, private=False)
    u = await fake.create_user("name", bot=False)
    hook = await fake.create_webhook("name")
    r = await fake.create_role(g, "name", permissions)
    await fake.add_member(g, u, roles=[r], permissions=None)
    dm = await fake.open_dm(u)
    att = fake.attachment("a.txt", b"...", stream_size=None)

Users acting (each returns at once; the event goes out over the gateway)::

    m = await fake.user_sends(ch, u, "text", mentions_bot=False, reply_to=None, attachments=[att])
    await fake.user_dms(u, "text")
    await fake.user_edits(m, "new")
    await fake.user_deletes(m1, m2)  # one: MESSAGE_DELETE, several: MESSAGE_DELETE_BULK
    await fake.add_reaction(u, m, "👍")  # or "name:id"; remove_reaction likewise
    await fake.redeliver(m)  # a duplicate MESSAGE_CREATE
    h = await fake.invoke_slash("settings set", {"key": "x", "where": ch}, user=u, channel=ch)
    h = await fake.invoke_autocomplete("pick", {"name": "al"}, "name", user=u, channel=ch)
    h = await fake.click(message, "custom_id", user=u, values=None)

``InteractionHandle``: ``await h.wait_for_callback()``, ``h.wait_for_followup(i)``,
``h.wait_for_edit(i)``, ``h.wait_for(kind, index=i)`` return an ``InteractionResponse`` (kind,
type, data, content, ephemeral, files, message, status); also ``h.ack_latency``, ``h.original``,
``h.followups``, ``h.texts()``, ``h.expire()``.

Observing: ``fake.requests`` (``RequestRecord``: method, path, route, json, files, at, status,
response, pings, fault), ``fake.requests_to("POST /channels/{channel_id}/messages")``,
``await fake.wait_for_request(pred)``, ``await fake.wait_for_message(ch, pred, author=None)``,
``fake.messages_in(ch)``, ``fake.commands`` (synced; key None = global), ``fake.gateway``
(identify_count, resume_count, intents, identifies, queries, heartbeats, undelivered),
``await fake.wait_until(lambda: ..., timeout)``. The ``Pings`` of each message request say whom
Discord would notify given its ``allowed_mentions`` (``.count == 0``: nobody).

Faults: ``fake.rate_limit(method, glob, retry_after, scope=, times=, via=, probability=)``,
``fake.fail(method, glob, status, code=, times=, delay=, disconnect=)``,
``fake.slow(method, glob, delay)``; globs match the path after /api/v10 (``*`` one segment,
``**`` any). Gateway: ``await fake.drop_gateway(code=None)``,
``fake.invalidate_session(resumable=)``, ``fake.request_reconnect()``,
``fake.close_next_identify(4004)``, ``fake.gateway.ack_heartbeats``,
``fake.gateway.privileged_intents``. Time: ``fake.advance_time(15 * 60)`` expires interaction
tokens; callbacks later than ``fake.interaction_ack_deadline`` (3 s) get 10062.

Violations: what Discord would reject or silently ignore (unknown route or field, content over
2000, more than 10 embeds, empty message, bad ``allowed_mentions``, double or late ack, a retry
inside a 429 window...) is answered as Discord would and appended to ``fake.violations``; the
fixture fails the test at teardown unless the test took them with ``fake.pop_violations()``.

``ClientRunner(client, fake)`` runs a discord.py client inside the test and fails loudly if
``client.start()`` dies (an unparseable payload kills it silently) or discord.py logs an error.
"""

from .faults import Fault
from .harness import ClientRunner, point_discord_py_at
from .interactions import InteractionHandle, InteractionResponse
from .mentions import Pings
from .model import Attachment, Channel, Guild, Member, Message, Perm, Role, User
from .records import RequestRecord, UploadedFile, Violation
from .server import BasicWorld, FakeDiscord

__all__ = [
    "Attachment",
    "BasicWorld",
    "Channel",
    "ClientRunner",
    "FakeDiscord",
    "Fault",
    "Guild",
    "InteractionHandle",
    "InteractionResponse",
    "Member",
    "Message",
    "Perm",
    "Pings",
    "RequestRecord",
    "Role",
    "UploadedFile",
    "User",
    "Violation",
    "point_discord_py_at",
]
