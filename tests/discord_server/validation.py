"""Strict checks on message bodies, with the status and JSON error code Discord would answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .mentions import allowed_mentions_errors
from .model import Json

Kind = Literal["create", "edit", "webhook", "webhook_edit", "callback"]

_COMMON = {"content", "embeds", "allowed_mentions", "components", "attachments", "flags"}
FIELDS: dict[Kind, set[str]] = {
    "create": _COMMON
    | {"tts", "nonce", "enforce_nonce", "message_reference", "sticker_ids", "poll"},
    # discord.py always sends "tts" (false), also on edits
    "edit": _COMMON | {"tts"},
    "webhook": _COMMON | {"tts", "username", "avatar_url", "thread_name", "applied_tags", "poll"},
    "webhook_edit": _COMMON | {"tts", "poll"},
    "callback": _COMMON | {"tts", "poll"},
}
SUPPRESS_EMBEDS, EPHEMERAL, LOADING = 1 << 2, 1 << 6, 1 << 7
SUPPRESS_NOTIFICATIONS, VOICE_MESSAGE, COMPONENTS_V2 = 1 << 12, 1 << 13, 1 << 15
ALLOWED_FLAGS: dict[Kind, int] = {
    "create": SUPPRESS_EMBEDS | SUPPRESS_NOTIFICATIONS | VOICE_MESSAGE | COMPONENTS_V2,
    "edit": SUPPRESS_EMBEDS | COMPONENTS_V2,
    "webhook": SUPPRESS_EMBEDS | EPHEMERAL | SUPPRESS_NOTIFICATIONS | COMPONENTS_V2,
    "webhook_edit": SUPPRESS_EMBEDS | EPHEMERAL | COMPONENTS_V2,
    "callback": SUPPRESS_EMBEDS | EPHEMERAL | SUPPRESS_NOTIFICATIONS | COMPONENTS_V2,
}
MAX_CONTENT, MAX_EMBEDS, MAX_EMBED_TOTAL = 2000, 10, 6000
EMBED_LIMITS = {"title": 256, "description": 4096}


@dataclass(frozen=True)
class Problem:
    """``status``/``code`` is what Discord answers; status 0: Discord would accept it silently."""

    status: int
    code: int
    text: str


def unknown_fields(body: Json, allowed: set[str], where: str) -> list[Problem]:
    return [Problem(0, 0, f"{where}: unknown field {k!r}") for k in body if k not in allowed]


def message_problems(body: Any, kind: Kind, *, n_files: int = 0) -> list[Problem]:
    if not isinstance(body, dict):
        return [Problem(400, 50109, f"{kind}: body must be a JSON object")]
    out = unknown_fields(body, FIELDS[kind], f"{kind} message")

    def bad(text: str) -> None:
        out.append(Problem(400, 50035, text))

    content = body.get("content")
    if content is not None and not isinstance(content, str):
        bad(f"content must be a string, got {type(content).__name__}")
    elif content is not None and len(content) > MAX_CONTENT:
        bad(f"content: Must be {MAX_CONTENT} or fewer in length (got {len(content)})")
    embeds = body.get("embeds") or []
    if len(embeds) > MAX_EMBEDS:
        bad(f"embeds: Must be {MAX_EMBEDS} or fewer in length (got {len(embeds)})")
    total = 0
    for i, embed in enumerate(embeds):
        for key, limit in EMBED_LIMITS.items():
            if len(embed.get(key) or "") > limit:
                bad(f"embeds.{i}.{key}: Must be {limit} or fewer in length")
        fields = embed.get("fields") or []
        if len(fields) > 25:
            bad(f"embeds.{i}.fields: Must be 25 or fewer in length")
        total += len(embed.get("title") or "") + len(embed.get("description") or "")
        total += sum(len(f.get("name", "")) + len(f.get("value", "")) for f in fields)
        total += len((embed.get("footer") or {}).get("text", "")) + len(
            (embed.get("author") or {}).get("name", "")
        )
    if total > MAX_EMBED_TOTAL:
        bad(f"embeds: total size {total} exceeds {MAX_EMBED_TOTAL}")
    flags = body.get("flags")
    if flags is not None and (not isinstance(flags, int) or flags & ~ALLOWED_FLAGS[kind]):
        bad(f"flags: {flags!r} not allowed on {kind}")
    if "allowed_mentions" in body and body["allowed_mentions"] is not None:
        out.extend(
            Problem(400, 50035, e) for e in allowed_mentions_errors(body["allowed_mentions"])
        )
    for i, att in enumerate(body.get("attachments") or []):
        upload_index = int(att.get("id", -1))
        if 0 <= upload_index < 10_000 and upload_index >= n_files:  # small ids index files[n]
            bad(f"attachments.{i}: refers to files[{upload_index}], which was not uploaded")
    if kind in ("create", "webhook", "callback") and is_empty(body, n_files):
        out.append(Problem(400, 50006, "Cannot send an empty message"))
    return out


def is_empty(body: Json, n_files: int) -> bool:
    return not (
        body.get("content")
        or body.get("embeds")
        or n_files
        or body.get("attachments")
        or body.get("sticker_ids")
        or body.get("components")
        or body.get("poll")
    )


COMMAND_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")
_LOCALIZED = {"name", "name_localizations", "description", "description_localizations"}
COMMAND_FIELDS = _LOCALIZED | {
    "type", "options", "default_member_permissions", "dm_permission", "default_permission",
    "contexts", "integration_types", "nsfw", "handler", "id",
}  # fmt: skip
OPTION_FIELDS = _LOCALIZED | {
    "type", "required", "choices", "options", "channel_types", "min_value", "max_value",
    "min_length", "max_length", "autocomplete",
}  # fmt: skip


def command_problems(commands: Any) -> list[Problem]:
    """Bulk-overwrite body checks: Discord answers 400 50035 to any of these."""
    if not isinstance(commands, list):
        return [Problem(400, 50035, "commands: body must be a list")]
    out: list[Problem] = []
    if len(commands) > 100:
        out.append(Problem(400, 30032, "Maximum number of application commands reached (100)"))
    for cmd in commands:
        out.extend(_option_problems(cmd, cmd.get("name", "?"), top=True))
    return out


def _option_problems(opt: Json, path: str, *, top: bool = False) -> list[Problem]:
    out = unknown_fields(opt, COMMAND_FIELDS if top else OPTION_FIELDS, f"command {path}")
    name = opt.get("name", "")
    ctype = opt.get("type", 1)
    is_chat_input = not top or ctype == 1
    if not (1 <= len(name) <= 32) or (is_chat_input and not set(name) <= COMMAND_NAME_CHARS):
        out.append(Problem(400, 50035, f"{path}: invalid name {name!r}"))
    if is_chat_input and not (1 <= len(opt.get("description", "")) <= 100):
        out.append(Problem(400, 50035, f"{path}: description must be 1-100 characters"))
    subs = opt.get("options") or []
    if len(subs) > 25:
        out.append(Problem(400, 50035, f"{path}: more than 25 options"))
    seen_optional = False
    for sub in subs:
        if sub.get("type") not in (1, 2):
            if sub.get("required"):
                if seen_optional:
                    out.append(
                        Problem(400, 50035, f"{path}: required option after an optional one")
                    )
            else:
                seen_optional = True
        out.extend(_option_problems(sub, f"{path} {sub.get('name', '?')}"))
    return out
