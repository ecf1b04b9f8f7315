"""R2: reaction scores on replies from before a restart, with replayed and duplicated events,
against a model of the documented rule computed from the events Discord sent."""

from __future__ import annotations

import os
import random
from typing import Any

from tests.discord_server import payloads
from tests.discord_server.model import emoji_key, parse_emoji
from tests.fake_vllm import FakeVLLM, Script
from tests.harness import running_bot

UP, DOWN = "\N{THUMBS UP SIGN}", "\N{THUMBS DOWN SIGN}"
TONED_UP = UP + "\N{EMOJI MODIFIER FITZPATRICK TYPE-4}"
TONED_DOWN = DOWN + "\N{EMOJI MODIFIER FITZPATRICK TYPE-6}"
EMOJIS = {UP: 1, DOWN: -1, TONED_UP: 1, TONED_DOWN: -1, "\N{PARTY POPPER}": 0, "up:4242": 0}


def seed_for(name: str) -> int:
    seed = int(os.environ.get("RELIABILITY_SEED") or random.randrange(1 << 30))
    print(f"{name}: seed {seed} (rerun with RELIABILITY_SEED={seed})")
    return seed


class Truth:
    """The documented rule (README, bot/cogs/feedback.py), applied to the events as Discord
    sends them: a user's score for a reply is the thumb they added last among those still
    showing on any message of the reply (none left: no score); bots are ignored.

    ``scores`` follows the events one by one; ``visible()`` recomputes the same from what each
    user visibly has, as an independent check of the model itself."""

    def __init__(self, reply_of: dict[int, int], bots: set[int]) -> None:
        self.reply_of = reply_of  # Discord message id of a part -> reply row id
        self.bots = bots
        self.present: set[tuple[int, str, int]] = set()  # (message, emoji key, user)
        self.scores: dict[tuple[int, int], int] = {}  # (reply, user) -> score
        self.order: dict[tuple[int, str, int], int] = {}
        self.clock = 0
        self.events = 0

    def apply(self, user: int, message: int, emoji: str, add: bool) -> bool:
        """Returns whether Discord sends an event (it does only when the state changes)."""
        key = (message, emoji_key(parse_emoji(emoji)), user)
        if add == (key in self.present):
            return False
        self.events += 1
        self.clock += 1
        if add:
            self.present.add(key)
            self.order[key] = self.clock
        else:
            self.present.discard(key)
        score = EMOJIS[emoji]
        reply = self.reply_of.get(message)
        if reply is None or not score or user in self.bots:
            return True
        latest = self.visible().get((reply, user))
        if latest is None:
            self.scores.pop((reply, user), None)
        else:
            self.scores[(reply, user)] = latest
        return True

    def visible(self) -> dict[tuple[int, int], int]:
        """Score by the user's latest thumb still on the reply."""
        latest: dict[tuple[int, int], tuple[int, int]] = {}
        for message, key, user in self.present:
            reply = self.reply_of.get(message)
            score = next((s for e, s in EMOJIS.items() if emoji_key(parse_emoji(e)) == key), 0)
            if reply is None or not score or user in self.bots:
                continue
            at = self.order[(message, key, user)]
            if (reply, user) not in latest or latest[(reply, user)][0] < at:
                latest[(reply, user)] = (at, score)
        return {k: s for k, (_, s) in latest.items()}


