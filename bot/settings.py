"""Runtime settings changed from Discord: what can be set, validation, and resolution.

Config (deploy time) gives the defaults; a channel's settings override them; a user's own
settings override the channel's in their private sessions. A shared channel session uses the
channel's settings for everyone, so one member cannot change the persona for all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.config import Config
from bot.models import ChannelSettings, ChatSettings, UserSettings

MAX_PERSONA_CHARS = 4000
DEFAULT = "default"  # the value that clears an override


class SettingError(ValueError):
    """A value a user typed is not acceptable; the message says what is."""


@dataclass(frozen=True, slots=True)
class Spec:
    field: str  # column in channel_settings / user_settings
    description: str
    channel_only: bool = False


SPECS: dict[str, Spec] = {
    "persona": Spec("system_prompt", "the system prompt: who the bot is and how it answers"),
    "temperature": Spec("temperature", "randomness, 0 to 2"),
    "reply_length": Spec("max_tokens", "longest reply in tokens, 16 to 4096"),
    "sharing": Spec("shared", "'per-user' (private memory) or 'channel' (one shared memory)", True),
    "auto_threads": Spec(
        "auto_thread", "on/off: a mention opens a thread for the conversation", True
    ),
    "reply_to_everything": Spec(
        "reply_all", "on/off: answer every message, no mention needed", True
    ),
}

_ON = {"on", "true", "yes", "1", "enable", "enabled"}
_OFF = {"off", "false", "no", "0", "disable", "disabled"}


def parse(name: str, raw: str) -> Any:
    """Validate a typed value; None means "back to the default". Raises SettingError."""
    if name not in SPECS:
        raise SettingError(f"Unknown setting '{name}'. Try one of: {', '.join(SPECS)}.")
    value = raw.strip()
    if value.lower() == DEFAULT:
        return None
    if name == "persona":
        if not value:
            raise SettingError("The persona cannot be empty (use 'default' to clear it).")
        if len(value) > MAX_PERSONA_CHARS:
            raise SettingError(f"The persona is limited to {MAX_PERSONA_CHARS} characters.")
        return value
    if name == "temperature":
        number = _number(value, float)
        if not 0.0 <= number <= 2.0:
            raise SettingError("Temperature must be between 0 and 2.")
        return number
    if name == "reply_length":
        tokens = _number(value, int)
        if not 16 <= tokens <= 4096:
            raise SettingError("Reply length must be between 16 and 4096 tokens.")
        return tokens
    if name == "sharing":
        if value.lower() in {"per-user", "user", "private"}:
            return 0
        if value.lower() in {"channel", "shared", "everyone"}:
            return 1
        raise SettingError("Sharing must be 'per-user' or 'channel'.")
    lowered = value.lower()
    if lowered in _ON:
        return 1
    if lowered in _OFF:
        return 0
    raise SettingError(f"'{name}' must be on or off.")


def _number(text: str, kind: type[int] | type[float]) -> Any:
    try:
        number = kind(text)
    except ValueError:
        raise SettingError(f"'{text[:40]}' is not a number.") from None
    if number != number or number in (float("inf"), float("-inf")):  # NaN, infinities
        raise SettingError(f"'{text[:40]}' is not a usable number.")
    return number


def resolve(
    config: Config, channel: ChannelSettings, user: UserSettings, *, shared: bool
) -> ChatSettings:
    chat = config.chat
    layers: list[ChannelSettings | UserSettings] = [channel] if shared else [channel, user]

    def pick(name: str, default: Any) -> Any:
        value = default
        for layer in layers:
            if getattr(layer, name) is not None:
                value = getattr(layer, name)
        return value

    return ChatSettings(
        system_prompt=pick("system_prompt", chat.system_prompt),
        temperature=pick("temperature", chat.temperature),
        top_p=chat.top_p,
        max_tokens=pick("max_tokens", chat.max_tokens),
        time_awareness=chat.time_awareness,
    )


def describe(settings: ChatSettings, channel: ChannelSettings, *, shared: bool) -> list[str]:
    """Lines for /settings show."""
    persona = settings.system_prompt
    if len(persona) > 300:
        persona = persona[:300] + "…"
    return [
        f"**persona**: {persona}",
        f"**temperature**: {settings.temperature}",
        f"**reply_length**: {settings.max_tokens} tokens",
        f"**sharing**: {'channel (one shared memory)' if shared else 'per-user (private memory)'}",
        f"**auto_threads**: {'on' if channel.auto_thread else 'off'}",
        f"**reply_to_everything**: {'on' if channel.reply_all else 'off'}",
    ]
