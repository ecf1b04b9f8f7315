"""Shared fixtures. The Discord test server and the scripted vLLM are plugins of their own."""

from pathlib import Path

import pytest

from bot.tokens import TokenCounter, load_encoding

pytest_plugins = ["tests.discord_server.fixtures"]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def counter(tmp_path_factory: pytest.TempPathFactory) -> TokenCounter:
    return TokenCounter(load_encoding("cl100k_base", tmp_path_factory.mktemp("tiktoken")))
