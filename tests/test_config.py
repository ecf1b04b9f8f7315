"""Config: TOML defaults overridden by the environment, one clear line for a bad value."""

from pathlib import Path

import pytest

from bot.config import ConfigError, load_config


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env or config/bot.toml from the checkout
    for name in (
        "BOT_CONFIG",
        "DISCORD_TOKEN",
        "LLM_BASE_URL",
        "LLM_MODEL",
        "DATABASE_PATH",
        "DISCORD_API_BASE",
        "DISCORD_GATEWAY_URL",
        "CREDENTIALS_DIRECTORY",
    ):
        monkeypatch.delenv(name, raising=False)


def test_toml_file_is_read_and_environment_wins(monkeypatch, tmp_path):
    toml = tmp_path / "bot.toml"
    toml.write_text(
        '[llm]\nbase_url = "http://gpu:8000/v1"\nmodel = "a"\n[chat]\ntemperature = 0.2\n'
    )
    monkeypatch.setenv("BOT_CONFIG", str(toml))
    monkeypatch.setenv("LLM_MODEL", "b")
    config = load_config()
    assert config.llm.base_url == "http://gpu:8000/v1"
    assert config.llm.model == "b"
    assert config.chat.temperature == 0.2


def test_fixed_names_reach_their_settings(monkeypatch):
    monkeypatch.setenv("DISCORD_TOKEN", "tok-123")
    monkeypatch.setenv("DISCORD_API_BASE", "http://127.0.0.1:5000/api/v10")
    monkeypatch.setenv("DISCORD_GATEWAY_URL", "ws://127.0.0.1:5000/")
    monkeypatch.setenv("DATABASE_PATH", "/tmp/x.sqlite3")
    monkeypatch.setenv("LLM_BASE_URL", "http://127.0.0.1:8000/v1/")
    config = load_config()
    assert config.discord.token is not None
    assert config.discord.token.get_secret_value() == "tok-123"
    assert "tok-123" not in repr(config) and "tok-123" not in str(config)
    assert config.discord.api_base == "http://127.0.0.1:5000/api/v10"
    assert config.discord.gateway_url == "ws://127.0.0.1:5000/"
    assert str(config.database.path) == "/tmp/x.sqlite3"
    assert config.llm.base_url == "http://127.0.0.1:8000/v1"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("LLM_BASE_URL", "localhost:8000", "config error: LLM_BASE_URL: must be an http"),
        ("LLM_READ_TIMEOUT", "0", "config error: LLM_READ_TIMEOUT: Input should be greater than 0"),
        ("CHAT_TEMPERATURE", "hot", "config error: CHAT_TEMPERATURE:"),
        ("DISCORD_GATEWAY_URL", "http://x/", "config error: DISCORD_GATEWAY_URL: must be a ws"),
    ],
)
def test_bad_value_is_one_line_naming_the_setting(monkeypatch, name, value, expected):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_config()
    message = str(info.value)
    assert message.startswith(expected)
    assert "\n" not in message


def test_unrelated_environment_variables_do_not_break_start(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://elsewhere")
    monkeypatch.setenv("DISCORD_WEBHOOK", "https://example.invalid")
    assert load_config().database.path == Path("data/bot.sqlite3")


def test_typo_in_toml_is_refused(monkeypatch, tmp_path):
    toml = tmp_path / "bot.toml"
    toml.write_text("[llm]\nbase_urll = 'http://x:1/v1'\n")
    monkeypatch.setenv("BOT_CONFIG", str(toml))
    with pytest.raises(ConfigError, match=r"llm\.base_urll"):
        load_config()


def test_missing_config_file_named(monkeypatch, tmp_path):
    monkeypatch.setenv("BOT_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="BOT_CONFIG: no such file"):
        load_config()


def test_token_from_systemd_credential(monkeypatch, tmp_path):
    (tmp_path / "discord_token").write_text("cred-token\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    token = load_config().discord.token
    assert token is not None and token.get_secret_value() == "cred-token"


def test_committed_defaults_are_valid(monkeypatch):
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("BOT_CONFIG", str(repo / "config" / "bot.toml"))
    config = load_config()
    assert config.llm.low_watermark == 0.6
