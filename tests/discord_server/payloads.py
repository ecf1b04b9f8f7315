"""JSON payloads in the shapes discord.py 2.7.1 parses (see discord/types/*.py)."""

from __future__ import annotations

from .model import (
    Attachment,
    Channel,
    ChannelType,
    Guild,
    Json,
    Member,
    Message,
    Reaction,
    Role,
    User,
    World,
)

# Flags a message loses without the MESSAGE_CONTENT intent (1 << 15).
CONTENT_FIELDS = ("embeds", "attachments", "components")


def user(u: User) -> Json:
    d: Json = {
        "id": str(u.id),
        "username": u.name,
        "discriminator": "0000" if u.webhook else "0",
        "global_name": None if u.bot or u.webhook else u.name,
        "avatar": None,
        "public_flags": 0,
    }
    if u.bot or u.webhook:
        d["bot"] = True
    if u.system:
        d["system"] = True
    return d


def me(u: User) -> Json:
    return {
        **user(u),
        "verified": True,
        "mfa_enabled": False,
        "flags": 0,
        "email": None,
        "locale": "en-US",
    }


def role(r: Role) -> Json:
    return {
        "id": str(r.id),
        "name": r.name,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "position": r.position,
        "permissions": str(r.permissions),
        "managed": r.managed,
        "mentionable": r.mentionable,
        "flags": 0,
    }


def member(m: Member, *, with_user: bool = True, permissions: int | None = None) -> Json:
    d: Json = {
        "roles": [str(r) for r in m.role_ids],  # ids, not role objects (facts item 6)
        "joined_at": m.joined_at,
        "deaf": False,
        "mute": False,
        "flags": 0,
        "pending": False,
        "nick": m.nick,
        "avatar": None,
        "premium_since": None,
        "communication_disabled_until": None,
    }
    if with_user:
        d["user"] = user(m.user)
    if permissions is not None:
        d["permissions"] = str(permissions)
    return d


def channel(c: Channel, world: World) -> Json:
    if c.is_dm:
        return {
            "id": str(c.id),
            "type": ChannelType.DM,
            "recipients": [user(u) for u in c.recipients],
            "last_message_id": _last_message_id(c, world),
            "flags": 0,
        }
    if c.is_thread:
        return thread(c, world)
    return {
        "id": str(c.id),
        "type": c.type,
        "guild_id": str(c.guild_id),
        "name": c.name,
        "position": c.position,
        "topic": c.topic,
        "nsfw": False,
        "parent_id": None,
        "permission_overwrites": [],
        "rate_limit_per_user": 0,
        "last_message_id": _last_message_id(c, world),
        "flags": 0,
    }


def thread(c: Channel, world: World) -> Json:
    count = len(world.channel_messages(c.id))
    return {
        "id": str(c.id),
        "type": c.type,
        "guild_id": str(c.guild_id),
        "parent_id": str(c.parent_id),
        "owner_id": str(c.owner_id),
        "name": c.name,
        "member_count": 1,
        "message_count": count,
        "total_message_sent": count,
        "rate_limit_per_user": 0,
        "last_message_id": _last_message_id(c, world),
        "flags": 0,
        "thread_metadata": {
            "archived": c.archived,
            "auto_archive_duration": 1440,
            "archive_timestamp": c.created_at,
            "locked": False,
            "create_timestamp": c.created_at,
        },
    }


def _last_message_id(c: Channel, world: World) -> str | None:
    msgs = world.channel_messages(c.id)
    return str(msgs[-1].id) if msgs else None


def guild_create(g: Guild, world: World) -> Json:
    chans = [world.channels[cid] for cid in g.channel_ids]
    return {
        "id": str(g.id),
        "name": g.name,
        "owner_id": str(g.owner_id),
        "unavailable": False,
        "icon": None,
        "splash": None,
        "discovery_splash": None,
        "banner": None,
        "description": None,
        "features": [],
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "mfa_level": 0,
        "nsfw_level": 0,
        "premium_tier": 0,
        "afk_timeout": 300,
        "system_channel_flags": 0,
        "preferred_locale": g.locale,
        "large": False,
        "member_count": len(g.members),  # == len(members): discord.py treats the guild as chunked
        "joined_at": g.members[world.bot.id].joined_at,
        "roles": [role(r) for r in g.roles.values()],
        "emojis": [],
        "stickers": [],
        "members": [member(m) for m in g.members.values()],
        "channels": [channel(c, world) for c in chans if not c.is_thread],
        "threads": [thread(c, world) for c in chans if c.is_thread],
        "presences": [],
        "voice_states": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
    }


