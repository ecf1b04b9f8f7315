"""``python -m bench.baseline_bot``: the bot with httpx's own transport, the baseline of figure 1.

Everything else is the real bot (``python -m bot``); only the transport under the vLLM client's
``httpx.AsyncClient`` is httpx's default one (httpcore + h11) instead of the bot's.
"""

from __future__ import annotations

import sys
from typing import Any

import httpx

import bot.llm
from bot.config import LLMConfig

_make = bot.llm.make_http_client


def _plain_httpx(config: LLMConfig, **kwargs: Any) -> httpx.AsyncClient:
    if "transport" not in kwargs:
        kwargs["transport"] = httpx.AsyncHTTPTransport(limits=bot.llm._LIMITS)
    return _make(config, **kwargs)


bot.llm.make_http_client = _plain_httpx

if __name__ == "__main__":
    from bot.__main__ import main

    sys.exit(main())
