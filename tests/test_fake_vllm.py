"""The scripted vLLM (tests/fake_vllm) behaves as documented, seen from a plain httpx client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fake_vllm import FakeVLLM, FakeVLLMProcess, Script

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant on a Discord server."},
    {"role": "user", "content": "Hello there, how are you?"},
]


def chat(stream: bool = True, usage: bool = True, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "tiny", "messages": MESSAGES, "stream": stream, **extra}
    if stream and usage:
        body["stream_options"] = {"include_usage": True}
    return body


def events(raw: bytes) -> list[str]:
    """SSE events as vLLM frames them: `data: <payload>\\n\\n` each, nothing else."""
    assert raw.endswith(b"\n\n") or not raw
    parts = raw.decode().split("\n\n")[:-1]
    assert all(p.startswith("data: ") for p in parts), parts
    return [p[len("data: ") :] for p in parts]


def content_of(payloads: list[str]) -> str:
    chunks = [json.loads(p) for p in payloads if p != "[DONE]"]
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeVLLM]:
    async with FakeVLLM(model="tiny", max_model_len=2048) as server:
        yield server


@pytest.fixture
async def client(fake: FakeVLLM) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.base_url, timeout=5) as http:
        yield http


async def stream(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[httpx.Response, bytes]:
    async with client.stream("POST", "chat/completions", json=body) as response:
        return response, await response.aread()


# ---- endpoints and the normal stream -----------------------------------------------------------


async def test_info_endpoints(fake: FakeVLLM, client: httpx.AsyncClient) -> None:
    models = (await client.get("models")).json()
    card = models["data"][0]
    assert models["object"] == "list"
    assert (card["id"], card["object"], card["owned_by"], card["root"]) == (
        "tiny", "model", "vllm", "tiny",
    )  # fmt: skip
    assert card["max_model_len"] == 2048
    assert (await client.get(f"{fake.root_url}/health")).status_code == 200
    assert (await client.get(f"{fake.root_url}/version")).json() == {"version": "0.32.0"}
    metrics = (await client.get(f"{fake.root_url}/metrics")).text
    for name in ("num_requests_running", "num_requests_waiting", "prompt_tokens_total"):
        assert f'vllm:{name}{{engine="0",model_name="tiny"}} 0.0' in metrics


async def test_stream_wire_format(fake: FakeVLLM, client: httpx.AsyncClient) -> None:
    fake.default = Script(text="Hi! I'm fine, thanks.")
    response, raw = await stream(client, chat(max_tokens=100))
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    payloads = events(raw)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    role, *tokens, usage_chunk = chunks
    assert list(role) == [
        "id", "object", "created", "model", "choices", "prompt_token_ids", "prompt_text",
    ]  # fmt: skip
    assert role["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert {c["id"] for c in chunks} == {role["id"]}
    assert role["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "tiny" for c in chunks)
    assert [c["choices"][0]["delta"]["content"] for c in tokens] == [
        "Hi", "!", " I", "'", "m", " fine", ",", " thanks", ".", "",
    ]  # fmt: skip
    assert all(c["choices"][0]["finish_reason"] is None for c in tokens[:-1])
    last = tokens[-1]["choices"][0]
    assert (last["finish_reason"], last["stop_reason"]) == ("stop", None)
    assert usage_chunk["choices"] == []
    assert usage_chunk["system_fingerprint"] == "vllm-0.32.0-" + format(zlib.crc32(b"tiny"), "08x")
    usage = usage_chunk["usage"]
    assert list(usage) == [
        "prompt_tokens", "total_tokens", "completion_tokens", "prompt_tokens_details",
    ]  # fmt: skip
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0, "created_cache_tokens": 16}
    counted = await client.post(f"{fake.root_url}/tokenize", json=chat(stream=False))
    assert counted.json()["count"] == usage["prompt_tokens"] == fake.prompt_tokens(MESSAGES)
    assert usage["completion_tokens"] == len(tokens)  # the EOS token counts
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_stream_without_usage_and_length_finish(client: httpx.AsyncClient) -> None:
    _, raw = await stream(client, chat(usage=False, max_tokens=5))
    chunks = [json.loads(p) for p in events(raw)[:-1]]
    assert all(c["choices"] for c in chunks)
    assert "usage" not in chunks[-1]
    assert len(chunks) == 1 + 5
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"][0]["delta"]["content"] == " amet"


async def test_non_streaming(client: httpx.AsyncClient, fake: FakeVLLM) -> None:
    fake.default = Script(text="Short answer.")
    body = (await client.post("chat/completions", json=chat(stream=False))).json()
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["content"] == "Short answer."
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content", "both"])
async def test_reasoning_as_a_delta_field(field: str) -> None:
    async with FakeVLLM(reasoning_field=field) as fake, httpx.AsyncClient() as http:
        fake.default = Script(text="Yes.", reasoning="Let me think.")
        async with http.stream("POST", f"{fake.base_url}/chat/completions", json=chat()) as r:
            chunks = [json.loads(p) for p in events(await r.aread())[1:-2]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    keys = ["reasoning", "reasoning_content"] if field == "both" else [field]
    assert [list(d) for d in deltas[:4]] == [keys] * 4
    assert "".join(d[keys[0]] for d in deltas[:4]) == "Let me think."
    assert "".join(d.get("content", "") for d in deltas) == "Yes."


async def test_reasoning_inline(fake: FakeVLLM, client: httpx.AsyncClient) -> None:
    fake.default = Script(text="Yes.", reasoning="Hmm.", reasoning_mode="inline")
    _, raw = await stream(client, chat())
    assert content_of(events(raw)) == "<think>Hmm.</think>Yes."


async def test_prefix_cache_and_metrics(fake: FakeVLLM, client: httpx.AsyncClient) -> None:
    long_history = [{"role": "user", "content": " ".join(["word"] * 200)}]
    first = await client.post("chat/completions", json=chat(stream=False, messages=long_history))
    follow_up = [*long_history, {"role": "assistant", "content": "ok"}, MESSAGES[1]]
    _, raw = await stream(client, chat(messages=follow_up))
    usage = json.loads(events(raw)[-2])["usage"]
    assert first.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    assert cached % 16 == 0
    assert 200 <= cached < usage["prompt_tokens"]
    metrics = (await client.get(f"{fake.root_url}/metrics")).text
    assert (
        f'vllm:prefix_cache_hits_total{{engine="0",model_name="tiny"}} {float(cached)}' in metrics
    )
    assert fake.chat_requests[1].cached_tokens == cached


# ---- errors ----------------------------------------------------------------------------------


async def test_unknown_model_nested_and_flat() -> None:
    message = "The model `gpt-4` does not exist. Valid aliases: tiny."
    info = {"message": message, "type": "NotFoundError", "param": "model", "code": 404}
    for shape, expected in [("nested", {"error": info}), ("flat", {"object": "error", **info})]:
        async with FakeVLLM(error_shape=shape) as fake, httpx.AsyncClient() as http:
            r = await http.post(f"{fake.base_url}/chat/completions", json=chat(model="gpt-4"))
        assert (r.status_code, r.json()) == (404, expected)
        assert r.headers["content-type"] == "application/json"


def user_turn(tokens: int) -> list[dict[str, str]]:
    """One user message whose prompt is `tokens` + 8 (the ChatML framing) tokens."""
    return [{"role": "user", "content": " ".join(["hi"] * tokens)}]


@pytest.mark.parametrize(
    ("style", "words", "max_tokens", "param", "wording"),
    [
        ("current", 2041, 8, "input_tokens", "your prompt contains at least 2049 input tokens"),
        ("current", 10, 3000, "max_tokens", "max_tokens=3000 cannot be greater than max_model"),
        ("current", 2040, None, "max_tokens", "max_tokens must be at least 1, got 0."),
        ("validate", 2040, None, "input_tokens", "However, your request has 2048 input tokens"),
        ("validate", 1500, 1000, "max_tokens", "'max_tokens' or 'max_completion_tokens' is too"),
        ("legacy", 2040, None, None, "you requested 2048 tokens in the messages"),
        ("legacy", 2000, 100, None, "(2008 in the messages, 100 in the completion)"),
    ],
)
async def test_context_errors(
    style: str, words: int, max_tokens: int | None, param: str | None, wording: str
) -> None:
    async with FakeVLLM(max_model_len=2048, context_style=style) as fake, httpx.AsyncClient() as h:
        body = chat(messages=user_turn(words), max_tokens=max_tokens)
        r = await h.post(f"{fake.base_url}/chat/completions", json=body)
    error = r.json()["error"]
    assert (r.status_code, error["type"], error["param"], error["code"]) == (
        400, "BadRequestError", param, 400,
    )  # fmt: skip
    assert wording in error["message"]


async def test_max_tokens_is_clamped_to_the_room_left(client: httpx.AsyncClient) -> None:
    body = chat(stream=False, messages=user_turn(2030), max_tokens=100)  # 2038 + 100 > 2048
    r = await client.post("chat/completions", json=body)
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert r.json()["usage"]["completion_tokens"] == 2048 - 2038


async def test_tokenize_counts_too_long_prompts_and_scripted_context_error(
    fake: FakeVLLM, client: httpx.AsyncClient
) -> None:
    too_long = {"messages": user_turn(3000)}
    r = await client.post(f"{fake.root_url}/tokenize", json=too_long)
    assert r.json()["count"] == 3008
    fake.push(Script(context_error=True))
    r = await client.post("chat/completions", json=chat())
    assert (r.status_code, r.json()["error"]["param"]) == (400, "input_tokens")


async def test_failures_then_success(fake: FakeVLLM, client: httpx.AsyncClient) -> None:
    fake.push(Script(status=503, times=2), Script(status=502, body="html"), Script(status=500))
    r1, r2, r3, r4, r5 = [await client.post("chat/completions", json=chat()) for _ in range(5)]
    assert [r.status_code for r in (r1, r2, r3, r4, r5)] == [503, 503, 502, 500, 200]
    assert r1.json()["error"]["type"] == "Service Unavailable"
    assert r3.headers["content-type"] == "text/html"
    assert "502 Bad Gateway" in r3.text
    assert r4.json()["error"]["type"] == "InternalServerError"
    assert fake.attempts == 5
    assert [r.status for r in fake.chat_requests] == [
        503,
        503,
        502,
        500,
        200,
    ]


# ---- timing and faults in the stream -------------------------------------------------------


async def test_rate_and_ttft(fake: FakeVLLM, client: httpx.AsyncClient) -> None:
    fake.default = Script(tokens=10, rate=50, ttft=0.2)
    started = time.monotonic()
    arrivals: list[float] = []
    async with client.stream("POST", "chat/completions", json=chat()) as response:
        async for _ in response.aiter_lines():
            arrivals.append(time.monotonic() - started)
    rec = fake.chat_requests[0]
    assert rec.first_byte_at is not None
    assert rec.last_byte_at is not None
    assert 0.2 <= rec.first_byte_at - rec.received_at < 1.0
    assert 0.2 <= rec.last_byte_at - rec.first_byte_at < 1.0  # 11 tokens at 50/s
    assert arrivals[-1] >= 0.4


@pytest.mark.parametrize(
    ("cut", "error", "last_event"),
    [
        ("rst", httpx.ReadError, None),
        ("fin", httpx.RemoteProtocolError, None),
        ("clean", None, "token"),
        ("done", None, "[DONE]"),
        ("error", None, "[DONE]"),
    ],
)
async def test_cut_streams(
    fake: FakeVLLM,
    client: httpx.AsyncClient,
    cut: str,
    error: type[Exception] | None,
    last_event: str | None,
) -> None:
    fake.default = Script(cut_after=3, cut=cut)  # type: ignore[arg-type]
    raw = b""
    with pytest.raises(error) if error else contextlib.nullcontext():
        async with client.stream("POST", "chat/completions", json=chat()) as response:
            async for piece in response.aiter_raw():
                raw += piece
    payloads = events(raw)
    assert content_of(payloads) == "lorem ipsum dolor"
    assert '"finish_reason":"' not in raw.decode()
    if last_event == "[DONE]":
        assert payloads[-1] == "[DONE]"
    if cut == "error":
        assert payloads[-2] == (
            '{"error": {"message": "Internal server error", "type": "InternalServerError",'
            ' "param": null, "code": 500}}'
        )
    assert fake.chat_requests[0].outcome == f"cut:{cut}"
    assert not fake.disconnects


async def test_faults_before_the_response(fake: FakeVLLM, client: httpx.AsyncClient) -> None:
    fake.push(Script(cut_after=-1, cut="rst"), Script(cut_after=-1, cut="fin"))
    with pytest.raises(httpx.ReadError):
        await client.post("chat/completions", json=chat())
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        await client.post("chat/completions", json=chat())
    fake.push(Script(cut_after=2, cut="error"))
    r = await client.post("chat/completions", json=chat(stream=False))
    assert (r.status_code, r.json()["error"]["type"]) == (500, "InternalServerError")


async def test_prefill_time_grows_with_uncached_tokens() -> None:
    async with FakeVLLM(prefill_tps=1000) as fake, httpx.AsyncClient() as http:
        body = chat(messages=user_turn(200))
        for _ in range(2):  # the second prompt is (mostly) a prefix-cache hit
            async with http.stream("POST", f"{fake.base_url}/chat/completions", json=body) as r:
                await r.aread()
    first, second = (r.first_byte_at - r.received_at for r in fake.chat_requests)  # type: ignore[operator]
    assert first >= 0.2
    assert second < 0.1


async def test_malformed_and_odd_chunks(fake: FakeVLLM, client: httpx.AsyncClient) -> None:
    fake.push(Script(inject_after=2), Script(inject_after=0, inject="shape"))
    _, raw = await stream(client, chat())
    bad = events(raw)[3]
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad)
    _, raw = await stream(client, chat())
    odd = json.loads(events(raw)[1])
    assert odd["choices"] == [{"index": 0, "logprobs": None, "finish_reason": None}]


async def test_refused_connection(fake: FakeVLLM, client: httpx.AsyncClient) -> None:
    port = fake.port
    await fake.stop_listening()
    with pytest.raises(httpx.ConnectError):
        await client.get("models")
    await fake.resume_listening()
    assert fake.port == port
    assert (await client.get("models")).status_code == 200


# ---- instrumentation: disconnects, in-flight, overload --------------------------------------


async def test_client_closing_mid_stream_is_recorded(
    fake: FakeVLLM, client: httpx.AsyncClient
) -> None:
    fake.default = Script(tokens=100, rate=50)
    received = 0
    async with client.stream("POST", "chat/completions", json=chat()) as response:
        async for line in response.aiter_lines():
            received += line.startswith("data: ")
            if received == 4:  # the role chunk and 3 tokens
                break
    closed_at = time.monotonic()  # leaving `async with` closed the response
    rec = await fake.next_disconnect(within=1.0)
    assert rec.outcome == "disconnected"
    assert rec is fake.chat_requests[0]
    assert rec.disconnected_at is not None
    assert rec.disconnected_at - closed_at < 1.0
    assert rec.disconnect_after_last_byte is not None
    assert 0 <= rec.disconnect_after_last_byte < 0.5
    assert 3 <= rec.sent_tokens < 100
    await asyncio.sleep(0.1)
    assert fake.in_flight == 0
    assert fake.max_in_flight == 1


async def test_stall_then_client_timeout_is_a_disconnect(fake: FakeVLLM) -> None:
    fake.default = Script(cut_after=2, cut="stall")
    async with httpx.AsyncClient(base_url=fake.base_url, timeout=httpx.Timeout(5, read=0.3)) as c:
        with pytest.raises(httpx.ReadTimeout):
            await stream(c, chat())
    rec = await fake.next_disconnect(within=1.0)
    assert rec.sent_tokens == 2
    assert rec.disconnect_after_last_byte is not None
    assert 0.3 <= rec.disconnect_after_last_byte < 1


async def test_overload_queues_with_growing_ttft() -> None:
    async with FakeVLLM(max_running=2) as fake, httpx.AsyncClient(timeout=10) as http:
        fake.default = Script(tokens=9, rate=100)  # ~0.1 s a request

        async def one() -> None:
            async with http.stream("POST", f"{fake.base_url}/chat/completions", json=chat()) as r:
                await r.aread()

        tasks = [asyncio.create_task(one()) for _ in range(6)]
        await asyncio.sleep(0.05)
        metrics = (await http.get(f"{fake.root_url}/metrics")).text
        await asyncio.gather(*tasks)
    assert 'vllm:num_requests_running{engine="0",model_name="tiny"} 2.0' in metrics
    assert 'vllm:num_requests_waiting{engine="0",model_name="tiny"} 4.0' in metrics
    assert fake.max_in_flight == 6
    ttfts = sorted(r.first_byte_at - r.received_at for r in fake.chat_requests)  # type: ignore[operator]
    assert ttfts[-1] > ttfts[0] + 0.15  # the last two waited for two rounds


async def test_requests_are_recorded(fake: FakeVLLM, client: httpx.AsyncClient) -> None:
    await client.post("chat/completions", json=chat(stream=False), headers={"X-Turn": "7"})
    rec = fake.requests[-1]
    assert (rec.method, rec.path, rec.status, rec.outcome) == (
        "POST", "/v1/chat/completions", 200, "completed",
    )  # fmt: skip
    assert rec.headers["X-Turn"] == "7"
    assert rec.body["messages"] == MESSAGES
    assert rec.prompt_tokens == fake.prompt_tokens(MESSAGES)


# ---- byte for byte against the real vLLM 0.32.0 ----------------------------------------------

SAMPLES = Path(__file__).parent / "real_vllm" / "wire_samples"
_VOLATILE = [  # values that differ on every run, or with the model's tokenizer and weights
    (re.compile(r"^date: .*$", re.MULTILINE), "date: D"),
    (re.compile(r"^content-length: \d+$", re.MULTILINE), "content-length: N"),
    (re.compile(r'"(chatcmpl|modelperm)-[0-9a-f]{16}"'), r'"\1-ID"'),
    (re.compile(r'"created":\d+'), '"created":T'),
    (re.compile(r'"root":"[^"]*"'), '"root":R'),
    (re.compile(r"vllm-0\.32\.0-[0-9a-f]{8}"), "vllm-0.32.0-HASH"),
    (re.compile(r'"(content|reasoning)":"(?:[^"\\]|\\.)*"'), r'"\1":S'),
    (re.compile(r'"tokens":\[[\d,]*\]'), '"tokens":L'),
    (re.compile(r'"(prompt_tokens|total_tokens|completion_tokens|count)":\d+'), r'"\1":N'),
    (re.compile(r"\} \d+\.\d+$", re.MULTILINE), "} V"),  # metric values
]


def normalised(raw: bytes) -> list[str]:
    """A sample's head and body, volatile values masked, repeated token chunks collapsed."""
    head, _, body = raw.decode().partition("\r\n\r\n")
    status, *fields = head.split("\r\n")  # aiohttp writes `Transfer-Encoding` capitalised
    parts = [status] + [n.lower() + ":" + v for n, _, v in (f.partition(":") for f in fields)]
    parts += body.split("\n\n") if body.startswith("data: ") else [body]
    out: list[str] = []
    for part in parts:
        for pattern, replacement in _VOLATILE:
            part = pattern.sub(replacement, part)
        if not out or out[-1] != part:
            out.append(part)
    return out


