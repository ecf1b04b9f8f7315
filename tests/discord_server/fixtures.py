"""pytest plugin with the ``fake_discord`` fixture.

Load it with ``pytest_plugins = ["tests.discord_server.fixtures"]`` in ``tests/conftest.py``.

Options go through a marker: ``@pytest.mark.fake_discord(heartbeat_interval=0.5,
message_content_enabled=False)`` (keyword arguments of ``FakeDiscord``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .harness import point_discord_py_at
from .server import FakeDiscord


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fake_discord(**options): keyword arguments for the FakeDiscord fixture"
    )


@pytest.fixture
async def fake_discord(request: pytest.FixtureRequest) -> AsyncIterator[FakeDiscord]:
    """A running fake Discord with discord.py pointed at it.

    Fails the test at teardown if violations were recorded.

    Tests that provoke violations on purpose take them with ``fake_discord.pop_violations()``.
    """
    marker = request.node.get_closest_marker("fake_discord")
    options = marker.kwargs if marker else {}
    async with FakeDiscord(**options) as fake:
        restore = point_discord_py_at(fake.base_url)
        try:
            yield fake
        finally:
            restore()
    if fake.violations:
        pytest.fail(fake.violation_report(), pytrace=False)
