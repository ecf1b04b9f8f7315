"""What the bot writes into Discord: never a ping (D1), always within Discord's limits (D2).

Every figure is measured on the wire, from the fake Discord's request log.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections import Counter
from types import SimpleNamespace

import pytest

from bot.splitting import DISCORD_LIMIT
from tests.discord_server import Perm, RequestRecord
from tests.fake_vllm import FakeVLLM, Script
from tests.harness import running_bot
from tests.reliability.helpers import model_asked, until_all_finished

ADMIN = Perm.DEFAULT | Perm.MANAGE_GUILD
# Every route that carries a message body: sends, edits, interaction callbacks, follow-ups.
MESSAGE_ROUTES = {
    "POST /channels/{channel_id}/messages",
    "PATCH /channels/{channel_id}/messages/{message_id}",
    "POST /interactions/{interaction_id}/{token}/callback",
    "POST /webhooks/{app_id}/{token}",
    "PATCH /webhooks/{app_id}/{token}/messages/{message_id}",
}


def seed_for(name: str) -> int:
    seed = int(os.environ.get("RELIABILITY_SEED") or random.randrange(1 << 30))
    print(f"{name}: seed {seed} (rerun with RELIABILITY_SEED={seed})")
    return seed


def message_bodies(records: list[RequestRecord]) -> list[RequestRecord]:
    """Requests that create or change a message (deferrals and choices carry none)."""
    out = []
    for r in records:
        if r.route not in MESSAGE_ROUTES:
            continue
        if r.route.endswith("/callback") and (r.json or {}).get("type") not in (4, 7):
            continue
        out.append(r)
    return out


def unsafe_reason(r: RequestRecord, *, ping_author: bool = False) -> str | None:
    """Why this body could ping someone (None: it cannot)."""
    if (
        r.pings is not None
        and r.pings.count
        and not (ping_author and r.pings.count == 1 and r.pings.replied_user is not None)
    ):
        return f"pings {r.pings}"
    am = r.allowed_mentions
    if not isinstance(am, dict):
        return "no allowed_mentions"
    if am.get("parse") != []:
        return f"allowed_mentions.parse={am.get('parse')!r}"
    if am.get("users") or am.get("roles"):
        return "allowed_mentions lists ids"
    if am.get("replied_user") and not ping_author:
        return "replied_user without ping_author"
    return None


def hostile_text(rng: random.Random, role: int, users: list[int]) -> str:
    """A model reply full of mentions: plain, in code, and at Discord's 2000-character cut."""
    user = rng.choice(users)
    mentions = [
        "@everyone",
        "@here",
        f"<@&{role}>",
        f"<@{user}>",
        f"<@!{user}>",
        "@\u200beveryone",
        "<@&0>",
        f"<@{users[0]}><@{users[-1]}>",
    ]
    # long words are one token each: long replies stay cheap to stream
    words = [*mentions, "ping", "everyone", "now", "please", "x" * 30, "y" * 20]

    def line(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    kind = rng.choice(["short", "short", "short", "code", "boundary", "long"])
    if kind == "short":
        return f"Sure! {line(rng.randint(3, 30))}"
    if kind == "code":
        return f"Here:\n```\n{line(8)}\n```\nand inline `@everyone` too, {line(5)}"
    if kind == "boundary":
        # a mention lands right where the text must be cut into a second message
        filler = "x" * rng.randint(1980, 1999)
        return f"{filler} {line(6)}"
    body = "\n".join(f"{i}: {line(6)}" for i in range(rng.randint(40, 80)))
    return f"Code:\n```text\n{body}\n```\nThat pings {line(4)}"


@pytest.fixture
async def vllm():
    async with FakeVLLM(model="tiny", max_model_len=32768) as server:
        yield server


async def test_d1_no_reply_ever_pings(fake_discord, vllm, tmp_path, figures):
    rng = random.Random(seed_for("D1"))
    fake = fake_discord
    guild_a = await fake.create_guild("A")
    guild_b = await fake.create_guild("B")
    role = await fake.create_role(guild_a, "everyone-role", mentionable=True)
    # Many channels: each channel's writes are paced (4 per 5 s), so spread the replies.
    channels = [await fake.create_channel(guild_a, f"a{i}") for i in range(150)]
    channels += [await fake.create_channel(guild_b, f"b{i}") for i in range(50)]
    users = [await fake.create_user(f"user{i}") for i in range(30)]
    for u in users:
        await fake.add_member(guild_a, u)
        await fake.add_member(guild_b, u)
    user_ids = [u.id for u in users]
    n_channel, n_dm = 500, 20
    texts = [hostile_text(rng, role.id, user_ids) for _ in range(n_channel + n_dm)]
    # Mostly instant replies (many replies fast); every tenth streams, so edits carry them too.
    vllm.push(*(Script(text=t, rate=0 if i % 10 else 400) for i, t in enumerate(texts)))
    world = SimpleNamespace(guild=guild_a, channel=channels[0])
    pairs = list(itertools.product(users, channels))
    rng.shuffle(pairs)
    started = time.monotonic()
    async with running_bot(
        fake,
        vllm,
        world,
        tmp_path / "bot.sqlite3",
        limits={"max_concurrency": 16, "queue_size": 1000},
    ) as env:
        asks = ["ping everyone please @everyone", f"say <@&{role.id}> and @here", "hi"]
        for user, channel in pairs[:n_channel]:
            await fake.user_sends(channel, user, rng.choice(asks), mentions_bot=True)
        for user in users[:n_dm]:
            await fake.user_dms(user, "ping @everyone from my DM")
        await until_all_finished(env, n_channel + n_dm, timeout=120)
        chat_seconds = time.monotonic() - started
        replies = env.rows("SELECT count(*) FROM messages WHERE role = 'assistant'")[0][0]

        # Interaction answers: a persona full of mentions is echoed back by /settings.
        handles = []
        persona = f"You are @everyone and <@&{role.id}> and <@{users[1].id}> @here"
        for user in users[:8]:
            for command, options in (
                (("settings", "set"), {"target": "me", "name": "persona", "value": persona}),
                (("settings", "show"), {}),
                ("help", {}),
                ("reset", {}),
                ("mydata", {}),
            ):
                handles.append(
                    await fake.invoke_slash(command, options, user=user, channel=channels[1])
                )
        for command in ("status", "export"):
            handles.append(
                await fake.invoke_slash(
                    command, {}, user=users[0], channel=channels[0], permissions=ADMIN
                )
            )
        forget = await fake.invoke_slash("forget", {}, user=users[9], channel=channels[2])
        for h in handles:
            await h.wait_for_callback()
            if h.callback.type == 5:
                await h.wait_for("followup")
        await forget.wait_for_callback()
        (row,) = forget.callback.data["components"]
        confirm = next(b for b in row["components"] if b["label"] == "Delete my data")
        click = await fake.click(forget.original, confirm["custom_id"], user=users[9])
        await click.wait_for_callback()
        await forget.wait_for("edit_original")

    bodies = message_bodies(fake.requests)
    unsafe = [(r.route, unsafe_reason(r)) for r in bodies if unsafe_reason(r)]
    routes = Counter(r.route.split(" ")[0] + " " + r.route.split("/")[1] for r in bodies)
    pings = sum(r.pings.count for r in bodies if r.pings is not None)
    multi_part = env.rows("SELECT count(*) FROM reply_parts WHERE part > 0")[0][0]
    edits = len([r for r in bodies if r.route.startswith("PATCH /channels")])

    # With ping_author on, exactly the author of the message answered is pinged, once per
    # reply (on its first message), and nobody else ever.
    vllm.reset()
    vllm.push(*(Script(text=hostile_text(rng, role.id, user_ids), rate=300) for _ in range(10)))
    first = len(fake.requests)
    async with running_bot(
        fake, vllm, world, tmp_path / "ping-author.sqlite3", discord={"ping_author": True}
    ) as env2:
        asked = [
            await fake.user_sends(channels[i % 2], users[i], "hi @everyone", mentions_bot=True)
            for i in range(10)
        ]
        await until_all_finished(env2, 10, timeout=30)
        first_parts = {env2.parts(m)[0].id: m.author.id for m in asked if env2.parts(m)}
    author_bodies = message_bodies(fake.requests[first:])
    author_unsafe = [r for r in author_bodies if unsafe_reason(r, ping_author=True)]
    author_pings = [r for r in author_bodies if r.pings is not None and r.pings.count]
    pinged = {int(r.response["id"]): r.pings.replied_user for r in author_pings if r.response}

    figures["D1"] = {
        "replies": replies,
        "message_bodies_checked": len(bodies),
        "by_route": dict(routes),
        "streaming_edits": edits,
        "continuation_parts": multi_part,
        "interactions": len(handles) + 2,
        "unsafe_payloads": len(unsafe),
        "pings": pings,
        "chat_seconds": round(chat_seconds, 1),
        "ping_author_replies": len(first_parts),
        "ping_author_unsafe": len(author_unsafe),
    }
    assert replies >= 500
    assert unsafe == [], unsafe[:5]
    assert pings == 0
    assert multi_part > 20 and edits > 20  # splits and streaming edits were exercised
    assert author_unsafe == []
    assert pinged == first_parts  # each reply's first message pings its own asker, only


# -- D2 ---------------------------------------------------------------------------------------

FAMILY = "\N{MAN}\u200d\N{WOMAN}\u200d\N{GIRL}\u200d\N{BOY}"
THUMB = "\N{THUMBS UP SIGN}\N{EMOJI MODIFIER FITZPATRICK TYPE-4}"


def prose(rng: random.Random, length: int) -> str:
    """Lines of words (some long, some CJK or emoji) cut to exactly ``length`` characters."""
    vocab = [
        "the",
        "model",
        "answers",
        "quickly",
        "réponse",
        "日本語のテキスト",
        THUMB,
        FAMILY,
        "supercalifragilistic",
        "a" * 25,
        "1234567890",
    ]
    lines, size = [], 0
    while size < length:
        line = " ".join(rng.choice(vocab) for _ in range(rng.randint(3, 14)))
        lines.append(line)
        size += len(line) + 1
    text = "\n".join(lines)[:length]
    return text[:-1] + "z" if text[-1:].isspace() else text


def code(rng: random.Random, length: int) -> str:
    out, size = [], 0
    while size < length:
        line = f"    value_number_{rng.randint(0, 999)} = compute_the_answer_{rng.randint(0, 99)}"
        out.append(line)
        size += len(line) + 1
    return "\n".join(out)[:length].rstrip() + "x"


def is_fence(line: str) -> bool:
    return line.strip().startswith("```")


def fence_count(text: str) -> int:
    return sum(1 for line in text.split("\n") if is_fence(line))


def reassemble(parts: list[str], original: str) -> bool:
    """True if the parts are ``original`` cut in order, where a part may end with a fence line
    the splitter added (``"```"`` or ``"\\n```"``) and the next part then starts with the
    reopened fence line. Backtracks over the two ways a close can have been added."""

    def match(i: int, pos: int, reopened: bool) -> bool:
        if i == len(parts):
            return pos == len(original)
        part = parts[i]
        if reopened:
            first, _, rest = part.partition("\n")
            if not is_fence(first):
                return False
            part = rest
        candidates = [(part, False)]
        if i < len(parts) - 1 and part.endswith("```"):
            candidates.append((part[:-3], True))
            if part.endswith("\n```"):
                candidates.append((part[:-4], True))
        return any(
            original.startswith(body, pos) and match(i + 1, pos + len(body), added)
            for body, added in candidates
        )

    return match(0, 0, False)


async def test_d2_lengths_unicode_and_fences_within_discords_limits(
    fake_discord, tmp_path, figures
):
    rng = random.Random(seed_for("D2"))
    fake = fake_discord
    world = await fake.basic_world()
    big = prose(rng, 20_000) + "\n```python\n" + code(rng, 20_000) + "\n```\n"
    big += prose(rng, 50_000 - len(big))
    cases: dict[str, tuple[str, float]] = {
        "empty": ("", 0),
        "one": ("a", 0),
        "1999": (prose(rng, 1999), 0),
        "2000": (prose(rng, 2000), 0),
        "2001": (prose(rng, 2001), 0),
        "10k streamed": (prose(rng, 10_000), 600),
        "50k": (big, 0),
        "zwj families, no spaces": (FAMILY * 700, 0),
        "skin tones, no spaces": (THUMB * 1500, 0),
        "cjk, no spaces": ("日本語のテキスト" * 400, 0),
        "fence opens at the cut": (prose(rng, 1990) + "\n```python\n" + code(rng, 1500), 0),
        "unclosed fence, streamed": ("```js\n" + code(rng, 5000), 400),
        "fence across cuts": ("Intro\n```py\n" + code(rng, 4500) + "\n```\nafter", 0),
    }
    assert len(cases["50k"][0]) >= 50_000
    async with (
        FakeVLLM(model="tiny", max_model_len=65536) as vllm,
        running_bot(fake, vllm, world, tmp_path / "bot.sqlite3", chat={"max_tokens": 8192}) as env,
    ):
        asked = {}
        for name, (text, rate) in cases.items():
            channel = await fake.create_channel(world.guild, name.replace(" ", "-")[:30])
            vllm.push(Script(text=text, rate=rate))
            before = vllm.attempts
            asked[name] = await fake.user_sends(
                channel, world.alice, f"say {name}", mentions_bot=True
            )
            await model_asked(vllm, before)  # one at a time: scripts map to turns
        await until_all_finished(env, len(cases), timeout=90)
        results = {name: [p.content for p in env.parts(m)] for name, m in asked.items()}

    writes = [r for r in fake.requests if r.route in MESSAGE_ROUTES]
    rejected = [(r.route, r.status, r.response) for r in writes if r.status >= 400]
    over = [
        len(r.json.get("content") or "") for r in writes if len(r.json.get("content") or "") > 2000
    ]
    mismatched, unbalanced, cut_sequences = [], [], []
    for name, (text, _) in cases.items():
        parts = results[name]
        if name == "empty":
            if parts != [
                "\N{WARNING SIGN}\N{VARIATION SELECTOR-16} The model returned an empty reply."
            ]:
                mismatched.append(name)
            continue
        if not reassemble(parts, text.rstrip()):
            mismatched.append(name)
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            expected_parity = fence_count(text) % 2 if last else 0
            if fence_count(part) % 2 != expected_parity:
                unbalanced.append((name, i))
            # only the splitter's cuts count: the model's own text may start or end anywhere
            # (prose() cuts to an exact length, sometimes inside an emoji sequence)
            starts_mid = (
                part[:1] in ("\u200d", "\ufe0f") or "\U0001f3fb" <= part[:1] <= "\U0001f3ff"
            )
            if i > 0 and starts_mid:
                cut_sequences.append((name, i))
            if not last and part.endswith("\u200d"):
                cut_sequences.append((name, i))
        if "families" in name and any(p.replace(FAMILY, "") for p in parts):
            cut_sequences.append((name, "family split"))
    figures["D2"] = {
        "cases": len(cases),
        "parts": {name: len(parts) for name, parts in results.items()},
        "message_writes": len(writes),
        "rejected_requests": len(rejected),
        "over_2000": len(over),
        "mismatched_reassembly": mismatched,
        "unbalanced_parts_added_by_splitter": len(unbalanced),
        "cut_grapheme_sequences": len(cut_sequences),
    }
    assert rejected == [] and over == []
    assert all(0 < len(p) <= DISCORD_LIMIT for parts in results.values() for p in parts)
    assert mismatched == []
    # Every part the splitter cut is balanced. The last part mirrors the model's own text: a
    # reply whose code block the model never closed ends open, as the model wrote it.
    assert unbalanced == []
    assert cut_sequences == []
    assert len(results["50k"]) >= 25 and len(results["2000"]) == 1 and len(results["2001"]) == 2