async def test_r2_scores_match_the_events_across_restarts_and_replays(
    fake_discord, tmp_path, figures
):
    rng = random.Random(seed_for("R2"))
    fake = fake_discord
    w = await fake.basic_world()
    raters = [w.alice, w.bob] + [await fake.create_user(f"rater{i}") for i in range(4)]
    for u in raters[2:]:
        await fake.add_member(w.guild, u)
    other_bot = await fake.create_user("OtherBot", bot=True)
    await fake.add_member(w.guild, other_bot)
    db = tmp_path / "bot.sqlite3"
    async with FakeVLLM(model="tiny", max_model_len=8192) as vllm:
        # Replies made by one bot process: two of them span several messages, one is a DM.
        vllm.push(
            *[Script(text="word " * (700 if i in (1, 4) else 5) + f"reply {i}") for i in range(7)]
        )
        asked = []
        async with running_bot(fake, vllm, w, db) as env:
            for i in range(6):
                msg = await fake.user_sends(
                    w.channel, raters[i], f"question {i}", mentions_bot=True
                )
                await env.reply_to(msg)
                asked.append(msg)
            dm = await fake.user_dms(w.alice, "private question")
            await env.reply_to(dm)
            parts = env.rows("SELECT discord_message_id, message_id FROM reply_parts")
        reply_of = {int(m): int(r) for m, r in parts}
        messages = [fake.world.messages[m] for m in reply_of]
        dm_parts = [m for m in messages if m.guild_id is None]
        truth = Truth(reply_of, {fake.bot.id, other_bot.id})
        sent_events = 0
        duplicates = 0

        async def act(
            user: Any, msg: Any, emoji: str, add: bool, *, duplicate: bool = False
        ) -> None:
            nonlocal sent_events, duplicates
            sent = truth.apply(user.id, msg.id, emoji, add)
            sent_events += sent
            await fake.react(user, msg, emoji, add=add)
            if sent and duplicate:  # at-least-once delivery: the same event once more
                duplicates += 1
                event = "MESSAGE_REACTION_ADD" if add else "MESSAGE_REACTION_REMOVE"
                await fake.gateway.dispatch(
                    event,
                    payloads.reaction_event(msg, user.id, parse_emoji(emoji), fake.world, add=add),
                )

        def random_op() -> tuple[Any, Any, str, bool]:
            msg = rng.choice([*messages, asked[0]])  # now and then a user's own message
            user = w.alice if msg in dm_parts else rng.choice(raters)
            return user, msg, rng.choice(list(EMOJIS)), rng.random() < 0.6

        def stored(env: Any) -> dict[tuple[int, int], int]:
            return {
                (r, u): s for r, u, s in env.rows("SELECT message_id, user_id, score FROM feedback")
            }

        checks = []
        # Two more bot processes on the same database: nothing of the first is cached.
        for generation in range(2):
            async with running_bot(fake, vllm, w, db) as env:
                for step in range(60):
                    user, msg, emoji, add = random_op()
                    await act(user, msg, emoji, add, duplicate=step % 7 == 0)
                # the bot's own reactions and another bot's count for nothing
                for bot_user in (fake.bot, other_bot):
                    await act(bot_user, rng.choice(messages[:3]), UP, True)
                # events while the socket is down are replayed after RESUME
                await fake.drop_gateway()
                for _ in range(15):
                    await act(*random_op())
                await fake.wait_for_resume(generation + 1, timeout=15)
                for _ in range(15):
                    await act(*random_op())
                await fake.wait_until(lambda: stored(env) == truth.scores, 5, "scores to settle")
                checks.append(stored(env) == truth.scores)
                table = stored(env)
                rows = env.rows(
                    "SELECT count(*), count(DISTINCT message_id || ':' || user_id) FROM feedback"
                )[0]
    visible = truth.visible()
    differs = {k for k in set(visible) | set(table) if visible.get(k) != table.get(k)}
    figures["R2"] = {
        "replies": len(set(reply_of.values())),
        "reply_messages": len(messages),
        "reaction_events": sent_events,
        "duplicated_events": duplicates,
        "replayed_events": fake.gateway.replayed,
        "restarts": 2,
        "scores": len(table),
        "score_table_equals_truth": all(checks),
        "duplicate_rows": rows[0] - rows[1],
        "bot_scores": sum(1 for (_, u) in table if u in (fake.bot.id, other_bot.id)),
        # the stored scores against what users visibly have on the replies
        "differs_from_visible_reactions": len(differs),
    }
    assert all(checks)
    assert not differs
    assert rows[0] == rows[1]
    assert fake.gateway.replayed >= 5  # the drop really made events replay (count varies by seed)