def http_chunks(wire: bytes) -> list[bytes]:
    body = wire.partition(b"\r\n\r\n")[2]
    chunks = []
    while (size := int(body[: body.index(b"\r\n")], 16)) > 0:
        start = body.index(b"\r\n") + 2
        chunks.append(body[start : start + size])
        body = body[start + size + 2 :]
    return chunks


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="no samples from tests/real_vllm/record_wire")
async def test_matches_the_real_vllm_samples(tmp_path: Path) -> None:
    from tests.real_vllm.record_wire import record  # the recorder that made the samples
    from tests.real_vllm.server import VllmEndpoint

    async with FakeVLLM(model="tiny-chatml", max_model_len=2048, block_size=128) as fake:
        endpoint = VllmEndpoint(fake.root_url, "tiny-chatml", 2048)
        await asyncio.to_thread(record, endpoint, tmp_path)
    for real in sorted(SAMPLES.glob("*.http")):
        mine = (tmp_path / real.name).read_bytes()
        assert normalised(mine) == normalised(real.read_bytes()), real.name
    for real in sorted(SAMPLES.glob("*.wire")):  # one HTTP chunk per SSE event, as uvicorn
        for sample in (real.read_bytes(), (tmp_path / real.name).read_bytes()):
            assert all(
                c.startswith(b"data: ") and c.count(b"\n\n") == 1 for c in http_chunks(sample)
            )
    real_metrics = normalised((SAMPLES / "metrics_excerpt.txt").read_bytes())
    mine_metrics = normalised((tmp_path / "metrics_excerpt.txt").read_bytes())
    assert mine_metrics[:6] == real_metrics[:6]  # the status line and headers
    real_lines = real_metrics[6].splitlines()
    assert [ln for ln in real_lines if "cache_config_info" not in ln] == mine_metrics[
        6
    ].splitlines()


