"""The vLLM client against a scripted server on 127.0.0.1 speaking vLLM's wire format."""

import asyncio
import time

import httpx
import pytest

from bot.config import LLMConfig
from bot.llm import (
    BadResponse,
    ChatRequest,
    ContextTooLong,
    LLMClient,
    LLMTimeout,
    LLMUnavailable,
    ModelNotFound,
    ThinkFilter,
    TruncatedStream,
    make_http_client,
)
from tests.fake_vllm import FakeVLLM, Script

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


@pytest.fixture
async def fake():
    async with FakeVLLM(model="tiny", max_model_len=2048) as server:
        yield server


def _client(base_url: str, **overrides) -> tuple[LLMClient, httpx.AsyncClient]:
    config = LLMConfig(base_url=base_url, retry_backoff=0.01, **overrides)
    http = make_http_client(config)
    return LLMClient(http, config), http


@pytest.fixture
async def client(fake):
    llm, http = _client(fake.base_url, read_timeout=2.0)
    yield llm
    await http.aclose()


def _request(**kw) -> ChatRequest:
    return ChatRequest(model="tiny", messages=MESSAGES, max_tokens=kw.pop("max_tokens", 64), **kw)


async def _stream(client, request=None):
    seen: list[str] = []
    completion = await client.stream_chat(request or _request(), seen.append)
    return completion, seen


async def test_streams_text_usage_and_finish_reason(fake, client):
    # paced like a real model: each token arrives on its own and is handed over at once
    fake.push(Script(text="Hello! How can I help you today?", rate=200))
    completion, seen = await _stream(client)
    assert completion.text == "Hello! How can I help you today?"
    assert "".join(seen) == completion.text and len(seen) > 3
    assert completion.finish_reason == "stop"
    assert completion.prompt_tokens == fake.prompt_tokens(MESSAGES)
    assert completion.completion_tokens and completion.completion_tokens >= len(seen)
    assert completion.first_token_s is not None and completion.attempts == 1
    body = fake.chat_requests[0].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_text_that_arrives_together_is_handed_over_in_one_piece(fake, client):
    fake.push(Script(text="Hello! How can I help you today?"))  # one write: one read
    completion, seen = await _stream(client)
    assert seen == [completion.text] == ["Hello! How can I help you today?"]


async def test_length_finish_is_a_complete_reply(fake, client):
    fake.push(Script(tokens=40))
    completion, _ = await _stream(client, _request(max_tokens=8))
    assert completion.finish_reason == "length"


async def test_5xx_is_retried_before_the_stream_then_succeeds(fake, client):
    fake.push(Script(status=503, times=2), Script(text="finally"))
    completion, _ = await _stream(client)
    assert completion.text == "finally" and completion.attempts == 3
    assert fake.attempts == 3


async def test_5xx_forever_gives_up_after_two_retries_and_opens_the_circuit(fake):
    llm, http = _client(fake.base_url, breaker_failures=2, breaker_cooldown=30)
    fake.push(Script(status=503, times=6))
    for _ in range(2):
        with pytest.raises(LLMUnavailable) as info:
            await _stream(llm)
        assert info.value.attempts == 3
    assert fake.attempts == 6
    started = time.monotonic()
    with pytest.raises(LLMUnavailable, match="circuit open"):
        await _stream(llm)
    assert time.monotonic() - started < 0.5 and fake.attempts == 6  # failed fast, no connect
    await http.aclose()


async def test_refused_connection_is_unavailable(fake, client):
    await fake.stop_listening()
    with pytest.raises(LLMUnavailable) as info:
        await _stream(client)
    assert info.value.attempts == 3


async def test_stall_times_out_and_closes_the_connection(fake):
    llm, http = _client(fake.base_url, read_timeout=0.5)
    fake.push(Script(text="one two three four five", cut_after=2, cut="stall"))
    started = time.monotonic()
    with pytest.raises(LLMTimeout) as info:
        await _stream(llm)
    assert time.monotonic() - started < 0.5 + 2
    assert info.value.partial  # the two tokens that arrived are kept
    assert info.value.attempts == 1
    await fake.next_disconnect(within=2)
    await http.aclose()


