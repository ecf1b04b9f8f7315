"""Splitting a reply into Discord messages of at most 2000 characters. Pure functions.

Cuts fall on a line break if there is one in the second half of the window, else on a space,
else at the limit (never inside a combining sequence). A code block that spans a cut is closed
at the end of one part and reopened, with its language, at the start of the next, so every part
renders as intended. The split of a prefix never changes once the text has grown past it, so a
streaming reply only ever edits its last part.
"""

from __future__ import annotations

import unicodedata

DISCORD_LIMIT = 2000
FENCE = "```"


def _open_fence(text: str, fence: str | None) -> str | None:
    """The opening line of the code block still open at the end of ``text``, if any."""
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped.startswith(FENCE):
            fence = None if fence is not None else stripped
    return fence


def _joins(text: str, index: int) -> bool:
    """True if cutting before ``text[index]`` would split a combined character."""
    if index <= 0 or index >= len(text):
        return False
    here, before = text[index], text[index - 1]
    return (
        unicodedata.category(here) in {"Mn", "Me", "Mc"}
        or here in "\u200d\ufe0f\ufe0e"
        or before == "\u200d"
        or "\U0001f3fb" <= here <= "\U0001f3ff"  # skin-tone modifiers
    )


def _cut(text: str, room: int) -> int:
    window = text[:room]
    for separator in ("\n", " "):
        index = window.rfind(separator)
        if index >= room // 2:
            return index + 1  # the separator stays with the part it ends
    cut = room
    while cut > room // 2 and _joins(text, cut):
        cut -= 1
    return cut


def split_reply(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """Split ``text`` into parts of at most ``limit`` characters; [] for empty text."""
    parts: list[str] = []
    fence: str | None = None
    rest = text
    while rest:
        reopen = f"{fence}\n" if fence else ""
        if len(reopen) + len(rest) <= limit:
            parts.append(reopen + rest)
            break
        room = limit - len(reopen) - len(FENCE) - 1  # leave room to close a code block
        cut = _cut(rest, room)
        chunk, rest = rest[:cut], rest[cut:]
        fence = _open_fence(chunk, fence)
        if fence:
            chunk += FENCE if chunk.endswith("\n") else "\n" + FENCE
        parts.append(reopen + chunk)
    return parts
