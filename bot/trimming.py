"""Deciding which turns of a session still fit in the model's context. Pure functions.

The policy is chosen for vLLM's automatic prefix cache (facts.md): consecutive requests reuse the
KV blocks of their common prefix, so the start of the context must move rarely. While the
context fits, nothing is dropped; when it no longer fits, whole oldest turns (a user message and
its reply, so history never starts on an assistant turn) are dropped until the context is down
to a low watermark of the budget. The next turns then grow the context again from a stable start.
A sliding window that drops one message per turn reuses ~8 % of prompt tokens; this ~86 % with
the default watermark of 0.6 (``python -m bench``, figure 3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Chat-template framing per message, e.g. "<|im_start|>user\n … <|im_end|>\n" (facts.md: ~4).
FRAMING_TOKENS = 4
# Upper bound for the time note rendered before each user message (bot.prompt.time_note).
NOTE_TOKENS = 32
# Tokens of the generation prompt that follows the last message ("<|im_start|>assistant\n").
PRIMING_TOKENS = 4


class MessageTooLong(Exception):
    """The system prompt and the newest message alone do not fit in the context."""

    def __init__(self, needed: int, limit: int) -> None:
        super().__init__(f"needs ~{needed} tokens, the context allows {limit}")
        self.needed = needed
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Budget:
    """What one request may spend, in the served model's tokens."""

    max_model_len: int
    max_tokens: int  # reserved for the reply
    margin: int
    ratio: float = 1.0  # served-model tokens per tiktoken token, calibrated from vLLM's usage

    @property
    def limit(self) -> int:
        return self.max_model_len - self.max_tokens - self.margin

    def served(self, estimate: int) -> int:
        """A tiktoken estimate converted to the served model's tokens (rounded up)."""
        return math.ceil(estimate * self.ratio)


@dataclass(frozen=True, slots=True)
class Plan:
    start: int  # index of the first turn kept
    estimate: int  # tiktoken tokens of the whole prompt
    served: int  # the same, in served-model tokens

    @property
    def trimmed(self) -> bool:
        return self.start > 0


def message_cost(tokens: int) -> int:
    return tokens + FRAMING_TOKENS


def user_cost(tokens: int, name_tokens: int = 0) -> int:
    return tokens + FRAMING_TOKENS + NOTE_TOKENS + name_tokens


def plan_context(
    system_cost: int,
    turn_costs: Sequence[int],
    newest_cost: int,
    budget: Budget,
    low_watermark: float,
    *,
    force: bool = False,
) -> Plan:
    """Choose the first turn to keep.

    ``system_cost``, ``turn_costs`` (user message + reply, framing included) and
    ``newest_cost`` are tiktoken estimates. The system prompt and the newest message are
    always kept; raises MessageTooLong when they alone exceed the budget. ``force`` trims to
    the watermark even when the context seems to fit, dropping at least one turn (after vLLM
    said it does not fit).
    """
    fixed = system_cost + newest_cost + PRIMING_TOKENS
    if budget.served(fixed) > budget.limit:
        raise MessageTooLong(budget.served(fixed), budget.limit)
    total = fixed + sum(turn_costs)
    if not force and budget.served(total) <= budget.limit:
        return Plan(0, total, budget.served(total))
    target = budget.limit * low_watermark
    start = 0
    while start < len(turn_costs) and (budget.served(total) > target or (force and start == 0)):
        total -= turn_costs[start]
        start += 1
    return Plan(start, total, budget.served(total))
