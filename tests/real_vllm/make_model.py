"""Build a tiny random-weight chat model that a real vLLM can serve, with no download.

Run it with the vLLM venv's python (it needs torch, transformers and tokenizers, which the bot's
own venv does not have):

    .venv-vllm/bin/python tests/real_vllm/make_model.py OUT_DIR

What it builds (deterministic for a given Python stdlib, seed and this file):

- a byte-level BPE tokenizer trained with `tokenizers` on local text (Python's own stdlib docs and
  sources, plus a few lines of non-ASCII chat text written here), vocab 4096, special tokens
  `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, and a ChatML chat template;
- a `LlamaForCausalLM` with random weights (init std 0.1): hidden 128, intermediate 256,
  2 layers, 2 heads, 1 KV head, head_dim 64 (vLLM's CPU attention rejects head_dim 16), tied
  embeddings, float32, ~0.8 M parameters, ~3.5 MB on disk.

Its output is gibberish (sometimes with U+FFFD from split UTF-8 bytes); the point is the server's
real behaviour around it: framing, token counts, limits, prefix caching, aborts.

Cache: when OUT_DIR already holds a complete model built by this same file (same fingerprint), it
does nothing. A build goes to a temporary sibling directory that is renamed into place at the
end, so an interrupted or concurrent build never leaves a half-written model behind.
"""

# ruff: noqa: RUF001  (EXTRA_TEXT is non-ASCII on purpose)
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]

VOCAB_SIZE = 4096
SEED = 1234
MAX_POSITION_EMBEDDINGS = 8192  # the server's --max-model-len may be anything up to this

# ChatML. Uses `message['content']` as a string, so vLLM's content-format detection picks
# "string" and flattens OpenAI content-part lists into text before rendering.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Stdlib files used as training text: English prose (pydoc's topic pages) and Python code.
STDLIB_TEXT_FILES = [
    "pydoc_data/topics.py",
    "argparse.py",
    "textwrap.py",
    "difflib.py",
    "dataclasses.py",
    "json/__init__.py",
    "email/message.py",
    "http/client.py",
]

# A little chat-like and non-ASCII text so common non-English bytes get merges too.
EXTRA_TEXT = """\
Hello! How are you today? I'm fine, thanks. Can you help me with my code?
Sure, what's the problem? It says "TypeError: 'NoneType' object is not subscriptable".
Bonjour, ça va ? Très bien, merci. ¿Dónde está la estación? Größe, Straße, naïve café.
こんにちは、元気ですか？ 今日はいい天気ですね。 你好，世界！ 안녕하세요.
Привет, как дела? Γειά σου κόσμε. שלום עולם. مرحبا بالعالم. नमस्ते दुनिया.
Emoji: 👍 👎 😀 🎉 🚀 ❤️ 🤖 🔥 ✅ ❌ — “quotes” ‘single’ … • € £ ¥ © ® ™ ± × ÷ ≤ ≥ ≠ ∞.
@everyone @here <@123456789012345678> <#123456789012345678> https://example.com/path?q=1
```python
def hello(name: str) -> str:
    return f"Hello, {name}!"
```
"""


def fingerprint() -> str:
    """Identifies this recipe: the bytes of this file. The fixture names the cache dir after it."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)
MARKER = "tiny-model.json"


def is_complete(out_dir: Path) -> bool:
    marker = out_dir / MARKER
    if not marker.is_file() or not all((out_dir / f).is_file() for f in REQUIRED_FILES):
        return False
    try:
        return bool(json.loads(marker.read_text())["fingerprint"] == fingerprint())
    except (ValueError, KeyError):
        return False


def training_text() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for rel in STDLIB_TEXT_FILES:
        path = stdlib / rel
        if path.is_file():
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
    if sum(len(t) for t in texts) < 200_000:
        sys.exit(f"too little training text found under {stdlib}")
    texts.append(EXTRA_TEXT * 20)
    # Lines, not whole files: the trainer's unit of work, and pre-tokenisation is per line anyway.
    return [line for text in texts for line in text.splitlines(keepends=True)]


def build_tokenizer(out_dir: Path) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(training_text(), trainer=trainer)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        bos_token=None,
        unk_token=None,
        model_max_length=MAX_POSITION_EMBEDDINGS,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def build_model(out_dir: Path, tokenizer: object) -> int:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    def tid(token: str) -> int:
        return int(tokenizer.convert_tokens_to_ids(token))  # type: ignore[attr-defined]

    config = LlamaConfig(
        vocab_size=len(tokenizer),  # type: ignore[arg-type]
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        tie_word_embeddings=True,
        # With the default 0.02 the tied embeddings dominate the residual stream and greedy
        # decoding just repeats the last prompt token ("\n\n\n..."); 0.1 gives varied,
        # prompt-dependent gibberish, so temperature-0 replies are non-empty and deterministic.
        initializer_range=0.1,
        bos_token_id=tid(ENDOFTEXT),
        eos_token_id=tid(IM_END),
        pad_token_id=tid(ENDOFTEXT),
    )
    config.dtype = "float32"
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tid(ENDOFTEXT),
        eos_token_id=[tid(IM_END), tid(ENDOFTEXT)],
        pad_token_id=tid(ENDOFTEXT),
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def build(out_dir: Path, *, force: bool = False) -> bool:
    """Build the model into out_dir. Returns False when a complete one was already there."""
    out_dir = out_dir.resolve()
    if not force and is_complete(out_dir):
        return False
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.monotonic()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    work.chmod(0o755)
    try:
        tokenizer = build_tokenizer(work)
        params = build_model(work, tokenizer)
        (work / MARKER).write_text(
            json.dumps(
                {
                    "fingerprint": fingerprint(),
                    "seed": SEED,
                    "vocab_size": len(tokenizer),  # type: ignore[arg-type]
                    "parameters": params,
                    "special_tokens": SPECIAL_TOKENS,
                    "python": sys.version.split()[0],
                    "build_seconds": round(time.monotonic() - started, 2),
                },
                indent=2,
            )
            + "\n"
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        try:
            work.rename(out_dir)
        except OSError:
            # A concurrent build won the race; its model is as good as ours.
            if not is_complete(out_dir):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--force", action="store_true", help="rebuild even if complete")
    parser.add_argument(
        "--print-fingerprint", action="store_true", help="print the recipe fingerprint and exit"
    )
    args = parser.parse_args()
    if args.print_fingerprint:
        print(fingerprint())
        return
    started = time.monotonic()
    built = build(args.out_dir, force=args.force)
    what = "built" if built else "already complete:"
    print(f"{what} {args.out_dir} in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