# ---- as a separate process --------------------------------------------------------------------


async def test_subprocess_mode(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"server": {"model": "m"}, "queue": [{"status": 503}]}))
    args = ("--script", str(script), "--max-model-len", "512", "--text", "Hello world")
    async with FakeVLLMProcess(*args) as proc, httpx.AsyncClient(timeout=5) as http:
        url = f"{proc.base_url}/chat/completions"
        body = chat(model="m", usage=False)
        first = await http.post(url, json=body)
        assert first.status_code == 503
        async with http.stream("POST", url, json=body) as response:
            assert content_of(events(await response.aread())) == "Hello world"
        assert (await http.get(f"{proc.base_url}/models")).json()["data"][0]["max_model_len"] == 512

        await proc.push(Script(tokens=100, rate=50))
        async with http.stream("POST", url, json=body) as response:
            await anext(response.aiter_lines())
        disconnect = await proc.next_disconnect(within=1.0)
        assert disconnect["outcome"] == "disconnected"
        assert disconnect["disconnect_after_last_byte"] < 1.0

        await proc.stop_listening(seconds=0.3)
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{proc.base_url}/models")
        await asyncio.sleep(0.5)
        assert (await http.get(f"{proc.base_url}/models")).status_code == 200
        stats = await proc.stats()
    assert stats["attempts"] == 3
    assert stats["max_in_flight"] == 1
