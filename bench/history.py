"""Figure 2: the bookkeeping of one turn (store, load, count, trim) against the session's length.

One turn's bookkeeping is what the engine does around the model call, through the bot's own
``Store`` (aiosqlite, WAL, synchronous=FULL) and trimming: count the new message, store it,
load the context from the session's stable start, sum the stored token counts, plan the trim
(moving the start when over budget), create the reply row and store the outcome.

Sessions of 10 messages against one of 10,000 (seeded in the bot's schema; the long one's
context start is where the bot's own trimming would have left it). The baseline is the same
turn with the history re-counted each time, as token-buffer memories do (LangChain's
ConversationTokenBufferMemory re-tokenises its whole buffer on every save). The budget is the
context of an 8k model (8,192 tokens for the history), where facts.md puts that re-count at
1.4-2.2 ms.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Row, median, ratio
from bench.corpus import TextPool, create_schema, seed_sessions
from bot.config import DEFAULT_SYSTEM_PROMPT, LLMConfig
from bot.models import Incoming, Kind, ReplyRecord, Scope, Status
from bot.store import Store
from bot.tokens import TokenCounter, load_encoding
from bot.trimming import Budget, message_cost, plan_context, user_cost

BUDGET = Budget(max_model_len=8192 + 512 + 64, max_tokens=512, margin=64)  # 8,192 for history
WATERMARK = LLMConfig().low_watermark  # the bot's default
SHORT_TURNS, LONG_TURNS = 5, 5000  # 10 and 10,000 messages


@dataclass
class Case:
    name: str
    scopes: list[Scope]  # one per measured turn (short sessions stay short), or the same one
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    context_tokens: list[int] = field(default_factory=list)


class Bookkeeper:
    def __init__(self, store: Store, counter: TokenCounter, pool: TextPool) -> None:
        self.store = store
        self.counter = counter
        self.pool = pool
        self.system = message_cost(counter.count(DEFAULT_SYSTEM_PROMPT))
        self.discord_ids = itertools.count(9_000_000_000)

    async def turn(self, scope: Scope, *, recount: bool) -> int:
        """One turn's bookkeeping; returns the context's tokens."""
        store, counter = self.store, self.counter
        asked, _ = self.pool.draw()
        tokens = counter.count(asked)
        session = await store.current_session(scope)
        incoming = Incoming(scope, asked, scope.user_id, "someone", next(self.discord_ids))
        user_id = await store.add_user_message(session.id, incoming, tokens)
        assert user_id is not None
        turns = await store.load_context(session.id, session.context_start_id)
        if recount:  # the baseline: every message of the window tokenised again
            costs = [
                user_cost(counter.count(t.user_text)) + message_cost(counter.count(t.reply_text))
                for t in turns
            ]
        else:  # the bot: counted once when stored
            costs = [user_cost(t.user_tokens) + message_cost(t.reply_tokens) for t in turns]
        plan = plan_context(self.system, costs, user_cost(tokens), BUDGET, WATERMARK)
        if plan.trimmed:
            start = turns[plan.start].user_id if plan.start < len(turns) else user_id
            await store.set_context_start(session.id, start)
        reply_id = await store.start_reply(
            session.id,
            user_id,
            model="tiny",
            system_prompt_id=await store.system_prompt_id(DEFAULT_SYSTEM_PROMPT),
            temperature=0.7,
            top_p=1.0,
            max_tokens=512,
        )
        answer, _ = self.pool.draw()
        record = ReplyRecord(Status.DONE, answer, counter.count(answer), finish_reason="stop")
        await store.finish_turn(user_id, reply_id, record)
        return plan.estimate


def _replay_trimming(path: Path, session_id: int) -> int:
    """The context start the bot's trimming leaves after a session's whole history."""
    import sqlite3

    con = sqlite3.connect(path)
    rows = con.execute(
        "SELECT u.id, u.tokens, a.tokens FROM messages u JOIN messages a ON a.reply_to = u.id"
        " WHERE u.session_id = ? ORDER BY u.id",
        (session_id,),
    ).fetchall()
    system = message_cost(40)
    start = 0
    for i in range(1, len(rows)):
        costs = [user_cost(u) + message_cost(a) for _, u, a in rows[start:i]]
        plan = plan_context(system, costs, user_cost(rows[i][1]), BUDGET, WATERMARK)
        start += plan.start
    con.execute(
        "UPDATE sessions SET context_start_id = ? WHERE id = ?", (rows[start][0], session_id)
    )
    con.commit()
    con.close()
    return start


async def measure(workdir: Path, turns: int = 150) -> dict[str, Case]:
    counter = TokenCounter(load_encoding("cl100k_base", workdir / ".tiktoken"))
    pool = TextPool(counter, seed=2)
    path = workdir / "history.sqlite3"
    con = create_schema(path)
    short = seed_sessions(con, pool, sessions=2 * turns, turns=SHORT_TURNS, first_session=1)
    long = seed_sessions(
        con, pool, sessions=2, turns=LONG_TURNS, first_session=100_000, first_message=short.next_id
    )
    con.close()
    for sid in long.sessions:
        _replay_trimming(path, sid)

    def scope(sid: int) -> Scope:
        return Scope(Kind.CHANNEL, str(sid), 1, sid)

    cases = {
        "bot-10": Case("bot, 10 messages", [scope(s) for s in short.sessions[:turns]]),
        "bot-10000": Case("bot, 10,000 messages", [scope(long.sessions[0])] * turns),
        "recount-10": Case("re-count, 10 messages", [scope(s) for s in short.sessions[turns:]]),
        "recount-10000": Case("re-count, 10,000 messages", [scope(long.sessions[1])] * turns),
    }
    store = await Store.open(path)
    try:
        keeper = Bookkeeper(store, counter, pool)
        order = list(cases)
        for i in range(turns):
            for key in order[i % 4 :] + order[: i % 4]:  # rotate, so no case always goes first
                case = cases[key]
                c0, t0 = time.process_time(), time.perf_counter()
                tokens = await keeper.turn(case.scopes[i], recount=key.startswith("recount"))
                case.seconds.append(time.perf_counter() - t0)
                case.cpu.append(time.process_time() - c0)
                case.context_tokens.append(tokens)
    finally:
        await store.close()
    return cases


def rows(cases: dict[str, Case]) -> list[Row]:
    def med(key: str) -> float:
        return median(cases[key].seconds)

    bot10, bot10k, re10, re10k = (
        med(k) for k in ("bot-10", "bot-10000", "recount-10", "recount-10000")
    )
    bot_ratio, re_ratio = bot10k / bot10, re10k / re10
    window = median(cases["bot-10000"].context_tokens)
    data = {
        key: {
            "median_ms": round(median(c.seconds) * 1000, 3),
            "cpu_median_ms": round(median(c.cpu) * 1000, 3),
            "context_tokens_median": median(c.context_tokens),
            "turns": len(c.seconds),
        }
        for key, c in cases.items()
    }
    return [
        Row("2", "bookkeeping per turn, 10 messages", f"{bot10 * 1000:.2f} ms",
            f"{re10 * 1000:.2f} ms", ratio(bot10, re10), data=data),
        Row("2", "bookkeeping per turn, 10,000 messages", f"{bot10k * 1000:.2f} ms",
            f"{re10k * 1000:.2f} ms", ratio(bot10k, re10k),
            note=f"the long session's context holds a median {window:.0f} tokens (8,192 budget);"
            " the baseline re-counts it with tiktoken every turn, the bot sums stored counts"),
        Row("2", "cost ratio 10,000 / 10 messages", f"{bot_ratio:.2f}", f"{re_ratio:.2f}", "",
            "<= 1.2", bot_ratio <= 1.2),
    ]  # fmt: skip
