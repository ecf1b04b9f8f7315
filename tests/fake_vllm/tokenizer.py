"""A deterministic toy tokenizer, a ChatML chat template and a simulated prefix cache.

The tokenizer is GPT-2-like but tiny: a special token, or an optional space plus a run of word
characters, or an optional space plus a run of punctuation, or whitespace. Joining a text's
pieces gives the text back exactly, so streamed pieces reassemble to the scripted reply.
"""

from __future__ import annotations

import re
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

SPECIAL_TOKENS = {
    "<|endoftext|>": 0,
    "<|im_start|>": 1,
    "<|im_end|>": 2,
    "<think>": 3,
    "</think>": 4,
}
VOCAB_SIZE = 4096
_PIECE = re.compile(
    r"<\|endoftext\|>|<\|im_start\|>|<\|im_end\|>|</?think>"
    r"| ?\w+| ?[^\s\w<]+| ?<|\s+(?!\S)|\s+"
)


def pieces(text: str) -> list[str]:
    """Split text into token strings; `"".join(pieces(t)) == t`."""
    return _PIECE.findall(text)


@lru_cache(maxsize=65536)
def token_id(piece: str) -> int:
    special = SPECIAL_TOKENS.get(piece)
    if special is not None:
        return special
    return len(SPECIAL_TOKENS) + zlib.crc32(piece.encode()) % (VOCAB_SIZE - len(SPECIAL_TOKENS))


def encode(text: str) -> list[int]:
    return [token_id(p) for p in pieces(text)]


def message_text(content: Any) -> str:
    """The text of an OpenAI message `content`: a string or a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def render_chat(messages: Sequence[Any], add_generation_prompt: bool = True) -> str:
    """ChatML, as the tokenizer of the real test model (facts.md) uses."""
    parts = [
        f"<|im_start|>{m.get('role', 'user')}\n{message_text(m.get('content'))}<|im_end|>\n"
        for m in messages
        if isinstance(m, dict)
    ]
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


LOREM = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do"]


def lorem_pieces(n: int) -> list[str]:
    """n one-token pieces of filler text."""
    return [(" " if i else "") + LOREM[i % len(LOREM)] for i in range(n)]


class PrefixCache:
    """vLLM-style automatic prefix caching over full blocks of token ids, with LRU eviction.

    A block's hash chains its parent's, so only a shared *prefix* hits. As in vLLM the last
    prompt token is always recomputed, so a full hit reports at most `len - 1` tokens rounded
    down to a block.
    """

    def __init__(self, block_size: int = 16, capacity_blocks: int = 8192) -> None:
        self.block_size = block_size
        self.capacity = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def _hashes(self, ids: Sequence[int], salt: str | None) -> Iterable[int]:
        parent = hash(("salt", salt))
        for start in range(0, len(ids) - self.block_size + 1, self.block_size):
            parent = hash((parent, tuple(ids[start : start + self.block_size])))
            yield parent

    def lookup(self, ids: Sequence[int], salt: str | None = None) -> int:
        """Number of leading prompt tokens found in the cache."""
        max_blocks = max(len(ids) - 1, 0) // self.block_size
        hits = 0
        for h in self._hashes(ids[: max_blocks * self.block_size], salt):
            if h not in self._blocks:
                break
            self._blocks.move_to_end(h)
            hits += 1
        return hits * self.block_size

    def store(self, ids: Sequence[int], salt: str | None = None) -> None:
        for h in self._hashes(ids, salt):
            self._blocks[h] = None
            self._blocks.move_to_end(h)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)

    def clear(self) -> None:
        self._blocks.clear()
