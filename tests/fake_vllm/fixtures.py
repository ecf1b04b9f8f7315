"""pytest plugin with the ``fake_vllm`` fixture (a started FakeVLLM in the test's event loop).

Load it with ``pytest_plugins = ["tests.fake_vllm.fixtures"]`` in ``tests/conftest.py``.
Options go through a marker: ``@pytest.mark.fake_vllm(max_model_len=512, max_running=2)``
(keyword arguments of ``FakeVLLM``; the defaults are model "tiny", max_model_len 2048).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .server import FakeVLLM


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fake_vllm(**options): keyword arguments for the FakeVLLM fixture"
    )


@pytest.fixture
async def fake_vllm(request: pytest.FixtureRequest) -> AsyncIterator[FakeVLLM]:
    marker = request.node.get_closest_marker("fake_vllm")
    options = {"model": "tiny", "max_model_len": 2048, **(marker.kwargs if marker else {})}
    async with FakeVLLM(**options) as fake:
        yield fake
