"""The conversation engine with a real SQLite file and a scripted vLLM-format server."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from bot.app import open_app
from bot.config import Config, load_config
from bot.console import settings_from
from bot.engine import Outcome
from bot.models import Incoming, Kind, Role, Scope, Status
from tests.fake_vllm import FakeVLLM, Script

SCOPE = Scope(Kind.CHANNEL, "42", guild_id=1, user_id=7)


class Sink:
    """Collects what a user would see."""

    def __init__(self) -> None:
        self.text = ""
        self.outcome: Outcome | None = None
        self.reply_id: int | None = None

    async def started(self, reply_id: int) -> None:
        self.reply_id = reply_id

    def on_text(self, delta: str) -> None:
        self.text += delta

    async def finish(self, outcome: Outcome) -> None:
        self.outcome = outcome


def make_config(tmp_path, base_url: str, **llm) -> Config:
    return load_config(
        llm={"base_url": base_url, "retry_backoff": 0.01, "read_timeout": 2.0, **llm},
        database={"path": tmp_path / "bot.sqlite3"},
    )


@pytest.fixture
async def fake():
    async with FakeVLLM(model="tiny", max_model_len=2048) as server:
        yield server


async def say(app, text, scope=SCOPE, when=None, **settings):
    sink = Sink()
    base = settings_from(app.config)
    chat = base.__class__(**{**{f: getattr(base, f) for f in base.__slots__}, **settings})
    incoming = Incoming(
        scope,
        text,
        author_id=scope.user_id,
        author_name="Ann",
        created_at=when or datetime.now(UTC),
    )
    outcome = await app.engine.respond(incoming, sink, chat)
    return outcome, sink


def user_contents(request) -> list[str]:
    return [m["content"] for m in request.body["messages"] if m["role"] == "user"]


async def test_a_turn_is_stored_and_remembered_across_restarts(tmp_path, fake):
    config = make_config(tmp_path, fake.base_url)
    fake.push(Script(text="Nice to meet you, Ann."), Script(text="You said your name is Ann."))
    async with open_app(config) as app:
        outcome, sink = await say(app, "My name is Ann.")
        assert outcome.status is Status.DONE and sink.text == "Nice to meet you, Ann."
    async with open_app(config) as app:  # a new process on the same database
        outcome, _ = await say(app, "What is my name?")
        session = await app.store.current_session(SCOPE)
        stored = await app.store.messages_of(session.id)
    second = fake.chat_requests[1].body["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[1]["content"].endswith("My name is Ann.")
    assert second[2]["content"] == "Nice to meet you, Ann."
    assert [(r, t, s) for r, t, s in stored] == [
        (Role.USER, "My name is Ann.", Status.DONE),
        (Role.ASSISTANT, "Nice to meet you, Ann.", Status.DONE),
        (Role.USER, "What is my name?", Status.DONE),
        (Role.ASSISTANT, "You said your name is Ann.", Status.DONE),
    ]


async def test_time_awareness_is_in_the_newest_user_turn_not_the_system_prompt(tmp_path, fake):
    config = make_config(tmp_path, fake.base_url)
    async with open_app(config) as app:
        t0 = datetime.now(UTC)
        await say(app, "hi", when=t0)
        later = t0 + timedelta(hours=3, minutes=5, seconds=30)  # the reply came ~now
        await say(app, "back again", when=later)
    first, second = fake.chat_requests
    assert first.body["messages"][0] == second.body["messages"][0]  # stable system prompt
    assert "2026" not in second.body["messages"][0]["content"]
    stamp = later.strftime("%a %Y-%m-%d %H:%M UTC")
    assert user_contents(second)[-1] == (
        f"[{stamp}, 3 h 5 min after the previous message]\nback again"
    )


async def test_sessions_are_private(tmp_path, fake):
    config = make_config(tmp_path, fake.base_url)
    other = Scope(Kind.CHANNEL, "42", guild_id=1, user_id=8)
    async with open_app(config) as app:
        await say(app, "my secret is 1234")
        await say(app, "hello", scope=other)
    assert not any("1234" in c for c in user_contents(fake.chat_requests[1]))


async def test_forced_trimming_keeps_requests_within_the_context(tmp_path):
    async with FakeVLLM(model="tiny", max_model_len=600, default=Script(tokens=60)) as fake:
        config = make_config(tmp_path, fake.base_url)
        async with open_app(config) as app:
            for i in range(25):
                outcome, _ = await say(
                    app, f"message {i}: " + "lorem ipsum dolor " * 8, max_tokens=64
                )
                assert outcome.status is Status.DONE, outcome
            assert app.engine.trims >= 1
        sizes = [fake.prompt_tokens(r.body["messages"]) for r in fake.chat_requests]
        assert max(sizes) + 64 <= 600
        firsts = [user_contents(r)[0] for r in fake.chat_requests]
        moves = sum(1 for a, b in zip(firsts, firsts[1:]) if a != b)
        assert 1 <= moves <= 25 // 3  # the context start moves in jumps, not every turn
        assert all(r.body["messages"][1]["role"] == "user" for r in fake.chat_requests)


async def test_calibration_learns_the_servers_token_counts(tmp_path, fake):
    config = make_config(tmp_path, fake.base_url)
    async with open_app(config) as app:
        await say(app, "hello")
        ratio = app.engine.ratio
    assert ratio != 1.0 and 0.5 <= ratio <= 4.0  # from /tokenize and usage, not the default


async def test_a_message_too_large_gets_a_clear_answer_and_no_request(tmp_path, fake):
    config = make_config(tmp_path, fake.base_url)
    async with open_app(config) as app:
        outcome, _sink = await say(app, "word " * 5000)
    assert outcome.status is Status.FAILED
    assert "too long" in outcome.notice and "tokens" in outcome.notice
    assert fake.attempts == 0


async def test_context_error_from_vllm_triggers_one_harder_trim(tmp_path, fake):
    config = make_config(tmp_path, fake.base_url)
    async with open_app(config) as app:
        for i in range(4):
            await say(app, f"turn {i}")
        fake.push(Script(context_error=True), Script(text="fine"))
        outcome, _ = await say(app, "and now?")
        assert outcome.status is Status.DONE and outcome.text == "fine"
        fake.push(Script(context_error=True, times=2))
        outcome, _ = await say(app, "again?")
    assert outcome.status is Status.FAILED and "context" in outcome.notice
    retry, failed_first = fake.chat_requests[5], fake.chat_requests[4]
    assert len(retry.body["messages"]) < len(failed_first.body["messages"])
    assert fake.attempts == 8  # exactly one retry each time


async def test_failure_mid_stream_keeps_the_partial_reply(tmp_path, fake):
    config = make_config(tmp_path, fake.base_url)
    fake.push(Script(text="one two three four five six", cut_after=3, cut="rst"))
    async with open_app(config) as app:
        outcome, _sink = await say(app, "count")
        session = await app.store.current_session(SCOPE)
        stored = await app.store.messages_of(session.id)
    assert outcome.status is Status.INTERRUPTED and outcome.text and outcome.notice
    assert stored[1][1] == outcome.text and stored[1][2] is Status.INTERRUPTED


async def test_backend_down_fails_cleanly_and_the_next_turn_works(tmp_path, fake):
    config = make_config(tmp_path, fake.base_url)
    async with open_app(config) as app:
        await fake.stop_listening()
        outcome, _ = await say(app, "anyone there?")
        assert outcome.status is Status.FAILED and "unavailable" in outcome.notice
        await fake.resume_listening()
        outcome, _ = await say(app, "now?")
        assert outcome.status is Status.DONE


async def test_cancelling_a_turn_stores_it_as_cancelled_and_aborts_the_request(tmp_path, fake):
    config = make_config(tmp_path, fake.base_url)
    fake.push(Script(tokens=400, rate=40))
    async with open_app(config) as app:
        task = asyncio.create_task(say(app, "long story please", max_tokens=512))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await fake.next_disconnect(within=1.0)
        session = await app.store.current_session(SCOPE)
        stored = await app.store.messages_of(session.id)
    assert [s for _, _, s in stored] == [Status.CANCELLED, Status.CANCELLED]


async def test_one_generation_at_a_time_per_session(tmp_path):
    async with FakeVLLM(model="tiny", default=Script(tokens=20, rate=100)) as fake:
        config = make_config(tmp_path, fake.base_url)
        async with open_app(config) as app:
            results = await asyncio.gather(*(say(app, f"q{i}") for i in range(3)))
            assert all(o.status is Status.DONE for o, _ in results)
        assert fake.max_in_flight == 1


async def test_metrics_count_turns_and_are_served_on_a_local_port(tmp_path, fake):
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = make_config(tmp_path, fake.base_url)
    config = config.model_copy(update={"metrics": config.metrics.model_copy(update={"port": port})})
    fake.push(Script(text="ok"), Script(status=400))
    async with open_app(config) as app:
        await say(app, "hello")
        await say(app, "again")
        async with httpx.AsyncClient() as http:
            body = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    assert 'bot_turns_total{status="done"} 1.0' in body
    assert 'bot_turns_total{status="failed"} 1.0' in body
    assert 'bot_llm_errors_total{kind="bad_response"} 1.0' in body
    assert 'bot_tokens_total{kind="prompt"}' in body
    assert 'bot_queue{state="waiting"} 0.0' in body
