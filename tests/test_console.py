"""`python -m bot console`, non-interactively: one reply per input line, memory across runs."""

import os

from tests.conftest import REPO
from tests.fake_vllm import FakeVLLM, Script
from tests.process import run_bot


async def run_console(env: dict[str, str], stdin: str, *args: str) -> tuple[int, str, str]:
    return await run_bot(env, "console", *args, stdin=stdin)


async def test_console_replies_per_line_and_remembers_the_session(tmp_path):
    async with FakeVLLM(model="tiny") as fake:
        env = {
            **os.environ,
            "LLM_BASE_URL": fake.base_url,
            "DATABASE_PATH": str(tmp_path / "bot.sqlite3"),
            "BOT_CONFIG": str(REPO / "config" / "bot.toml"),
        }
        fake.push(Script(text="Hello Ann!"), Script(text="Noted: blue."))
        code, out, err = await run_console(
            env, "I am Ann\n\nMy favourite colour is blue\n", "--session", "demo"
        )
        assert code == 0, err
        assert out.splitlines() == ["Hello Ann!", "Noted: blue."]

        fake.push(Script(text="Your favourite colour is blue."))
        code, out, err = await run_console(
            env, "What is my favourite colour?\n", "--session", "demo"
        )
        assert code == 0, err
        assert out.strip() == "Your favourite colour is blue."
        remembered = " ".join(m["content"] for m in fake.chat_requests[-1].body["messages"])
        assert "My favourite colour is blue" in remembered and "Noted: blue." in remembered

        code, out, err = await run_console(env, "hi\n", "--session", "other")
        other = " ".join(m["content"] for m in fake.chat_requests[-1].body["messages"])
        assert "blue" not in other


async def test_console_says_when_the_backend_is_down(tmp_path):
    async with FakeVLLM(model="tiny") as fake:
        env = {
            **os.environ,
            "LLM_BASE_URL": fake.base_url,
            "LLM_RETRY_BACKOFF": "0.01",
            "DATABASE_PATH": str(tmp_path / "bot.sqlite3"),
        }
        await fake.stop_listening()
        code, out, _err = await run_console(env, "hello?\n")
    assert code == 0
    assert "unavailable" in out


async def test_bad_setting_stops_start_with_one_line(tmp_path):
    env = {**os.environ, "LLM_BASE_URL": "not-a-url", "DATABASE_PATH": str(tmp_path / "x.db")}
    code, _out, err = await run_console(env, "")
    assert code == 78
    assert err.strip() == "config error: LLM_BASE_URL: must be an http:// or https:// URL"
