"""Turn a stream of token ids into text deltas without ever splitting a character.

V4's byte-level BPE maps every byte to a printable stand-in character (the GPT-2 table), and
one token may end in the middle of a multi-byte UTF-8 character (`💡` is `ĠðŁĴ` + `¡`).
Decoding token by token would print replacement characters; instead we collect bytes and
let an incremental UTF-8 decoder hold back an incomplete tail until the next token completes
it. Invalid bytes become U+FFFD, as in `Tokenizer.decode`.
"""

from __future__ import annotations

import codecs
import functools
from typing import Protocol


class _TokenTexts(Protocol):
    def id_to_token(self, tid: int) -> str: ...


@functools.lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """The GPT-2 byte-level table, inverted: stand-in character -> byte value."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:  # unprintable bytes map to code points from 256 on, in order
            table[b] = 256 + extra
            extra += 1
    return {chr(cp): b for b, cp in table.items()}


def token_bytes(token: str) -> bytes:
    """The bytes a vocabulary entry stands for.

    Byte-level entries use only stand-in characters; added tokens such as `<｜User｜>` are
    literal text (an added token made only of stand-ins, like `<think>`, is ASCII and reads
    the same either way).
    """
    table = byte_decoder()
    if all(ch in table for ch in token):
        return bytes(table[ch] for ch in token)
    return token.encode("utf-8")


class IncrementalDetokenizer:
    """`push` one token id at a time and get the new text; `flush` at the end."""

    def __init__(self, tokenizer: _TokenTexts) -> None:
        self._tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._cache: dict[int, bytes] = {}

    def _bytes(self, tid: int) -> bytes:
        data = self._cache.get(tid)
        if data is None:
            data = self._cache[tid] = token_bytes(self._tokenizer.id_to_token(tid))
        return data

    def push(self, token_id: int) -> str:
        """Text completed by this token (possibly empty while a character is still open)."""
        return self._decoder.decode(self._bytes(token_id))

    def flush(self) -> str:
        """Whatever is left: an unfinished character becomes U+FFFD."""
        return self._decoder.decode(b"", final=True)
