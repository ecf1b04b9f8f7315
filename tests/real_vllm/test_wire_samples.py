"""The recorded wire samples still describe the live server (re-record after a vLLM upgrade
with `python -m tests.real_vllm.record_wire`). A fake server can be held to the same samples
with record_wire's `load_sample`, `head_shape` and `body_shape`."""

from __future__ import annotations

import json

import pytest

from .record_wire import OUT_DIR, body_shape, head_shape, load_sample, raw_request
from .server import VllmEndpoint

pytestmark = pytest.mark.real_vllm

MANIFEST = json.loads((OUT_DIR / "requests.json").read_text())
# Bodies stored abbreviated in requests.json (2,000-token prompts); test_smoke covers them.
REPLAYABLE = [
    name for name in MANIFEST if not name.startswith(("error_context", "error_prompt_fills"))
]


@pytest.mark.parametrize("name", REPLAYABLE)
def test_live_server_matches_sample(real_vllm: VllmEndpoint, name: str) -> None:
    req = MANIFEST[name]
    body = req["body"]
    if body is not None and "model" in body and body["model"] != "no-such-model":
        body = {**body, "model": real_vllm.model}
    live = raw_request(real_vllm.root_url, req["method"], req["path"], body)
    sample = load_sample(name)
    assert live.status == sample.status == req["status"]
    assert head_shape(live) == head_shape(sample)
    assert body_shape(live) == body_shape(sample)
