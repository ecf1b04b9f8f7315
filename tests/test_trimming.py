"""Trimming: the budget always holds, the system prompt and newest message always stay, history
never starts on an assistant turn, and the context start moves only when it must."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.models import Turn
from bot.prompt import build_messages
from bot.trimming import (
    FRAMING_TOKENS,
    NOTE_TOKENS,
    PRIMING_TOKENS,
    Budget,
    MessageTooLong,
    message_cost,
    plan_context,
    user_cost,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
words = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=400)


def _turns(texts: list[tuple[str, str, int]]) -> list[Turn]:
    turns, at = [], T0
    for i, (user, reply, gap_minutes) in enumerate(texts):
        at += timedelta(minutes=gap_minutes)
        turns.append(Turn(i + 1, user, 0, at, None, reply, 0, at + timedelta(seconds=5)))
    return turns


def _rendered_tokens(counter, messages) -> int:
    return sum(counter.count(m["content"]) + FRAMING_TOKENS for m in messages) + PRIMING_TOKENS


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=st.lists(st.tuples(words, words, st.integers(0, 5000)), max_size=40),
    system=words,
    newest=words,
    max_model_len=st.integers(256, 4096),
    max_tokens=st.integers(16, 512),
    margin=st.integers(0, 128),
    watermark=st.floats(0.2, 0.9),
)
def test_every_prompt_fits_and_keeps_what_it_must(
    counter, history, system, newest, max_model_len, max_tokens, margin, watermark
):
    turns = _turns(history)
    turns = [
        t.__class__(
            t.user_id,
            t.user_text,
            counter.count(t.user_text),
            t.user_at,
            None,
            t.reply_text,
            counter.count(t.reply_text),
            t.reply_at,
        )
        for t in turns
    ]
    budget = Budget(max_model_len, max_tokens, margin)
    costs = [user_cost(t.user_tokens) + message_cost(t.reply_tokens) for t in turns]
    newest_at = T0 + timedelta(days=400)
    try:
        plan = plan_context(
            message_cost(counter.count(system)),
            costs,
            user_cost(counter.count(newest)),
            budget,
            watermark,
        )
    except MessageTooLong:
        # refused only when it really does not fit (give or take the time note's allowance)
        alone = build_messages(system, [], newest, newest_at, None)
        assert _rendered_tokens(counter, alone) + max_tokens > max_model_len - margin - NOTE_TOKENS
        return
    messages = build_messages(system, turns[plan.start :], newest, newest_at, None)
    assert _rendered_tokens(counter, messages) + max_tokens <= max_model_len - margin
    assert messages[0] == {"role": "system", "content": system}
    assert messages[-1]["role"] == "user" and messages[-1]["content"].endswith(newest)
    assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * (
        len(turns) - plan.start
    ) + ["user"]


def test_start_stays_put_until_over_budget_then_drops_to_the_watermark():
    budget = Budget(max_model_len=1000, max_tokens=100, margin=0)  # limit 900
    costs: list[int] = []
    starts = []
    start = 0
    for _ in range(60):
        plan = plan_context(50, costs[start:], 40, budget, 0.5)
        if plan.trimmed:
            assert plan.served <= 450  # dropped down to the low watermark, not one turn
            start += plan.start
        starts.append(start)
        costs.append(60)
    moves = sum(1 for a, b in zip(starts, starts[1:]) if a != b)
    assert 0 < moves <= 60 // 6  # the start moves rarely: the prompt prefix stays stable


def test_ratio_scales_the_estimate():
    budget = Budget(max_model_len=1000, max_tokens=100, margin=0, ratio=2.0)
    with pytest.raises(MessageTooLong) as info:
        plan_context(200, [], 260, budget, 0.6)
    assert info.value.needed == 2 * (200 + 260 + PRIMING_TOKENS)
    assert info.value.limit == 900
