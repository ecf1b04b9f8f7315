"""What the fake server does: `ServerConfig` (fixed per server) and `Script` (per request).

Both are plain dataclasses so that a JSON script file, the command line and the control
endpoint all build them the same way (`from_dict`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

Cut = Literal["stall", "rst", "fin", "clean", "done", "error"]
ErrorShape = Literal["nested", "flat"]
ContextStyle = Literal["current", "validate", "legacy"]
ReasoningField = Literal["reasoning", "reasoning_content", "both"]


@dataclass
class ServerConfig:
    """Server-wide settings, like `vllm serve` flags."""

    model: str = "tiny"
    max_model_len: int = 2048
    root: str | None = None  # `/v1/models` "root" (vLLM: the --model path); default: model
    version: str = "0.32.0"  # /version, and system_fingerprint "vllm-VERSION-<8 hex>"
    block_size: int = 16  # prefix-cache block (vLLM: 16 on GPU, 128 on the CPU build)
    cache_blocks: int = 8192  # prefix-cache capacity, LRU-evicted
    prompt_tokens_details: bool = True  # --enable-prompt-tokens-details
    max_running: int = 0  # concurrent generations; more wait in a FIFO queue (0 = no limit)
    prefill_tps: float = 0.0  # uncached prompt tokens/s added to TTFT (0 = free)
    error_shape: ErrorShape = "nested"  # {"error": {...}} (0.32) | flat {"object": "error"}
    context_style: ContextStyle = "current"  # length checks and wording, by vLLM era
    reasoning_field: ReasoningField = "reasoning"  # delta field for field-mode reasoning


@dataclass
class Script:
    """One chat-completion behaviour. Token counts (`*_after`) count content/reasoning chunks.

    `cut_after=k` ends the response after k token chunks (k=-1: before any HTTP response,
    k=0: right after the role chunk) in the way `cut` names:
      stall  no more bytes, connection held open until the client leaves (or the server stops)
      rst    TCP reset (SO_LINGER 0); no terminating chunk
      fin    socket closed without the HTTP chunked terminator
      clean  HTTP body ended properly, but no finish_reason and no `data: [DONE]`
      done   `data: [DONE]` but no finish_reason
      error  vLLM's in-band error event `data: {"error": ...}` then `data: [DONE]`
    With -1, "clean"/"done"/"error" act as "fin". Non-streaming requests honour stall/rst/fin,
    answer "error" with a 500 JSON error and treat "clean"/"done" as "fin".
    A reply reaches "stop" (plus vLLM's empty EOS chunk) when it fits in max_tokens and the
    context, else "length". `ttft=3600` stalls before the first chunk (headers already sent).
    """

    text: str | None = None  # the reply; None: `tokens` filler tokens
    tokens: int = 16
    rate: float = 0.0  # tokens/s; 0 = as fast as possible (one write)
    ttft: float = 0.0  # seconds before the role chunk (after the HTTP headers)
    reasoning: str | None = None  # reasoning text, sent before the reply
    reasoning_mode: Literal["field", "inline"] = "field"  # delta field | <think>…</think> inline
    finish_reason: str | None = None  # override the natural "stop" / "length"
    cut_after: int | None = None
    cut: Cut = "stall"
    inject_after: int | None = None  # send one bad SSE event after k token chunks
    inject: str = "malformed"  # "malformed" JSON | "shape" (no `delta`) | a raw "data: …\n\n"
    status: int | None = None  # answer this HTTP status before any stream
    body: str | None = None  # for `status`: None = vLLM JSON error | "html" = proxy page | raw
    context_error: bool = False  # answer vLLM's 400 prompt-too-long whatever the length
    times: int = 1  # in a queue: how many requests this entry serves


T = TypeVar("T", ServerConfig, Script)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a config/script from a JSON-like dict, rejecting unknown keys."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    return cls(**data)