async def test_stall_before_the_first_token_times_out(fake):
    llm, http = _client(fake.base_url, read_timeout=0.5)
    fake.push(Script(ttft=3600))
    with pytest.raises(LLMTimeout):
        await _stream(llm)
    await http.aclose()


@pytest.mark.parametrize("cut", ["rst", "fin", "clean", "done"])
async def test_cut_or_unfinished_stream_is_truncated_never_complete(fake, client, cut):
    fake.push(Script(text="alpha beta gamma delta epsilon", cut_after=3, cut=cut))
    with pytest.raises(TruncatedStream) as info:
        await _stream(client)
    assert info.value.partial and info.value.attempts == 1
    assert fake.attempts == 1  # no re-generation once tokens reached the user


@pytest.mark.parametrize("inject", ["malformed", "shape"])
async def test_malformed_chunk_is_a_bad_response(fake, client, inject):
    fake.push(Script(text="alpha beta gamma delta", inject_after=2, inject=inject))
    if inject == "shape":  # a chunk without a delta is tolerated; the reply still completes
        completion, _ = await _stream(client)
        assert completion.text == "alpha beta gamma delta"
        return
    with pytest.raises(BadResponse) as info:
        await _stream(client)
    assert info.value.partial


async def test_in_band_error_event(fake, client):
    fake.push(Script(text="alpha beta gamma", cut_after=2, cut="error"))
    with pytest.raises(BadResponse):
        await _stream(client)


async def test_context_error_is_classified_and_not_retried(fake, client):
    fake.push(Script(context_error=True))
    with pytest.raises(ContextTooLong):
        await _stream(client)
    assert fake.attempts == 1


async def test_real_overlong_prompt_gives_context_error(fake, client):
    long = [{"role": "user", "content": "word " * 5000}]
    with pytest.raises(ContextTooLong):
        await client.stream_chat(ChatRequest("tiny", long, 64), lambda _: None)


async def test_unknown_model(fake, client):
    with pytest.raises(ModelNotFound):
        await client.stream_chat(ChatRequest("nope", MESSAGES, 16), lambda _: None)


async def test_cancelling_the_turn_closes_the_connection(fake, client):
    fake.push(Script(tokens=500, rate=50))
    first = asyncio.Event()
    task = asyncio.create_task(client.stream_chat(_request(max_tokens=600), lambda _: first.set()))
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    record = await fake.next_disconnect(within=1.0)
    assert record.disconnect_after_last_byte is not None and record.disconnect_after_last_byte < 1.0


@pytest.mark.parametrize("mode", ["field", "inline"])
async def test_reasoning_is_kept_out_of_the_reply(fake, client, mode):
    fake.push(Script(text="The answer is 4.", reasoning="2+2... let me think", reasoning_mode=mode))
    completion, seen = await _stream(client)
    assert completion.text.strip() == "The answer is 4."
    assert "think" not in "".join(seen)
    assert "2+2" in completion.reasoning


async def test_reasoning_can_be_shown(fake):
    llm, http = _client(fake.base_url, show_reasoning=True)
    fake.push(Script(text="4", reasoning="hmm", reasoning_mode="inline"))
    completion, _ = await _stream(llm)
    assert "<think>" in completion.text
    await http.aclose()


async def test_models_health_and_tokenize(fake, client):
    info = await client.resolve_model()
    assert info.id == "tiny" and info.max_model_len == 2048
    assert await client.health()
    assert await client.tokenize("tiny", MESSAGES) == fake.prompt_tokens(MESSAGES)
    await fake.stop_listening()
    fresh, http = _client(fake.base_url)
    assert not await fresh.health()
    await http.aclose()


def test_think_filter_handles_tags_split_across_chunks():
    for pieces in (
        ["<th", "ink>abc</th", "ink>Hello"],
        ["  <think>", "a", "</think>", " Hi"],
        ["<think>x</think>Hi"],
    ):
        f = ThinkFilter(hide=True)
        out = "".join(f.feed(p) for p in pieces) + f.flush()
        assert out in ("Hello", "Hi")
    f = ThinkFilter(hide=True)
    assert f.feed("Use the <think> tag") + f.flush() == "Use the <think> tag"  # not at the start
    f = ThinkFilter(hide=True)
    assert f.feed("<thin") + f.flush() == "<thin"
