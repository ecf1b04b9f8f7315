"""Slash commands: acknowledged in time when everything is slow (D8), and permissions
enforced by the bot itself whatever Discord shows (D10)."""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
from collections.abc import Callable
from typing import Any

import pytest

from tests.discord_server import Perm
from tests.fake_vllm import FakeVLLM, Script
from tests.harness import Env, running_bot

ADMIN = Perm.DEFAULT | Perm.MANAGE_GUILD
MOD = Perm.DEFAULT | (1 << 4)  # MANAGE_CHANNELS
QUERY_DELAY = 0.5  # seconds added to every SQL statement the bot runs


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def slow_database(env: Env, delay: float) -> Callable[[], None]:
    """Every statement on the bot's connection waits ``delay`` first (a disk under load, a
    lock held by another process within busy_timeout). Returns the undo."""
    raw: Any = env.app.store._raw
    for name in ("execute", "execute_fetchall"):
        original = getattr(raw, name)

        async def slowed(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            await asyncio.sleep(delay)
            return await _original(*args, **kwargs)

        setattr(raw, name, slowed)

    def undo() -> None:
        for name in ("execute", "execute_fetchall"):
            delattr(raw, name)

    return undo


def first_callback_latency(handle: Any) -> float | None:
    """Seconds from dispatch to the first callback the bot sent (successful or not)."""
    callbacks = handle.of_kind("callback")
    return callbacks[0].at - handle.dispatched_at if callbacks else None


@pytest.fixture
async def vllm():
    async with FakeVLLM(model="tiny", max_model_len=4096) as server:
        yield server


async def test_d8_callbacks_in_time_with_a_slow_database_and_model(
    fake_discord, vllm, tmp_path, figures, caplog
):
    fake = fake_discord
    w = await fake.basic_world()
    users = [await fake.create_user(f"u{i}") for i in range(4)]
    for u in users:
        await fake.add_member(w.guild, u)
    # a slow model: replies take seconds to start and to stream
    vllm.default = Script(text=" ".join(["slowly"] * 40), ttft=2.0, rate=10)
    fake.slow("POST", "/channels/*/messages", 0.3)
    fake.slow("PATCH", "/channels/*/messages/*", 0.3)
    async with running_bot(fake, vllm, w, tmp_path / "bot.sqlite3") as env:
        chats = [
            await fake.user_sends(w.channel, u, "busy chatter", mentions_bot=True) for u in users
        ]
        fast_again = slow_database(env, QUERY_DELAY)
        await asyncio.sleep(0.2)
        commands: list[tuple[Any, dict[str, Any], int | None]] = [
            (("settings", "show"), {}, None),
            (("settings", "set"), {"target": "me", "name": "temperature", "value": "0.3"}, None),
            (("settings", "set"), {"target": "channel", "name": "persona", "value": "x"}, MOD),
            ("reset", {}, None),
            ("help", {}, None),
            ("mydata", {}, None),
            ("status", {}, ADMIN),
            ("export", {}, ADMIN),
            ("forget", {}, None),
        ]
        handles = []
        for command, options, permissions in commands:
            handles.append(
                await fake.invoke_slash(
                    command, options, user=w.alice, channel=w.channel, permissions=permissions
                )
            )
            await asyncio.sleep(0.1)
        for h in handles:
            await h.wait_for_callback(timeout=10)
        forget = handles[-1]
        (row,) = forget.callback.data["components"]
        cancel = next(b for b in row["components"] if b["label"] == "Cancel")
        click = await fake.click(forget.original, cancel["custom_id"], user=w.alice)
        await click.wait_for_callback(timeout=10)
        handles.append(click)
        fast_again()
        # every deferred command still delivers its answer
        for h in handles:
            if h.callback.type == 5:
                await h.wait_for("followup", timeout=30)
        latencies = [first_callback_latency(h) for h in handles]

        # A follow-up after the token expired (the answer took over 15 minutes): one attempt,
        # a clear log line, no retries.
        fake.slow("POST", "/webhooks/*/*", 0.5)
        with caplog.at_level(logging.INFO):
            late = await fake.invoke_slash(
                "export", {}, user=w.alice, channel=w.channel, permissions=ADMIN
            )
            await late.wait_for_callback(timeout=10)
            fake.advance_time(15 * 60 + 1)

            def late_attempts() -> list[Any]:  # the fake refuses them before logging a response
                return [r for r in fake.requests if late.token in r.path and "/webhooks/" in r.path]

            await fake.wait_until(late_attempts, 30, "the late follow-up")
            await asyncio.sleep(1.0)  # time for a retry to show
        for m in chats:
            await env.reply_to(m, timeout=60)
    expired_log = [r for r in caplog.records if "expired" in r.getMessage().lower()]
    oks = [x for x in latencies if x is not None]
    figures["D8"] = {
        "commands": len(handles),
        "query_delay_s": QUERY_DELAY,
        "callback_p50_s": round(statistics.median(oks), 2),
        "callback_p99_s": round(percentile(oks, 0.99), 2),
        "callback_max_s": round(max(oks), 2),
        "within_2_5s_pct": round(100 * sum(x <= 2.5 for x in oks) / len(handles), 1),
        "attempts_after_expiry": len(late_attempts()),
        "expiry_logged": bool(expired_log),
    }
    assert None not in latencies
    assert max(oks) <= 2.5, latencies
    assert len(late_attempts()) <= 1, [str(r) for r in late_attempts()]
    assert expired_log


def answer_of(handle: Any) -> tuple[str, bool, int]:
    """(all the text the bot answered, every answer ephemeral, files sent)."""
    answers = [r for r in handle.responses if r.ok and r.kind in ("callback", "followup")]
    text = "\n".join(r.content or "" for r in answers)
    ephemeral = all(r.ephemeral for r in answers if r.kind == "followup" or r.type != 5) and any(
        r.ephemeral for r in answers
    )
    return text, ephemeral, sum(len(r.files) for r in answers)


async def test_d10_permissions_and_values_are_checked_by_the_bot(
    fake_discord, vllm, tmp_path, figures, caplog
):
    fake = fake_discord
    w = await fake.basic_world()
    other = await fake.create_guild("other")
    other_channel = await fake.create_channel(other, "elsewhere")
    await fake.add_member(other, w.alice)
    vllm.default = Script(text="a reply")
    async with running_bot(fake, vllm, w, tmp_path / "bot.sqlite3") as env:
        # data in both servers and a DM
        for channel, text in ((w.channel, "here"), (other_channel, "other-guild-secret")):
            await env.reply_to(await fake.user_sends(channel, w.alice, text, mentions_bot=True))
        await env.reply_to(await fake.user_dms(w.alice, "dm-secret"))
        dm = await fake.open_dm(w.alice)

        async def run(command: Any, options: dict[str, Any], permissions: Any, channel: Any) -> Any:
            h = await fake.invoke_slash(
                command, options, user=w.alice, channel=channel, permissions=permissions
            )
            await h.wait_for_callback()
            if h.callback.type == 5:
                await h.wait_for("followup")
            return h

        export_denials = [
            ("export", {}, 0, w.channel),
            ("export", {}, Perm.DEFAULT, w.channel),
            ("export", {}, Perm.ALL & ~(Perm.MANAGE_GUILD | Perm.ADMINISTRATOR), w.channel),
            ("export", {}, ADMIN, dm),
            ("export", {"format": "xml"}, ADMIN, w.channel),
            ("export", {"score": "everything"}, ADMIN, w.channel),
            ("export", {"since": "9999-99-99"}, ADMIN, w.channel),
            ("export", {"since": "99999999999d"}, ADMIN, w.channel),
            ("export", {"until": "1e400"}, ADMIN, w.channel),
            # an option naming another server's channel
            ("export", {"channel": other_channel}, ADMIN, w.channel),
            ("status", {}, 0, w.channel),
            ("status", {}, ADMIN, dm),
        ]
        bad_values = {
            "temperature": ["2.0001", "-0.1", "nan", "inf", "-inf", "1e309", "0x1", "", " "],
            "reply_length": ["4097", "15", "-1", "1e3", "99999999999999999999", "4096.5"],
            "sharing": ["2", "all", "true"],
            "auto_threads": ["maybe", "2"],
            "reply_to_everything": ["-1", "yes please"],
            "persona": ["x" * 4001, "   "],
            "bogus": ["1"],
            "__class__": ["1"],
            "system_prompt": ["sneaky"],
        }
        settings_denials = [
            (
                ("settings", "set"),
                {"target": "channel", "name": "persona", "value": "p"},
                0,
                w.channel,
            ),
            (
                ("settings", "set"),
                {"target": "channel", "name": "persona", "value": "p"},
                Perm.DEFAULT,
                w.channel,
            ),
            (("settings", "set"), {"target": "channel", "name": "persona", "value": "p"}, MOD, dm),
            (
                ("settings", "set"),
                {"target": "everyone", "name": "persona", "value": "p"},
                MOD,
                w.channel,
            ),
            (
                ("settings", "set"),
                {"target": "me", "name": "sharing", "value": "channel"},
                MOD,
                w.channel,
            ),
            (("reset",), {}, 0, w.channel),  # allowed: own session (checked below)
        ]
        settings_denials.pop()  # /reset of one's own session is not a privilege
        for name, values in bad_values.items():
            for value in values:
                for target in ("me", "channel"):
                    settings_denials.append(
                        (
                            ("settings", "set"),
                            {"target": target, "name": name, "value": value},
                            MOD,
                            w.channel,
                        )
                    )
        handles = []
        for command, options, permissions, channel in export_denials + settings_denials:
            handles.append((command, options, await run(command, options, permissions, channel)))
        rows_after_denials = env.rows(
            "SELECT (SELECT count(*) FROM channel_settings), (SELECT count(*) FROM user_settings)"
        )[0]

        # Positive controls: the same commands work for those allowed, scoped to their server
        # (an option the command does not have, naming another server, changes nothing).
        exports = {}
        for label, options in (("own", {}), ("forged guild", {"guild": str(other.id)})):
            h = await run("export", {"format": "jsonl", **options}, ADMIN, w.channel)
            (upload,) = [f for r in h.responses if r.ok for f in r.files]
            exports[label] = [json.loads(line) for line in upload.data.decode().splitlines()]
        ok = await run(
            ("settings", "set"),
            {"target": "channel", "name": "temperature", "value": "2"},
            MOD,
            w.channel,
        )
        allowed_text, _, _ = answer_of(ok)

    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    not_denied, not_ephemeral, failed, leaked_files = [], [], [], []
    for command, options, h in handles:
        text, ephemeral, files = answer_of(h)
        if "set to" in text or files:
            not_denied.append((command, options))
        if "command failed" in text:  # refused by accident (an exception), not by a check
            failed.append((command, options))
        if not ephemeral:
            not_ephemeral.append((command, options))
        leaked_files.append(files)
    other_rows = [
        r
        for records in exports.values()
        for r in records
        if r["guild_id"] != str(w.guild.id) or "secret" in json.dumps(r)
    ]
    figures["D10"] = {
        "denial_cases": len(handles),
        "denied_pct": round(100 * (len(handles) - len(not_denied)) / len(handles), 1),
        "not_ephemeral": len(not_ephemeral),
        "out_of_range_accepted": sum(1 for c, _ in not_denied if c == ("settings", "set")),
        "refused_by_an_exception": len(failed),
        "error_logs": len(errors),
        "settings_rows_after_denials": list(rows_after_denials),
        "export_rows": {k: len(v) for k, v in exports.items()},
        "rows_from_another_guild_or_dm": len(other_rows),
    }
    assert not_denied == []
    assert not_ephemeral == []
    assert failed == [] and errors == []
    assert rows_after_denials == (0, 0)
    assert other_rows == []
    assert len(exports["own"]) == 1 and exports["forged guild"] == exports["own"]
    assert "set to" in allowed_text
