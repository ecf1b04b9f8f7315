"""The fake Discord server, driven over the real protocol by a plain discord.py client.

The client under test is defined here; the project's bot is not involved.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.http import Route

from tests.discord_server import BasicWorld, ClientRunner, FakeDiscord, Pings, RequestRecord


class Client(discord.Client):
    """A discord.py client that records every event it dispatches."""

    def __init__(self, *, message_content: bool = True, **kwargs: Any) -> None:
        intents = discord.Intents.default()
        intents.message_content = message_content
        kwargs.setdefault("guild_ready_timeout", 0.05)  # on_ready waits 2 s for guilds by default
        super().__init__(intents=intents, **kwargs)
        self.tree = app_commands.CommandTree(self)
        self.seen: list[tuple[str, tuple[Any, ...]]] = []
        self._seen_changed = asyncio.Event()

    def dispatch(self, event: str, /, *args: Any, **kwargs: Any) -> None:
        if event != "socket_event_type":
            self.seen.append((event, args))
            self._seen_changed.set()
        super().dispatch(event, *args, **kwargs)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        pass  # the default sleeps 5 s before every re-IDENTIFY

    def events(self, name: str) -> list[tuple[Any, ...]]:
        return [args for event, args in self.seen if event == name]

    async def wait_event(
        self,
        name: str,
        check: Callable[..., bool] = lambda *a: True,
        *,
        index: int = 0,
        timeout: float = 3.0,  # noqa: ASYNC109
    ) -> tuple[Any, ...]:
        """The ``index``-th ``name`` event whose arguments pass ``check`` (past or future)."""

        async def found() -> tuple[Any, ...]:
            while True:
                matches = [a for a in self.events(name) if check(*a)]
                if len(matches) > index:
                    return matches[index]
                self._seen_changed.clear()
                await self._seen_changed.wait()

        return await asyncio.wait_for(found(), timeout)

    def contents(self) -> list[str]:
        return [m.content for (m,) in self.events("message")]


def world_channel(client: discord.Client, world: BasicWorld) -> discord.TextChannel:
    channel = client.get_channel(world.channel.id)
    assert isinstance(channel, discord.TextChannel)
    return channel


def pings_of(records: list[RequestRecord]) -> list[Pings]:
    """The computed pings of message requests (each must have been computed)."""
    out = [r.pings for r in records]
    assert None not in out
    return [p for p in out if p is not None]


@pytest.fixture
async def world(fake_discord: FakeDiscord) -> BasicWorld:
    return await fake_discord.basic_world()


async def test_login_ready_and_guild_available(
    fake_discord: FakeDiscord, world: BasicWorld
) -> None:
    fake = fake_discord
    thread = await fake.create_thread(world.channel, "old-thread", owner=world.alice)
    client = Client()
    async with ClientRunner(client, fake):
        guild = client.get_guild(world.guild.id)
        assert guild is not None
        assert client.events("guild_available")
        assert guild.get_channel(world.channel.id).name == "general"  # type: ignore[union-attr]
        assert guild.get_thread(thread.id).parent_id == world.channel.id  # type: ignore[union-attr]
        assert guild.get_role(world.mod_role.id).name == "mod"  # type: ignore[union-attr]
        assert guild.me.guild_permissions.send_messages
        assert client.user is not None
        assert client.user.id == fake.bot.id
        headers = {"Authorization": f"Bot {fake.token}"}
        async with (
            aiohttp.ClientSession() as s,
            s.get(fake.api_url + "/users/@me", headers=headers) as r,
        ):
            assert r.headers["Content-Type"] == "application/json"  # exactly (facts item 1)
    assert fake.gateway.identify_count == 1
    assert fake.gateway.intents == client.intents.value
    assert discord.Intents._from_value(fake.gateway.intents).message_content
    assert fake.gateway.queries[0] == {"v": "10", "encoding": "json", "compress": "zlib-stream"}
    assert [r.route for r in fake.requests[:2]] == [
        "GET /users/@me",
        "GET /oauth2/applications/@me",
    ]


async def test_message_create_reaches_on_message(
    fake_discord: FakeDiscord, world: BasicWorld
) -> None:
    fake = fake_discord
    client = Client()
    async with ClientRunner(client, fake):
        first = await fake.user_sends(world.channel, world.alice, "hello bot")
        (msg,) = await client.wait_event("message")
        assert msg.content == "hello bot"
        assert isinstance(msg.author, discord.Member)
        att = fake.attachment("notes.txt", b"some notes", content_type="text/plain")
        await fake.user_sends(
            world.channel,
            world.bob,
            "see file",
            reply_to=first,
            attachments=[att],
            mentions_bot=True,
        )
        (reply,) = await client.wait_event("message", index=1)
        assert reply.reference.message_id == first.id
        assert reply.type is discord.MessageType.reply
        pinged = {u.id for u in reply.mentions}
        assert pinged == {fake.bot.id, world.alice.id}  # the reply pings alice too
        assert await reply.attachments[0].read() == b"some notes"
        assert att.downloads == 1
        assert att.bytes_served == 10
        sent = await msg.channel.send(
            "a file", file=discord.File(io.BytesIO(b"\x00\x01"), "raw.bin")
        )
        assert await sent.attachments[0].read() == b"\x00\x01"
    upload = fake.requests_to("POST /channels/{channel_id}/messages")[0]
    assert [(f.field, f.filename, f.data) for f in upload.files] == [
        ("files[0]", "raw.bin", b"\x00\x01")
    ]
    assert upload.json["attachments"] == [{"id": 0, "filename": "raw.bin"}]


async def test_content_needs_the_message_content_intent(
    fake_discord: FakeDiscord, world: BasicWorld
) -> None:
    fake = fake_discord
    client = Client(message_content=False)
    async with ClientRunner(client, fake):
        await fake.user_sends(world.channel, world.alice, "secret")
        await fake.user_sends(world.channel, world.alice, "hi", mentions_bot=True)
        await fake.user_dms(world.alice, "dm text")
        await client.wait_event("message", index=2)
    assert client.contents() == ["", f"<@{fake.bot.id}> hi", "dm text"]


async def test_pings_follow_allowed_mentions(fake_discord: FakeDiscord, world: BasicWorld) -> None:
    fake = fake_discord
    client = Client()
    route = "POST /channels/{channel_id}/messages"
    text = f"hey {world.alice.mention} {world.mod_role.mention} @everyone"
    async with ClientRunner(client, fake):
        channel = client.get_channel(world.channel.id)
        assert isinstance(channel, discord.TextChannel)
        quiet = await channel.send(text, allowed_mentions=discord.AllowedMentions.none())
        loud = await channel.send(text)  # no allowed_mentions at all: Discord parses everything
        await loud.edit(content=text + "!")  # edits are re-parsed
        await quiet.edit(content=text + "?", allowed_mentions=discord.AllowedMentions.none())
        await quiet.edit(suppress=True)  # no content: nothing re-parsed
        user_msg = await fake.user_sends(world.channel, world.bob, "question")
        (cached,) = await client.wait_event("message", lambda m: m.id == user_msg.id)
        await cached.reply("answer")
        await cached.reply("answer", mention_author=False)
        # the bot's own messages are echoed back over the gateway
        (echo,) = await client.wait_event("message", lambda m: m.id == loud.id)
        assert echo.author == client.user
    sends = fake.requests_to(route)
    pings = pings_of(sends)
    assert [p.count for p in pings] == [0, 3, 1, 0]
    assert pings[1].everyone
    assert pings[1].users == {world.alice.id}
    assert pings[2].replied_user == world.bob.id
    assert pings[3].replied_user is None
    # mention_author=False alone still lets everything in the content ping
    assert sends[3].allowed_mentions == {
        "parse": ["everyone", "users", "roles"],
        "replied_user": False,
    }
    edits = fake.requests_to("PATCH /channels/{channel_id}/messages/{message_id}")
    assert [p.count for p in pings_of(edits)] == [3, 0, 0]
    assert edits[2].json == {"flags": 4, "tts": False}
    assert fake.world.messages[quiet.id].flags == 4


async def test_too_long_and_empty_messages_are_rejected(
    fake_discord: FakeDiscord, world: BasicWorld
) -> None:
    fake = fake_discord
    async with ClientRunner(Client(), fake) as runner:
        channel = runner.client.get_channel(world.channel.id)
        assert isinstance(channel, discord.TextChannel)
        with pytest.raises(discord.HTTPException) as too_long:
            await channel.send("x" * 2001)
        assert (too_long.value.status, too_long.value.code) == (400, 50035)
        with pytest.raises(discord.HTTPException) as empty:
            await channel.send("")
        assert empty.value.code == 50006
        await channel.send("x" * 2000)
    texts = [v.text for v in fake.pop_violations()]
    assert len(texts) == 2
    assert "2000 or fewer" in texts[0]
    assert "empty" in texts[1]
    assert fake.messages_in(world.channel)[-1].content == "x" * 2000


async def test_unknown_routes_and_fields_are_violations(
    fake_discord: FakeDiscord, world: BasicWorld
) -> None:
    fake = fake_discord
    async with ClientRunner(Client(), fake) as runner:
        http = runner.client.http
        with pytest.raises(discord.NotFound):
            await http.request(
                Route("GET", "/channels/{channel_id}/pins", channel_id=world.channel.id)
            )
        route = Route("POST", "/channels/{channel_id}/messages", channel_id=world.channel.id)
        await http.request(route, json={"content": "x", "colour": "red"})
        with pytest.raises(discord.HTTPException) as embeds:
            await http.request(route, json={"embeds": [{"description": "e"}] * 11})
        assert embeds.value.code == 50035
    violations = fake.pop_violations()
    assert violations[0].request == f"GET /channels/{world.channel.id}/pins"
    assert [v.text for v in violations] == [
        "unknown route",
        "create message: unknown field 'colour'",
        "embeds: Must be 10 or fewer in length (got 11)",
    ]


async def test_direct_messages_both_ways(fake_discord: FakeDiscord, world: BasicWorld) -> None:
    fake = fake_discord
    client = Client()
    async with ClientRunner(client, fake):
        sent = await fake.user_dms(world.alice, "hello in private")
        (msg,) = await client.wait_event("message")
        assert msg.guild is None
        assert isinstance(msg.channel, discord.DMChannel)
        await msg.channel.send("private answer")
        user = await client.fetch_user(world.alice.id)
        await user.send("second answer")  # opens the DM through POST /users/@me/channels
        dm = fake.world.channels[sent.channel_id]
        await fake.wait_for_message(dm, lambda m: m.content == "second answer")
    assert [m.content for m in fake.messages_in(dm)] == [
        "hello in private",
        "private answer",
        "second answer",
    ]
    assert fake.requests_to("POST /users/@me/channels")[0].json == {"recipient_id": world.alice.id}
    assert "guild_id" not in fake.requests_to("POST /channels/{channel_id}/messages")[0].response


async def test_threads(fake_discord: FakeDiscord, world: BasicWorld) -> None:
    fake = fake_discord
    client = Client()
    async with ClientRunner(client, fake):
        await fake.user_sends(world.channel, world.alice, "start a thread", mentions_bot=True)
        (msg,) = await client.wait_event("message")
        thread = await msg.create_thread(name="topic")
        (created,) = await client.wait_event("thread_create")
        assert created.id == thread.id == msg.id
        assert created.parent_id == world.channel.id
        await thread.send("inside")
        fake_thread = fake.world.channels[thread.id]
        await fake.user_sends(fake_thread, world.alice, "reply in thread")
        (in_thread,) = await client.wait_event("message", lambda m: m.content == "reply in thread")
        assert isinstance(in_thread.channel, discord.Thread)
        assert in_thread.channel.id == thread.id
        other = await world_channel(client, world).create_thread(
            name="private", type=discord.ChannelType.private_thread
        )
        assert other.type is discord.ChannelType.private_thread
    assert [m.content for m in fake.messages_in(fake_thread)] == ["inside", "reply in thread"]


async def test_raw_reactions_on_uncached_messages(
    fake_discord: FakeDiscord, world: BasicWorld
) -> None:
    fake = fake_discord
    # sent before the bot connects: never delivered, so never cached
    old = await fake.user_sends(world.channel, world.alice, "before the bot started")
    dm_msg = await fake.user_dms(world.alice, "dm before start")
    member = fake.world.guilds[world.guild.id].members[world.alice.id]
    member.role_ids.append(world.mod_role.id)
    client = Client()
    async with ClientRunner(client, fake):
        await fake.add_reaction(world.alice, old, "👍")
        (raw,) = await client.wait_event("raw_reaction_add")
        assert (raw.message_id, raw.user_id, raw.guild_id, str(raw.emoji)) == (
            old.id,
            world.alice.id,
            world.guild.id,
            "👍",
        )
        assert raw.type is discord.ReactionType.normal
        assert world.mod_role.id in [r.id for r in raw.member.roles]
        await fake.remove_reaction(world.alice, old, "👍")
        (removed,) = await client.wait_event("raw_reaction_remove")
        assert removed.user_id == world.alice.id
        assert not client.events("reaction_add")
        await fake.add_reaction(world.alice, dm_msg, "blob:123")
        (dm_raw,) = await client.wait_event("raw_reaction_add", index=1)
        assert dm_raw.guild_id is None
        assert dm_raw.member is None
        assert dm_raw.emoji.id == 123
        fetched = await world_channel(client, world).fetch_message(old.id)
        await fetched.add_reaction("🎉")  # the bot's own reaction: PUT .../@me, echoed as an event
        (own,) = await client.wait_event("raw_reaction_add", lambda r: r.user_id == fake.bot.id)
        assert str(own.emoji) == "🎉"
    assert [r.emoji["name"] for r in old.reactions if r.user_ids] == ["🎉"]


def slash_client(**kwargs: Any) -> Client:
    """A client with /settings set, /settings model temperature, /export (defer + file),
    /confirm (button), /pick (autocomplete) and /ping."""
    client = Client(**kwargs)
    tree = client.tree
    settings = app_commands.Group(name="settings", description="Bot settings")
    model = app_commands.Group(name="model", description="Model settings", parent=settings)

    @settings.command(name="set", description="Set a value")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def settings_set(
        interaction: discord.Interaction,
        key: str,
        value: int,
        enabled: bool,
        ratio: float,
        channel: discord.TextChannel,
        user: discord.Member,
    ) -> None:
        await interaction.response.send_message(
            f"{key}={value} {enabled} {ratio} {channel.name} {user.name}", ephemeral=True
        )

    @model.command(name="temperature", description="Set the temperature")
    async def temperature(interaction: discord.Interaction, value: float) -> None:
        await interaction.response.send_message(f"temperature {value}", ephemeral=True)

    @app_commands.command(name="export", description="Export feedback")
    async def export(interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        data = io.BytesIO(b"id,score\n1,+1\n")
        sent = await interaction.followup.send(
            "here", file=discord.File(data, "feedback.csv"), ephemeral=True, wait=True
        )
        await sent.edit(content="here (1 row)")
        original = await interaction.original_response()
        await original.edit(content="export done")
        extra = await interaction.followup.send("temporary", wait=True)
        await extra.delete()

    @app_commands.command(name="confirm", description="Ask for confirmation")
    async def confirm(interaction: discord.Interaction) -> None:
        view = discord.ui.View()
        button: discord.ui.Button[discord.ui.View] = discord.ui.Button(label="Yes", custom_id="yes")

        async def yes(click: discord.Interaction) -> None:
            await click.response.edit_message(content="confirmed", view=None)

        button.callback = yes  # type: ignore[method-assign,assignment]
        view.add_item(button)
        await interaction.response.send_message("sure?", view=view)

    @app_commands.command(name="pick", description="Pick a model")
    async def pick(interaction: discord.Interaction, name: str) -> None:
        await interaction.response.send_message(name)

    @pick.autocomplete("name")
    async def pick_names(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return [
            app_commands.Choice(name=n, value=n) for n in ("alpha", "beta") if n.startswith(current)
        ]

    @app_commands.command(name="ping", description="Ping")
    async def ping(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("pong")

    @tree.error
    async def on_error(
        interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await interaction.response.send_message(f"denied: {type(error).__name__}", ephemeral=True)

    commands: list[app_commands.Group | app_commands.Command[Any, Any, Any]]
    commands = [settings, export, confirm, pick, ping]
    for command in commands:  # ping stays global (usable in DMs); sync() moves the others
        tree.add_command(command)
    return client


async def sync(client: Client, world: BasicWorld) -> None:
    guild = discord.Object(id=world.guild.id)
    for cmd in list(client.tree.get_commands()):
        if cmd.name != "ping":
            client.tree.remove_command(cmd.name)
            client.tree.add_command(cmd, guild=guild)
    await client.tree.sync(guild=guild)
    await client.tree.sync()


async def test_slash_command_sync_and_invocation(
    fake_discord: FakeDiscord, world: BasicWorld
) -> None:
    fake = fake_discord
    mod = await fake.create_user("mod")
    await fake.add_member(world.guild, mod, roles=[world.mod_role])
    client = slash_client()
    async with ClientRunner(client, fake):
        await sync(client, world)
        synced = {c["name"] for c in fake.commands[world.guild.id]}
        assert synced == {"settings", "export", "confirm", "pick"}
        assert [c["name"] for c in fake.commands[None]] == ["ping"]
        fetched = await client.tree.fetch_commands(guild=discord.Object(id=world.guild.id))
        assert {c.name for c in fetched} == synced
        options = {
            "key": "k",
            "value": 7,
            "enabled": True,
            "ratio": 0.5,
            "channel": world.channel,
            "user": world.bob,
        }
        h = await fake.invoke_slash("settings set", options, user=mod, channel=world.channel)
        cb = await h.wait_for_callback()
        assert (cb.type, cb.content, cb.ephemeral) == (4, "k=7 True 0.5 general bob", True)
        assert h.ack_latency is not None
        assert h.ack_latency < 1.0
        denied = await fake.invoke_slash(
            ("settings", "set"), options, user=world.alice, channel=world.channel, permissions=0
        )
        assert (await denied.wait_for_callback()).content == "denied: MissingPermissions"
        group = await fake.invoke_slash(
            "settings model temperature", {"value": 0.7}, user=mod, channel=world.channel
        )
        assert (await group.wait_for_callback()).content == "temperature 0.7"
        dm = await fake.open_dm(world.alice)
        in_dm = await fake.invoke_slash("ping", user=world.alice, channel=dm)
        assert (await in_dm.wait_for_callback()).content == "pong"
        assert "guild_id" not in in_dm.payload
        assert "member" not in in_dm.payload
    assert all(r.authorization is None for r in fake.requests if r.route.endswith("/callback"))


async def test_defer_then_followup_with_file(fake_discord: FakeDiscord, world: BasicWorld) -> None:
    fake = fake_discord
    client = slash_client()
    async with ClientRunner(client, fake):
        await sync(client, world)
        h = await fake.invoke_slash(
            "export", user=world.alice, channel=world.channel, require_synced=True
        )
        cb = await h.wait_for_callback()
        assert cb.type == 5
        assert cb.ephemeral
        follow = await h.wait_for_followup()
        assert follow.content == "here"
        assert follow.ephemeral
        assert [(f.filename, f.data) for f in follow.files] == [
            ("feedback.csv", b"id,score\n1,+1\n")
        ]
        edit = await h.wait_for_edit()
        assert edit.content == "export done"
        assert h.original is not None
        assert h.original.content == "export done"
        await h.wait_for("delete_followup")
    assert [r.kind for r in h.responses] == [
        "callback",
        "followup",
        "edit_followup",
        "get_original",
        "edit_original",
        "followup",
        "delete_followup",
    ]
    assert h.texts() == ["here", "here (1 row)", "export done", "temporary"]
    assert [m.content for m in h.followups if not m.deleted] == ["here (1 row)"]
    assert all(r.ok for r in h.responses)


async def test_button_and_autocomplete(fake_discord: FakeDiscord, world: BasicWorld) -> None:
    fake = fake_discord
    client = slash_client()
    async with ClientRunner(client, fake):
        await sync(client, world)
        h = await fake.invoke_slash("confirm", user=world.alice, channel=world.channel)
        await h.wait_for_callback()
        assert h.original is not None
        assert h.original.content == "sure?"
        click = await fake.click(h.original, "yes", user=world.alice)
        cb = await click.wait_for_callback()
        assert cb.type == 7
        assert h.original.content == "confirmed"
        assert h.original.components == []
        ac = await fake.invoke_autocomplete(
            "pick", {"name": "al"}, "name", user=world.alice, channel=world.channel
        )
        choices = (await ac.wait_for_callback()).data["choices"]
        assert choices == [{"name": "alpha", "value": "alpha"}]


@pytest.mark.parametrize("close_code", [None, 4000])
async def test_dropped_socket_resumes_without_loss_or_duplicates(
    fake_discord: FakeDiscord, world: BasicWorld, close_code: int | None
) -> None:
    fake = fake_discord
    client = Client()
    async with ClientRunner(client, fake):
        await fake.user_sends(world.channel, world.alice, "one")
        await client.wait_event("message")
        await fake.drop_gateway(close_code)
        await fake.user_sends(world.channel, world.alice, "two")  # while the socket is down
        await fake.user_sends(world.channel, world.alice, "three")
        await fake.wait_for_resume()
        assert fake.gateway.replayed == 2  # "two" and "three" came through the RESUME replay
        await fake.user_sends(world.channel, world.alice, "four")
        await client.wait_event("message", index=3)
        await fake.request_reconnect()  # op 7: the client resumes again
        await fake.wait_for_resume(2)
        await fake.user_sends(world.channel, world.alice, "five")
        await client.wait_event("message", index=4)
        await asyncio.sleep(0.05)
    assert client.contents() == ["one", "two", "three", "four", "five"]
    assert (
        fake.gateway.identify_count,
        fake.gateway.resume_count,
        len(client.events("resumed")),
    ) == (1, 2, 2)


async def test_invalid_session_leads_to_reidentify(
    fake_discord: FakeDiscord, world: BasicWorld
) -> None:
    fake = fake_discord
    client = Client()
    async with ClientRunner(client, fake):
        await fake.invalidate_session(resumable=True)  # d: true -> RESUME
        await fake.wait_for_resume()
        # d: false -> a new IDENTIFY; events in between are lost
        await fake.invalidate_session(resumable=False)
        await fake.user_sends(world.channel, world.alice, "lost")
        await fake.wait_for_identify(2)
        await client.wait_event("ready", index=1)
        await fake.user_sends(world.channel, world.alice, "after")
        await client.wait_event("message")
    assert client.contents() == ["after"]
    assert [event for event, _ in fake.gateway.undelivered][-1] == "MESSAGE_CREATE"


async def test_fatal_close_codes_end_client_start(
    fake_discord: FakeDiscord, world: BasicWorld
) -> None:
    fake = fake_discord
    fake.close_next_identify(4004)
    client = Client()
    with pytest.raises(discord.ConnectionClosed) as closed:  # discord.py 2.7.1: not LoginFailure
        await asyncio.wait_for(client.start(fake.token), 5)
    assert closed.value.code == 4004
    fake.close_next_identify(4014)
    intents_client = Client()
    with pytest.raises(discord.PrivilegedIntentsRequired):
        await asyncio.wait_for(intents_client.start(fake.token), 5)
    await intents_client.close()
    bad = Client()
    with pytest.raises(discord.LoginFailure):  # a bad token fails at login: REST 401 on /users/@me
        await asyncio.wait_for(bad.start("not-the-token"), 5)
    await bad.close()
    assert fake.gateway.identify_count == 2


@pytest.mark.fake_discord(message_content_enabled=False)
async def test_disallowed_privileged_intent_closes_4014(fake_discord: FakeDiscord) -> None:
    client = Client()
    with pytest.raises(discord.PrivilegedIntentsRequired):
        await asyncio.wait_for(client.start(fake_discord.token), 5)
    await client.close()
    async with ClientRunner(Client(message_content=False), fake_discord):
        pass  # without the privileged intent it connects


@pytest.mark.parametrize("scope", ["user", "global"])
async def test_429_is_waited_out_and_retried(
    fake_discord: FakeDiscord, world: BasicWorld, scope: str
) -> None:
    fake = fake_discord
    fault = fake.rate_limit("POST", "/channels/*/messages", retry_after=0.3, scope=scope)  # type: ignore[arg-type]
    async with ClientRunner(Client(), fake) as runner:
        await world_channel(runner.client, world).send("after a rate limit")
    first, second = fake.requests_to("POST /channels/{channel_id}/messages")
    assert (first.status, second.status, fault.hits) == (429, 200, 1)
    assert second.at - first.done_at >= 0.29
    assert first.response["retry_after"] == 0.3
    assert first.response["global"] == (scope == "global")


async def test_429_without_via_is_raised(fake_discord: FakeDiscord, world: BasicWorld) -> None:
    fake = fake_discord
    fake.rate_limit("POST", "/channels/*/messages", retry_after=0.1, via=False)
    async with ClientRunner(Client(), fake) as runner:
        with pytest.raises(discord.HTTPException) as exc:
            await world_channel(runner.client, world).send("x")
        assert exc.value.status == 429  # taken for a Cloudflare ban (facts item 2)


async def test_early_retry_inside_a_429_window_is_a_violation(
    fake_discord: FakeDiscord, world: BasicWorld
) -> None:
    fake = fake_discord
    fake.rate_limit("POST", "/channels/*/messages", retry_after=5.0, scope="global")
    url = f"{fake.api_url}/channels/{world.channel.id}/messages"
    headers = {"Authorization": f"Bot {fake.token}"}
    async with aiohttp.ClientSession() as s:  # a client that ignores retry_after
        async with s.post(url, json={"content": "x"}, headers=headers) as r:
            assert r.status == 429
            assert r.headers["Via"]
            assert r.headers["X-RateLimit-Scope"] == "global"
        async with s.get(f"{fake.api_url}/channels/{world.channel.id}", headers=headers) as r:
            assert r.status == 200
    assert "inside a 429 retry_after window" in fake.pop_violations()[0].text


async def test_server_errors_and_discord_error_codes(
    fake_discord: FakeDiscord, world: BasicWorld
) -> None:
    fake = fake_discord
    async with ClientRunner(Client(), fake) as runner:
        channel = world_channel(runner.client, world)
        msg = await channel.send("v1")
        fake.fail("PATCH", "/channels/*/messages/*", 502)
        await msg.edit(content="v2")  # discord.py retries 5xx (after 1 s)
        fake.fail("PATCH", "/channels/*/messages/*", 404, code=10008, message="Unknown Message")
        with pytest.raises(discord.NotFound) as gone:
            await msg.edit(content="v3")
        assert gone.value.code == 10008
        fake.fail("POST", "/channels/*/messages", 403, code=50013, message="Missing Permissions")
        with pytest.raises(discord.Forbidden):
            await channel.send("nope")
        fake.slow("POST", "/channels/*/typing", 0.2, times=1)
        started = time.monotonic()
        await channel.typing()
        assert time.monotonic() - started >= 0.2
    assert fake.world.messages[msg.id].content == "v2"
    statuses = [
        r.status for r in fake.requests_to("PATCH /channels/{channel_id}/messages/{message_id}")
    ]
    assert statuses == [502, 200, 404]


async def test_interaction_token_expiry_and_late_ack(
    fake_discord: FakeDiscord, world: BasicWorld
) -> None:
    fake = fake_discord
    client = Client()
    release = asyncio.Event()

    @client.tree.command(name="slow", description="Defers, waits, follows up")
    async def slow(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await release.wait()
        try:
            await interaction.followup.send("too late")
        except discord.HTTPException as e:
            client.dispatch("followup_failed", e)

    @client.tree.command(name="sleepy", description="Acks too late")
    async def sleepy(interaction: discord.Interaction) -> None:
        await asyncio.sleep(0.3)
        try:
            await interaction.response.send_message("hi")
        except discord.NotFound as e:
            client.dispatch("ack_failed", e)

    async with ClientRunner(client, fake):
        h = await fake.invoke_slash("slow", user=world.alice, channel=world.channel)
        await h.wait_for_callback()
        fake.advance_time(15 * 60 + 1)  # the token expires without waiting 15 minutes
        release.set()
        (err,) = await client.wait_event("followup_failed")
        assert (err.status, err.code) == (401, 50027)
        fake.interaction_ack_deadline = 0.1
        late = await fake.invoke_slash("sleepy", user=world.alice, channel=world.channel)
        (nf,) = await client.wait_event("ack_failed")
        assert nf.code == 10062
        assert late.callback is None
    assert fake.pop_violations()[0].text.startswith("interaction acknowledged 0.3")


async def test_history_fetch_and_nonce_dedupe(fake_discord: FakeDiscord, world: BasicWorld) -> None:
    fake = fake_discord
    for i in range(3):  # while the bot is not connected
        await fake.user_sends(world.channel, world.alice, f"offline {i}")
    async with ClientRunner(Client(), fake) as runner:
        channel = world_channel(runner.client, world)
        history = [m.content async for m in channel.history(limit=10)]
        assert history == ["offline 2", "offline 1", "offline 0"]
        oldest = [m.content async for m in channel.history(limit=10, oldest_first=True)]
        assert oldest[0] == "offline 0"
        a = await channel.send("once", nonce=42)
        b = await channel.send("once", nonce=42)  # enforce_nonce: Discord drops the duplicate
        assert a.id == b.id
    assert [m.content for m in fake.messages_in(world.channel)].count("once") == 1
    assert fake.requests_to("POST /channels/{channel_id}/messages")[1].deduplicated


async def test_huge_attachment_records_bytes_served(
    fake_discord: FakeDiscord, world: BasicWorld
) -> None:
    fake = fake_discord
    huge = fake.attachment("big.bin", stream_size=200 * 1024 * 1024)
    await fake.user_sends(world.channel, world.alice, "big file", attachments=[huge])
    async with aiohttp.ClientSession() as s, s.get(huge.url) as r:
        assert r.content_length == 200 * 1024 * 1024
        head = await r.content.readexactly(100_000)
    assert len(head) == 100_000
    await fake.wait_until(lambda: huge.downloads == 1 and huge.bytes_served > 0, what="download")
    await asyncio.sleep(0.1)
    assert huge.bytes_served < 2 * 1024 * 1024  # read bytes + socket buffers, not 200 MiB


async def test_unparseable_payload_is_detected(
    fake_discord: FakeDiscord, world: BasicWorld
) -> None:
    fake = fake_discord
    msg = await fake.user_sends(world.channel, world.alice, "hi")
    broken = {
        "user_id": str(world.alice.id),
        "channel_id": str(msg.channel_id),
        "message_id": str(msg.id),
        "emoji": {"id": None, "name": "👍"},
        "burst": False,
    }  # no "type": discord.py raises KeyError
    with pytest.raises(AssertionError, match="KeyError"):
        await feed(ClientRunner(Client(), fake), "MESSAGE_REACTION_ADD", broken)


async def feed(runner: ClientRunner, event: str, data: dict[str, Any]) -> None:
    """Dispatch one raw event and wait for the client to die of it (REST alone would still work)."""
    async with runner:
        await runner.fake.gateway.dispatch(event, data)
        assert runner.task is not None
        await asyncio.wait({runner.task}, timeout=2)


async def test_edits_deletes_and_other_authors(
    fake_discord: FakeDiscord, world: BasicWorld
) -> None:
    fake = fake_discord
    client = Client()
    other_bot = await fake.create_user("OtherBot", bot=True)
    await fake.add_member(world.guild, other_bot)
    hook = await fake.create_webhook("Hooky")
    async with ClientRunner(client, fake):
        msg = await fake.user_sends(world.channel, world.alice, "draft")
        await client.wait_event("message")
        await fake.user_edits(msg, "final")
        (before, after) = await client.wait_event("message_edit")
        assert (before.content, after.content) == ("draft", "final")
        await fake.redeliver(msg)  # at-least-once delivery: the same message twice
        (again,) = await client.wait_event("message", index=1)
        assert again.id == msg.id
        await fake.user_deletes(msg)
        (deleted,) = await client.wait_event("raw_message_delete")
        assert deleted.message_id == msg.id
        assert deleted.cached_message is not None
        a = await fake.user_sends(world.channel, world.alice, "a")
        b = await fake.user_sends(world.channel, world.bob, "b")
        await fake.user_deletes(a, b)
        (bulk,) = await client.wait_event("raw_bulk_message_delete")
        assert bulk.message_ids == {a.id, b.id}
        await fake.user_sends(world.channel, other_bot, "beep")
        await fake.user_sends(world.channel, hook, "from a webhook")
        await fake.user_sends(world.channel, world.bob, "", type=7)  # "bob joined the server"
        (by_bot,) = await client.wait_event("message", lambda m: m.content == "beep")
        (by_hook,) = await client.wait_event("message", lambda m: m.webhook_id is not None)
        (system,) = await client.wait_event(
            "message", lambda m: m.type is discord.MessageType.new_member
        )
        assert by_bot.author.bot
        assert by_hook.webhook_id == hook.id
        assert system.is_system()
        own = await world_channel(client, world).send("mine")
        await own.delete()
        (own_deleted,) = await client.wait_event(
            "raw_message_delete", lambda e: e.message_id == own.id
        )
        assert own_deleted.channel_id == world.channel.id
        rec = await fake.wait_for_request(lambda r: r.method == "DELETE")
        assert rec.route == "DELETE /channels/{channel_id}/messages/{message_id}"
        assert rec.status == 204


async def test_member_query_uses_request_guild_members(
    fake_discord: FakeDiscord, world: BasicWorld
) -> None:
    intents = discord.Intents.default()
    intents.members = True
    client = discord.Client(intents=intents, guild_ready_timeout=0.05)
    async with ClientRunner(client, fake_discord):
        guild = client.get_guild(world.guild.id)
        assert guild is not None
        assert guild.chunked
        found = await guild.query_members("ali")
        assert [m.id for m in found] == [world.alice.id]


@pytest.mark.fake_discord(heartbeat_interval=0.1)
async def test_missing_heartbeat_acks_make_the_client_resume(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with ClientRunner(Client(heartbeat_timeout=0.5), fake):
        fake.gateway.ack_heartbeats = False  # a zombie connection
        await fake.wait_for_resume(timeout=3)
        fake.gateway.ack_heartbeats = True
        await asyncio.sleep(0.3)
    assert fake.gateway.identify_count == 1
    assert fake.gateway.heartbeats > 3


async def test_dropped_http_connection(fake_discord: FakeDiscord, world: BasicWorld) -> None:
    fake = fake_discord
    fault = fake.fail("POST", "/channels/*/messages", disconnect=True)
    async with ClientRunner(Client(), fake) as runner:
        with pytest.raises(aiohttp.ClientError):
            await world_channel(runner.client, world).send("lost on the wire")
        await world_channel(runner.client, world).send("next one")
    assert fault.hits == 1
    assert [m.content for m in fake.messages_in(world.channel)] == ["next one"]
