"""Rendering (time notes, shared sessions) and offline token counting."""

import socket
from datetime import UTC, datetime, timedelta

from bot.models import Turn
from bot.prompt import build_messages, time_note
from bot.tokens import TokenCounter, load_encoding
from bot.trimming import NOTE_TOKENS

T = datetime(2026, 11, 26, 5, 3, tzinfo=UTC)


def test_time_note_has_the_time_and_a_gap_only_when_it_matters():
    assert time_note(T, T - timedelta(minutes=5)) == "[Thu 2026-11-26 05:03 UTC]"
    assert time_note(T, T - timedelta(hours=3, minutes=5)) == (
        "[Thu 2026-11-26 05:03 UTC, 3 h 5 min after the previous message]"
    )
    assert time_note(T, T - timedelta(days=2, hours=1), "Ann]\n") == (
        "[Ann, Thu 2026-11-26 05:03 UTC, 2 d 1 h after the previous message]"
    )


def test_note_fits_its_token_allowance(counter):
    longest = time_note(T, T - timedelta(days=9999, hours=23, minutes=59))
    assert counter.count(longest + "\n") <= NOTE_TOKENS


def test_history_renders_the_same_on_every_request():
    turns = [Turn(1, "hi", 1, T, "ann", "hello", 1, T + timedelta(seconds=3))]
    first = build_messages("sys", turns, "next", T + timedelta(hours=2), "ann")
    later_turns = [
        *turns,
        Turn(
            3, "next", 1, T + timedelta(hours=2), "ann", "ok", 1, T + timedelta(hours=2, seconds=3)
        ),
    ]
    second = build_messages("sys", later_turns, "again", T + timedelta(hours=2, minutes=1), "ann")
    assert second[: len(first)] == first  # the earlier prompt is a prefix of the later one
    assert first[0]["content"] == "sys"  # no clock in the system prompt


def test_shared_sessions_name_the_speaker():
    messages = build_messages("sys", [], "hello", T, "Bob", shared=True)
    assert messages[-1]["content"].startswith("[Bob, Thu 2026-11-26 05:03 UTC]\n")
    alone = build_messages("sys", [], "hello", T, "Bob", shared=False, time_awareness=False)
    assert alone[-1]["content"] == "hello"


def test_tokenizer_loads_offline(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tiktoken tried to reach the network")

    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    for name in ("cl100k_base", "o200k_base"):
        counter = TokenCounter(load_encoding(name, tmp_path / "cache"))
        assert counter.count("hello world") == 2
        # typed special tokens are ordinary text, not an error
        assert counter.count("<|endoftext|>") > 1
