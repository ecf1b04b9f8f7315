"""Pure parts of the export (pseudonyms, CSV safety) and of settings validation."""

import csv
import io
import json
from datetime import UTC, datetime

import pytest

from bot import export
from bot.config import Config
from bot.models import ChannelSettings, Turn, UserSettings
from bot.settings import SettingError, parse, resolve

HOSTILE = [
    '=HYPERLINK("http://x")',
    "+1+1",
    "-2+3",
    "@SUM(A1)",
    "\tx",
    "\rx",
    " =1",
    "\u00a0=1",
    "ok\n=cmd|' /C calc'!A0",
    "|pipe",
    "a\0b",
    "\u202e=rtl",
]


def _raw(text: str, reply: str) -> dict:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return {
        "reply_id": 1,
        "session_id": 1,
        "place": "channel",
        "guild_id": 10,
        "channel_id": 20,
        "shared_session": False,
        "user_message_id": 2,
        "user_text": text,
        "user_at": "t",
        "author_id": 123456789012345678,
        "user_tokens": 3,
        "reply": reply,
        "reply_started_at": "t",
        "reply_finished_at": "t",
        "status": "done",
        "model": "m",
        "system_prompt": "=sys",
        "temperature": 0.7,
        "top_p": 1.0,
        "max_tokens": 100,
        "prompt_tokens": 5,
        "completion_tokens": 6,
        "cached_tokens": 0,
        "first_token_ms": 7,
        "latency_ms": 8,
        "finish_reason": "stop",
        "reply_tokens": 6,
        "context": [Turn(1, "-earlier", 1, at, None, "@earlier", 1, at)],
        "scores": [(123456789012345678, 1), (876543210987654321, -1), (555, 1)],
    }


async def _rows(items):
    for item in items:
        yield item


def test_pseudonyms_are_keyed_and_stable():
    a = export.pseudonym(b"k1", 42)
    assert a == export.pseudonym(b"k1", 42) != export.pseudonym(b"k2", 42)
    assert "42" not in a and len(a) == 16


async def test_csv_cells_cannot_run_as_formulas_and_round_trip():
    raws = [_raw(h, h) for h in HOSTILE]
    out = io.StringIO()
    count = await export.write(export.records(_rows(raws), b"key"), out, "csv")
    assert count == len(HOSTILE)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(rows) == len(HOSTILE)
    text_cells = ["user_text", "reply", "context", "system_prompt", "scores", "user"]
    for row, hostile in zip(rows, HOSTILE):
        for name in text_cells:
            for line in row[name].split("\n"):
                bare = line.lstrip(" \u00a0")
                assert not bare.startswith(("=", "+", "-", "@", "|", "\t", "\r")), (name, line)
        # the text is still there, only defused
        restored = "\n".join(line.removeprefix("'") for line in row["user_text"].split("\n"))
        assert restored == hostile.replace("\0", "")
        assert "123456789012345678" not in out.getvalue()
        assert row["score"] == "1" and row["thumbs_up"] == "2" and row["thumbs_down"] == "1"


async def test_jsonl_keeps_exact_text_and_context():
    out = io.StringIO()
    await export.write(export.records(_rows([_raw("=1+1", "hi")]), b"key"), out, "jsonl")
    rec = json.loads(out.getvalue())
    assert rec["user_text"] == "=1+1"
    assert rec["context"][0] == {
        "role": "user",
        "text": "-earlier",
        "at": "2026-01-01T00:00:00.000Z",
    }
    assert rec["guild_id"] == "10"
    assert {s["score"] for s in rec["scores"]} == {1, -1}
    assert rec["score"] == 1


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("temperature", "0.3", 0.3),
        ("reply_length", "256", 256),
        ("sharing", "channel", 1),
        ("auto_threads", "on", 1),
        ("reply_to_everything", "off", 0),
        ("persona", "  pirate ", "pirate"),
        ("temperature", "default", None),
    ],
)
def test_valid_values(name, raw, expected):
    assert parse(name, raw) == expected


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("temperature", "2.5"),
        ("temperature", "nan"),
        ("temperature", "-0.1"),
        ("temperature", "x"),
        ("reply_length", "5"),
        ("reply_length", "99999"),
        ("reply_length", "1.5"),
        ("sharing", "all"),
        ("auto_threads", "maybe"),
        ("persona", "x" * 4001),
        ("nope", "1"),
        ("temperature", "inf"),
    ],
)
def test_invalid_values_are_refused_politely(name, raw):
    with pytest.raises(SettingError) as info:
        parse(name, raw)
    message = str(info.value)
    assert message.endswith(".") and len(message) < 200


def test_resolution_user_over_channel_unless_shared():
    config = Config()
    channel = ChannelSettings(system_prompt="channel persona", temperature=0.1)
    user = UserSettings(system_prompt="my persona")
    assert resolve(config, channel, user, shared=False).system_prompt == "my persona"
    assert resolve(config, channel, user, shared=False).temperature == 0.1
    assert resolve(config, channel, user, shared=True).system_prompt == "channel persona"
    assert resolve(config, ChannelSettings(), UserSettings(), shared=False).max_tokens == 512
