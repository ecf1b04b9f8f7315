"""Helpers shared by the reliability tests: routes of the fake Discord's request log,
percentiles, process readings and waits."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from tests.discord_server import FakeDiscord, RequestRecord
from tests.fake_vllm import FakeVLLM
from tests.harness import Env

POST = "POST /channels/{channel_id}/messages"
PATCH = "PATCH /channels/{channel_id}/messages/{message_id}"
TYPING = "POST /channels/{channel_id}/typing"


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of ``values``; 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def reply_writes(fake: FakeDiscord, msg: Any) -> list[RequestRecord]:
    """Every successful create/edit of the bot's answer to ``msg`` (its reply and notices),
    in order."""
    ids: set[str] = set()
    out: list[RequestRecord] = []
    for r in list(fake.requests):
        if r.status >= 300 or not isinstance(r.json, dict):
            continue
        if r.route == POST:
            ref = r.json.get("message_reference") or {}
            if str(ref.get("message_id")) == str(msg.id):
                ids.add(str(r.response["id"]))
                out.append(r)
        elif r.route == PATCH and r.params.get("message_id") in ids:
            out.append(r)
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def model_asked(vllm: FakeVLLM, before: int, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Wait until the model server has received more than ``before`` chat requests."""
    for _ in range(int(timeout / 0.005)):
        if vllm.attempts > before:
            return
        await asyncio.sleep(0.005)
    raise TimeoutError(f"the model was not asked within {timeout}s")


async def until_all_finished(env: Env, expected: int, timeout: float) -> None:  # noqa: ASYNC109
    """Every user message stored has an outcome and no turn is still running."""
    deadline = time.monotonic() + timeout
    chat: Any = env.bot.get_cog("Chat")
    while True:
        (done,) = env.rows(
            "SELECT count(*) FROM messages WHERE role = 'user' AND status != 'pending'"
        )[0]
        if done >= expected and not chat.tasks:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{done}/{expected} turns finished after {timeout}s")
        await asyncio.sleep(0.1)
