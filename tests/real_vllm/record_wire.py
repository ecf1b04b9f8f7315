"""Record exact wire-format samples from the real vLLM into tests/real_vllm/wire_samples/.

    python -m tests.real_vllm.record_wire                    # starts its own server (~35 s)
    python -m tests.real_vllm.record_wire --root-url http://127.0.0.1:8000

Each request is sent over a raw socket and the response is stored byte for byte:

- `NAME.http`: the response as an HTTP/1.1 client sees it after undoing the transfer encoding:
  status line, headers and the blank line exactly as sent (CRLF), then the body bytes. For a
  chunked (streaming) response the `transfer-encoding: chunked` header is kept and the body is
  the concatenation of the chunk payloads.
- `NAME.wire` (streaming responses only): the bytes exactly as they crossed the socket, chunk-size
  lines included, which shows how vLLM flushes SSE events into HTTP chunks.
- `requests.json`: the request that produced each sample.

Values that change on every run: the `date` header, `id`s (`chatcmpl-<16 hex>`), `created`
timestamps, `modelperm-` ids, the model `root` path and the generated text itself.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .server import VllmEndpoint, running_server

OUT_DIR = Path(__file__).with_name("wire_samples")


class Response:
    def __init__(self, head: bytes, body: bytes, wire: bytes) -> None:
        self.head = head  # status line + headers + CRLF CRLF
        self.body = body  # de-chunked
        self.wire = wire  # exactly as received
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {
            k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)
        }

    def json(self) -> Any:
        return json.loads(self.body)


def _read_exact(sock: socket.socket, buf: bytearray, n: int) -> bytes:
    while len(buf) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed early")
        buf.extend(chunk)
    out = bytes(buf[:n])
    del buf[:n]
    return out


def _read_until(sock: socket.socket, buf: bytearray, marker: bytes) -> bytes:
    while marker not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed early")
        buf.extend(chunk)
    end = buf.index(marker) + len(marker)
    out = bytes(buf[:end])
    del buf[:end]
    return out


def raw_request(root_url: str, method: str, path: str, body: Any = None) -> Response:
    url = urlsplit(root_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    payload = json.dumps(body).encode() if body is not None else b""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: */*"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.sendall(request)
        buf = bytearray()
        head = _read_until(sock, buf, b"\r\n\r\n")
        wire = bytearray(head)
        headers = Response(head, b"", b"").headers
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body_out = bytearray()
            while True:
                size_line = _read_until(sock, buf, b"\r\n")
                wire += size_line
                size = int(size_line.split(b";")[0], 16)
                data = _read_exact(sock, buf, size + 2)  # payload + CRLF
                wire += data
                if size == 0:
                    break  # no trailers from uvicorn: the zero chunk ends with CRLF CRLF
                body_out += data[:-2]
            return Response(head, bytes(body_out), bytes(wire))
        length = int(headers.get("content-length", "0"))
        data = _read_exact(sock, buf, length)
        return Response(head, data, bytes(wire) + data)


def load_sample(name: str, directory: Path = OUT_DIR) -> Response:
    """A recorded `.http` sample, parsed (body de-chunked)."""
    raw = (directory / f"{name}.http").read_bytes()
    head, _, body = raw.partition(b"\r\n\r\n")
    return Response(head + b"\r\n\r\n", body, raw)


def json_shape(value: Any) -> Any:
    """Keys and value types, recursively (a list by its first item): what must match between
    two responses whose ids, timestamps and text differ."""
    if isinstance(value, dict):
        return {k: json_shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_shape(value[0])] if value else []
    return type(value).__name__


def body_shape(response: Response) -> Any:
    """json_shape of a JSON body; for an SSE body, the list of event shapes with consecutive
    repeats collapsed (so 3 content chunks and 8 content chunks compare equal)."""
    if not response.headers.get("content-type", "").startswith("text/event-stream"):
        return json_shape(json.loads(response.body)) if response.body else None
    events: list[Any] = []
    for event in response.body.decode().split("\n\n")[:-1]:
        payload = event.removeprefix("data: ")
        shape = payload if payload == "[DONE]" else json_shape(json.loads(payload))
        if not events or events[-1] != shape:
            events.append(shape)
    return events


def head_shape(response: Response) -> list[tuple[str, str]]:
    """Header names in order, with the values that must match exactly (not date/length)."""
    volatile = {"date", "content-length"}
    return [(k, "*" if k in volatile else v) for k, v in response.headers.items()]


def chat(ep: VllmEndpoint, content: str, **extra: Any) -> dict[str, Any]:
    return {"model": ep.model, "messages": [{"role": "user", "content": content}], **extra}


def find_stop_seed(ep: VllmEndpoint) -> int:
    """A sampling seed whose reply ends on its own with the EOS token, in a short reply."""
    for seed in range(500):
        r = raw_request(
            ep.root_url,
            "POST",
            "/v1/chat/completions",
            chat(ep, "Say hi.", max_tokens=24, temperature=1.0, seed=seed),
        )
        choice = r.json()["choices"][0]
        if choice["finish_reason"] == "stop" and choice.get("stop_reason") is None:
            return seed
    raise RuntimeError("no seed in 0..499 ends with EOS within 24 tokens")


def record(ep: VllmEndpoint, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    too_long = "hello world " * (ep.max_model_len)  # two tokens a repeat: well over the limit
    stop_seed = find_stop_seed(ep)
    samples: list[tuple[str, str, str, Any]] = [
        ("chat_stream_usage", "POST", "/v1/chat/completions", chat(
            ep, "Hello there, how are you?", max_tokens=8, temperature=0, stream=True,
            stream_options={"include_usage": True})),
        ("chat_stream_no_usage", "POST", "/v1/chat/completions", chat(
            ep, "Hello there, how are you?", max_tokens=4, temperature=0, stream=True)),
        ("chat_stream_stop", "POST", "/v1/chat/completions", chat(
            ep, "Say hi.", max_tokens=24, temperature=1.0, seed=stop_seed, stream=True,
            stream_options={"include_usage": True})),
        ("chat_nonstream", "POST", "/v1/chat/completions", chat(
            ep, "Hello there, how are you?", max_tokens=8, temperature=0)),
        ("chat_nonstream_stop", "POST", "/v1/chat/completions", chat(
            ep, "Say hi.", max_tokens=24, temperature=1.0, seed=stop_seed)),
        ("error_context_400", "POST", "/v1/chat/completions", chat(ep, too_long, max_tokens=8)),
        ("error_context_400_stream", "POST", "/v1/chat/completions", chat(
            ep, too_long, max_tokens=8, stream=True, stream_options={"include_usage": True})),
        ("error_max_tokens_400", "POST", "/v1/chat/completions", chat(
            ep, "hi", max_tokens=ep.max_model_len + 1)),
        ("error_unknown_model_404", "POST", "/v1/chat/completions", {
            "model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}),
        ("error_validation_400", "POST", "/v1/chat/completions", {"model": ep.model}),
        ("models", "GET", "/v1/models", None),
        ("tokenize", "POST", "/tokenize", {
            "model": ep.model, "add_generation_prompt": True,
            "messages": [{"role": "user", "content": "Hello there, how are you?"}]}),
        ("health", "GET", "/health", None),
        ("version", "GET", "/version", None),
    ]  # fmt: skip
    # A prompt of exactly max_model_len tokens: vLLM 0.32 then reports param max_tokens, not
    # input_tokens (it derives max_tokens = max_model_len - prompt = 0 and rejects that).
    exact = _prompt_with_tokens(ep, ep.max_model_len)
    samples.append(("error_prompt_fills_context_400", "POST", "/v1/chat/completions", exact))
    manifest = {}
    for name, method, path, body in samples:
        r = raw_request(ep.root_url, method, path, body)
        (out / f"{name}.http").write_bytes(r.head + r.body)
        if r.wire != r.head + r.body:
            (out / f"{name}.wire").write_bytes(r.wire)
        shown = body
        if body is not None and name.startswith("error_context"):
            shown = {**body, "messages": [{"role": "user", "content": "hello world  x 2048"}]}
        if name == "error_prompt_fills_context_400":
            shown = {
                **body,
                "messages": [
                    {"role": "user", "content": f"<text of {ep.max_model_len} prompt tokens>"}
                ],
            }
        manifest[name] = {"method": method, "path": path, "body": shown, "status": r.status}
        print(f"{r.status} {name}", file=sys.stderr)
    (out / "requests.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    # A few /metrics lines: the counters the tests read, with their HELP and TYPE lines.
    metrics = raw_request(ep.root_url, "GET", "/metrics")
    keep = (
        "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total", "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total", "vllm:request_success_total", "vllm:cache_config_info",
    )  # fmt: skip
    lines = []
    for line in metrics.body.decode().splitlines():
        name = line.split()[2] if line.startswith("#") else line.split("{")[0].split(" ")[0]
        if name in keep:
            lines.append(line)
    (out / "metrics_excerpt.txt").write_bytes(metrics.head + ("\n".join(lines) + "\n").encode())


def _prompt_with_tokens(ep: VllmEndpoint, n: int) -> dict[str, Any]:
    """A chat request whose prompt is exactly n tokens (bisect on repeats, then pad)."""

    def count(text: str) -> int:
        _, t = ep.post("/tokenize", {**chat(ep, text), "add_generation_prompt": True})
        return int(t["count"])

    lo, hi = 0, n  # count("hello world " * lo) <= n < count("hello world " * hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count("hello world " * mid) <= n else (lo, mid)
    base = "hello world " * lo
    for filler in (" a", " b", "x", " 1"):
        text = base
        while (c := count(text)) < n:
            text += filler
        if c == n:
            return chat(ep, text, max_tokens=8)
    raise RuntimeError(f"no prompt of exactly {n} tokens found")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root-url", help="a running server; default: start one")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    if args.root_url:
        ep = VllmEndpoint(args.root_url)
        models = json.loads(ep.get("/v1/models")[1])["data"]
        ep.model, ep.max_model_len = models[0]["id"], int(models[0]["max_model_len"])
        record(ep, args.out)
    else:
        with running_server() as server:
            record(server, args.out)


if __name__ == "__main__":
    main()
