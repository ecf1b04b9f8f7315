"""Deploy-time configuration: a TOML file overridden by the environment, read once at start.

Every setting is ``SECTION_FIELD`` in the environment and ``[section] field`` in TOML, so the
names the issues fix (``DISCORD_TOKEN``, ``LLM_BASE_URL``, ``LLM_MODEL``, ``DATABASE_PATH``,
``DISCORD_API_BASE``, ``DISCORD_GATEWAY_URL``) fall out of the structure rather than being
special-cased. Runtime *settings* changed from Discord live in the database, not here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_CONFIG_PATH = Path("config/bot.toml")
CONFIG_ENV = "BOT_CONFIG"

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful, friendly assistant chatting in a Discord community. "
    "Answer concisely and use Markdown sparingly. "
    "Each user message starts with a bracketed note of when it was sent; use it to reason "
    "about time, but never repeat it."
)


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or len(value) < 10:
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


def _ws_url(value: str) -> str:
    if not value.startswith(("ws://", "wss://")):
        raise ValueError("must be a ws:// or wss:// URL")
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]
WsUrl = Annotated[str, AfterValidator(_ws_url)]
Positive = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    # Unrelated environment variables such as DATABASE_URL must not break start-up, so extra
    # keys are ignored here; typos in the TOML file are caught by _StrictToml instead.
    model_config = ConfigDict(extra="ignore", frozen=True)


class LLMConfig(_Section):
    base_url: HttpUrl = "http://127.0.0.1:8000/v1"
    model: str | None = None  # None: the first model the server lists
    api_key: SecretStr | None = None  # vLLM's --api-key, if set
    connect_timeout: Positive = 5.0
    # Longest silence allowed between two streamed chunks (and before the first one).
    read_timeout: Positive = 60.0
    retries: Annotated[int, Field(ge=0, le=5)] = 2
    retry_backoff: Positive = 0.5
    # Consecutive failures that open the circuit, and how long it stays open.
    breaker_failures: Annotated[int, Field(ge=1)] = 3
    breaker_cooldown: Positive = 15.0
    show_reasoning: bool = False
    tokenizer: Literal["cl100k_base", "o200k_base"] = "cl100k_base"
    # Tokens kept free besides the reply, for tokenizer mismatch and chat framing.
    context_margin: Annotated[int, Field(ge=0)] = 64
    # When the context is over budget, drop whole old pairs until it fits in this share.
    # 0.6: 86 % of each prompt reused from vLLM's prefix cache with 70 % of the budget filled on
    # average (0.65: 84 %); bench/ figure 3 measures both.
    low_watermark: Annotated[float, Field(gt=0.1, lt=1.0)] = 0.6
    # Used only when the server does not report max_model_len.
    fallback_context: Annotated[int, Field(ge=256)] = 4096


class ChatConfig(_Section):
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.7
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    max_tokens: Annotated[int, Field(ge=16, le=8192)] = 512
    time_awareness: bool = True


class DiscordConfig(_Section):
    token: SecretStr | None = None
    api_base: HttpUrl = "https://discord.com/api/v10"
    gateway_url: WsUrl = "wss://gateway.discord.gg/"
    edit_interval: Positive = 1.0
    typing: bool = True
    ping_author: bool = False
    guild_ready_timeout: Positive = 2.0
    reactions_up: tuple[str, ...] = ("\N{THUMBS UP SIGN}",)
    reactions_down: tuple[str, ...] = ("\N{THUMBS DOWN SIGN}",)
    attachment_max_bytes: Annotated[int, Field(ge=0)] = 100_000
    # Users who may run admin commands anywhere, besides members with Manage Server.
    admin_user_ids: tuple[int, ...] = ()


class DatabaseConfig(_Section):
    path: Path = Path("data/bot.sqlite3")
    busy_timeout_ms: Annotated[int, Field(ge=0)] = 5000


class LimitsConfig(_Section):
    max_concurrency: Annotated[int, Field(ge=1)] = 4
    queue_size: Annotated[int, Field(ge=0)] = 32
    user_turns_per_minute: Annotated[int, Field(ge=1)] = 6
    user_burst: Annotated[int, Field(ge=1)] = 3
    max_message_chars: Annotated[int, Field(ge=1)] = 8000
    shutdown_grace: Positive = 20.0


class ExportConfig(_Section):
    # Key for pseudonymising user ids in exports; generated and stored in the DB if unset.
    pseudonym_key: SecretStr | None = None


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Off by default: message content never reaches the logs unless an admin asks for it.
    log_content: bool = False


class MetricsConfig(_Section):
    port: Annotated[int, Field(ge=0, le=65535)] = 0  # 0: off
    host: str = "127.0.0.1"


class Config(BaseSettings):
    """All deploy-time configuration. Build it with :func:`load_config`."""

    model_config = SettingsConfigDict(
        env_nested_delimiter="_",
        env_nested_max_split=1,
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    llm: LLMConfig = LLMConfig()
    chat: ChatConfig = ChatConfig()
    discord: DiscordConfig = DiscordConfig()
    database: DatabaseConfig = DatabaseConfig()
    limits: LimitsConfig = LimitsConfig()
    export: ExportConfig = ExportConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()

    @model_validator(mode="before")
    @classmethod
    def _credentials(cls, data: Any) -> Any:
        """Read the token from a systemd credential when no other source set it."""
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        token_file = Path(creds, "discord_token") if creds else None
        if isinstance(data, dict) and token_file is not None and token_file.is_file():
            section = dict(data.get("discord") or {})
            section.setdefault("token", token_file.read_text().strip())
            data = {**data, "discord": section}
        return data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = _StrictToml(settings_cls, toml_file=_config_path())
        return init_settings, env_settings, dotenv_settings, toml


class _StrictToml(TomlConfigSettingsSource):
    """The TOML source, refusing keys no setting has (a typo would otherwise do nothing)."""

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        fields = Config.model_fields
        for section, values in data.items():
            if section not in fields:
                raise ConfigError(f"config error: unknown section [{section}] in the TOML file")
            model = fields[section].annotation
            known = model.model_fields if isinstance(model, type) else {}
            for key in values if isinstance(values, dict) else ():
                if key not in known:
                    raise ConfigError(f"config error: unknown setting {section}.{key} in TOML")
        return data


def _config_path() -> Path | None:
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{CONFIG_ENV}: no such file: {path}")
        return path
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


class ConfigError(Exception):
    """A setting is missing or invalid; the message names it in one line."""


def _env_name(loc: tuple[int | str, ...]) -> str:
    return "_".join(str(part) for part in loc[:2]).upper()


def load_config(**overrides: Any) -> Config:
    """Read the TOML file and the environment once; raise ConfigError naming a bad setting."""
    try:
        return Config(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = _env_name(err["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"config error: {name}: {msg}{more}") from None
    except ValueError as exc:  # TOML syntax errors surface as tomllib.TOMLDecodeError
        raise ConfigError(f"config error: {exc}") from None