def message(m: Message, world: World, *, scrub: bool = False, depth: int = 0) -> Json:
    """A message as the bot sees it; ``scrub``: as without the MESSAGE_CONTENT intent."""
    guild = world.guilds.get(m.guild_id) if m.guild_id else None
    d: Json = {
        "id": str(m.id),
        "channel_id": str(m.channel_id),
        "type": m.type,
        "author": user(m.author),
        "content": m.content,
        "timestamp": m.timestamp,
        "edited_timestamp": m.edited_timestamp,
        "tts": m.tts,
        "mention_everyone": m.mention_everyone,
        "mentions": [_mentioned(uid, guild, world) for uid in m.mentions if uid in world.users],
        "mention_roles": [str(r) for r in m.mention_roles],
        "attachments": [attachment(a) for a in m.attachments],
        "embeds": m.embeds,
        "components": m.components,
        "pinned": False,
        "flags": m.flags,
    }
    if guild is not None:  # DMs omit guild_id entirely rather than sending null (facts item 6)
        d["guild_id"] = str(guild.id)
        author_member = guild.members.get(m.author.id)
        if author_member is not None and m.webhook_id is None:
            d["member"] = member(author_member, with_user=False)
    if m.reactions:
        d["reactions"] = [_reaction(r, world) for r in m.reactions if r.user_ids]
    if m.nonce is not None:
        d["nonce"] = m.nonce
    if m.webhook_id is not None:
        d["webhook_id"] = str(m.webhook_id)
    if m.application_id is not None:
        d["application_id"] = str(m.application_id)
    if m.interaction_metadata is not None:
        d["interaction_metadata"] = m.interaction_metadata
    if m.reference is not None:
        d["message_reference"] = m.reference
        ref_id = m.reply_to_id
        if m.type == 19 and ref_id is not None and depth == 0:
            ref = world.messages.get(ref_id)
            d["referenced_message"] = (
                None if ref is None or ref.deleted else message(ref, world, scrub=scrub, depth=1)
            )
    if m.thread_id is not None and m.thread_id in world.channels:
        d["thread"] = thread(world.channels[m.thread_id], world)
    if scrub and _needs_scrub(m, world):
        d["content"] = ""
        for key in CONTENT_FIELDS:
            d[key] = []
    return d


def _needs_scrub(m: Message, world: World) -> bool:
    """Without MESSAGE_CONTENT a guild message keeps content only if by or mentioning the bot."""
    return m.guild_id is not None and m.author.id != world.bot.id and world.bot.id not in m.mentions


def _mentioned(uid: int, guild: Guild | None, world: World) -> Json:
    d = user(world.users[uid])
    if guild is not None and uid in guild.members:
        d["member"] = member(guild.members[uid], with_user=False)
    return d


def _reaction(r: Reaction, world: World) -> Json:
    n = len(r.user_ids)
    return {
        "emoji": r.emoji,
        "count": n,
        "count_details": {"burst": 0, "normal": n},
        "me": world.bot.id in r.user_ids,  # required by discord.py (facts item 6)
        "me_burst": False,
        "burst_colors": [],
    }


def attachment(a: Attachment) -> Json:
    d: Json = {
        "id": str(a.id),
        "filename": a.filename,
        "size": a.size if a.size is not None else a.real_size,
        "url": a.url,
        "proxy_url": a.url,
    }
    if a.content_type:
        d["content_type"] = a.content_type
    return d


def reaction_event(m: Message, user_id: int, emoji: Json, world: World, *, add: bool) -> Json:
    d: Json = {
        "user_id": str(user_id),
        "channel_id": str(m.channel_id),
        "message_id": str(m.id),
        "emoji": emoji,
        "burst": False,
        "type": 0,  # required by discord.py (facts item 6)
    }
    if m.guild_id is not None:  # DMs: no guild_id key at all
        d["guild_id"] = str(m.guild_id)
        mem = world.member(m.guild_id, user_id)
        if add and mem is not None:
            d["member"] = member(mem)
    if add:
        d["message_author_id"] = str(m.author.id)
        d["burst_colors"] = []
    return d
