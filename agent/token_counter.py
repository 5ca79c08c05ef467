"""Exact V4 token counts for a few small texts, without loading the full tokenizer.

Loading the official tokenizer costs ~0.3-0.5 s of CPU (it parses a 6 MB JSON file and
builds its tables), which is most of a re-index after a one-file change. This counter runs
the same algorithm as the official one for plain text, in Python, on tables kept in a
compact `marshal` file that loads in ~0.05 s:

1. pre-tokenization: the tokenizer's three `Split` regexes in sequence (digit runs of up
   to three, CJK runs, then the word/punctuation/space pattern), each keeping both the
   matches and the text between them;
2. byte-level mapping: each UTF-8 byte of a pre-token is one initial symbol;
3. BPE: repeatedly merge the adjacent pair with the lowest merge rank (leftmost on ties)
   until no pair has a merge.

Plain ASCII text (no control characters but tab and line ends), which is nearly all source
code, takes a shortcut: one stdlib regex pass (`_ASCII_PIECES`) yields exactly the pieces of the
three `Split` passes, ~5x faster (tests compare both over real source trees and random text).

Out of scope, so `count` returns None and the caller uses the official tokenizer: text
holding an added token (the control tokens; `packer.normalise_text` defuses them in file
text), characters unassigned in Python's Unicode database (the regex engines' newer tables
may classify them differently), and pre-tokens over 256 characters (a run of thousands of
spaces; BPE here is quadratic in the length).
Tests compare the counts with the official tokenizer's over real source trees.
"""

from __future__ import annotations

import functools
import json
import marshal
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from .packer import SPECIAL_TOKEN as _SPECIAL

# The pre-tokenizer is read from `tokenizer.json` itself when the tables are built: this
# counter supports exactly a Sequence of `Split` (Isolated) regexes then a ByteLevel step
# without prefix space or regex, which is what the V4 file holds (anything else raises).
# Longer pre-tokens (a run of thousands of spaces or dashes) go to the official tokenizer.
_MAX_PIECE = 256
# Bump when the table layout changes.
_TABLE_VERSION = 3
_SHIFT = 20  # bits per symbol id in a packed pair key (ids < 2**17)
_ID_MASK = (1 << _SHIFT) - 1
_NO_MERGE = 1 << 62  # above every packed (rank, id) value

# The V4 pre-tokenizer's three passes (digit runs of up to three; CJK runs; the
# word/punctuation/space pattern) as one pattern, valid for ASCII text whose only control
# characters are tab, CR and LF. There every character is a digit, a letter (\p{L}), one of
# the ASCII punctuation and symbol characters (\p{P} or \p{S}), or one of the four
# whitespace characters. The digit pass isolates digit runs first, so the word pattern never
# sees a digit: here no branch but the first consumes one, the optional leading character
# before a word is space or tab only, and the "spaces not followed by a non-space" branch
# treats a following digit like the end of text.
_PUNCT = r"!-/:-@\[-`{-~"
_ASCII_PIECES = re.compile(
    r"[0-9]{1,3}"
    rf"|[{_PUNCT}][A-Za-z]+"
    r"|[ \t]?[A-Za-z]+"
    rf"| ?[{_PUNCT}]+[\r\n]*"
    r"|[ \t\r\n]*[\r\n]+"
    rf"|[ \t\r\n]+(?![A-Za-z{_PUNCT}])"
    r"|[ \t\r\n]+"
)
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NOT_PLAIN = re.compile(r"[^\t\n\r -~]")  # outside the shortcut's alphabet
# What follows a line end where a text may be cut (spaces or tabs, then a non-space in
# Python's sense, which is a non-space in the tokenizer's regex engine too).
_CUT_FOLLOWS = re.compile(r"[ \t]*\S")
# The same three passes as one pattern for any text (the `regex` module, VERSION1 for set
# operations), ~2x faster than running them in turn. The digit pass isolates every \p{N}
# and the CJK pass every run of the CJK ranges (_CJK), so the word/punctuation/space branches
# never see those characters: their classes leave them out, and "spaces not followed by a
# non-space" treats one as the end of text. Inside a CJK run, the third pass still cuts
# letters and marks from punctuation and symbols (・, ゛ and ゠ lie in those ranges): the
# first two branches after the digits do that.
_CJK = "\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff"
_V4_COMBINED = (
    r"(?V1)\p{N}{1,3}"
    rf"|[[{_CJK}]&&[^\p{{L}}\p{{P}}\p{{S}}]]?[[{_CJK}]&&[\p{{L}}\p{{M}}]]+"
    rf"|[[{_CJK}]&&[\p{{P}}\p{{S}}]]+"
    r"|[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+"
    rf"|[^\r\n\p{{L}}\p{{P}}\p{{S}}\p{{N}}{_CJK}]?[[\p{{L}}\p{{M}}]--[{_CJK}]]+"
    rf"| ?[[\p{{P}}\p{{S}}]--[{_CJK}]]+[\r\n]*"
    r"|\s*[\r\n]+"
    rf"|\s+(?![^\s\p{{N}}{_CJK}])"
    r"|\s+"
)
# The `Split` regexes `_ASCII_PIECES` and `_V4_COMBINED` stand for, exactly as tokenizer.json
# writes them; with any others the counter runs them as given.
V4_SPLIT_PATTERNS = (
    r"\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?"
    "[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
)


@dataclass(frozen=True)
class _Tables:
    byte_ids: list[int]
    """Symbol id of each byte value (the byte-level alphabet)."""
    merges: dict[int, int]
    """(left << _SHIFT | right) -> (rank << _SHIFT | merged id)."""
    patterns: list[str]
    """The pre-tokenizer's Split regexes, in order, as written in tokenizer.json."""
    byte_pairs: list[int]
    """`merges` of the symbols of two bytes, by (first byte << 8 | second byte); _NO_MERGE
    where they do not merge (every piece starts as bytes: one list index per pair instead of
    a shift and a dict lookup)."""


class TokenCounter:
    """Counts V4 tokens of plain text; `count` is None for text it does not handle."""

    def __init__(self, tables: _Tables) -> None:
        self._tables = tables
        self._ascii_shortcut = tuple(tables.patterns) == V4_SPLIT_PATTERNS
        self._words: dict[str, int] = {}

    @functools.cached_property
    def _patterns(self) -> list:
        """The `Split` regexes compiled (by `regex`, imported only when plain ASCII text
        does not do: ~15-30 ms of a one-file re-index)."""
        import regex

        return [regex.compile(p) for p in self._tables.patterns]

    @functools.cached_property
    def _combined(self):
        """`_V4_COMBINED` compiled, when the patterns are V4's (else None)."""
        import regex

        return regex.compile(_V4_COMBINED) if self._ascii_shortcut else None

    def count(self, text: str) -> int | None:
        """Exact V4 token count of `text`, or None when the text is out of scope."""
        if not _in_scope(text) or _SPECIAL.search(text):
            return None
        words = self._words
        pieces = self._pretokenize(text)
        try:
            return sum(map(words.__getitem__, pieces))  # every piece seen before
        except KeyError:
            pass
        total = 0
        for piece in pieces:
            n = words.get(piece)
            if n is None:
                if len(piece) > _MAX_PIECE:
                    return None  # the merge loop is quadratic in the piece's length
                n = words[piece] = self._bpe_count(piece)
            total += n
        return total

    def _pretokenize(self, text: str) -> list[str]:
        if not self._ascii_shortcut:
            return self._pretokenize_general(text)
        if text.isascii() and not _ASCII_CONTROL.search(text):
            return _ASCII_PIECES.findall(text)
        # Mixed text: the stretches around other characters take the general path, the rest
        # the shortcut. A stretch is cut only where a line end is followed by a line holding a
        # non-space: every branch that takes a line end stops at the last one of its run of
        # whitespace (or takes only more line ends), so no piece crosses such a cut.
        pieces: list[str] = []
        pos = 0
        while (odd := _NOT_PLAIN.search(text, pos)) is not None:
            start = _cut_before(text, pos, odd.start())
            end = _cut_after(text, odd.start())
            pieces += _ASCII_PIECES.findall(text, pos, start)
            pieces += self._pretokenize_general(text[start:end])
            pos = end
        return pieces + _ASCII_PIECES.findall(text, pos)

    def _pretokenize_general(self, text: str) -> list[str]:
        """Pieces of any text: one pass of `_V4_COMBINED` for the V4 patterns, else the
        `Split` passes in sequence."""
        if self._combined is not None:
            return _split_isolated(self._combined, text)
        return self._pretokenize_passes(text)

    def _pretokenize_passes(self, text: str) -> list[str]:
        """The `Split` passes in sequence, as the tokenizer runs them (the reference)."""
        pieces = [text]
        for pattern in self._patterns:
            pieces = [part for piece in pieces for part in _split_isolated(pattern, piece)]
        return pieces

    def _bpe_count(self, piece: str) -> int:
        """Symbols left once BPE has merged the piece's bytes (lowest merge rank first, the
        leftmost pair on ties), the rank of each adjacent pair kept and updated next to a
        merge only."""
        raw = piece.encode("utf-8")
        if len(raw) < 2:
            return len(raw)
        tables = self._tables
        byte_ids, byte_pairs, get = tables.byte_ids, tables.byte_pairs, tables.merges.get
        ids = [byte_ids[b] for b in raw]
        ranks = [byte_pairs[a << 8 | b] for a, b in zip(raw, raw[1:], strict=False)]
        while True:
            best = min(ranks)
            if best == _NO_MERGE:
                return len(ids)
            i = ranks.index(best)
            merged = best & _ID_MASK
            ids[i] = merged
            del ids[i + 1]
            del ranks[i]
            if not ranks:
                return 1
            if i:
                ranks[i - 1] = get(ids[i - 1] << _SHIFT | merged, _NO_MERGE)
            if i < len(ranks):
                ranks[i] = get(merged << _SHIFT | ids[i + 1], _NO_MERGE)


@functools.lru_cache(maxsize=4)
def load(tokenizer_file: Path, cache_dir: Path) -> TokenCounter:
    """The counter for `tokenizer_file` (once per process), its tables built on first use
    (or when the file kept in `cache_dir` is unreadable; ~0.5 s from the JSON) and read
    back later (~0.05 s)."""
    path = _table_path(tokenizer_file, cache_dir)
    try:
        return from_table_file(path)
    except (OSError, EOFError, ValueError, TypeError):
        _write_atomic(path, marshal.dumps(_build_tables(tokenizer_file)))
        return from_table_file(path)


def table_file(tokenizer_file: Path, cache_dir: Path) -> Path:
    """The counter's table file for `tokenizer_file` in `cache_dir`, built there if missing.
    Not read here: a damaged one fails where it is read, and `load` rebuilds it."""
    path = _table_path(tokenizer_file, cache_dir)
    if not path.is_file():
        _write_atomic(path, marshal.dumps(_build_tables(tokenizer_file)))
    return path


def from_table_file(path: Path) -> TokenCounter:
    """A counter on tables written by `table_file` (raises OSError, ValueError... if bad)."""
    return TokenCounter(_read_tables(path))


def _table_path(tokenizer_file: Path, cache_dir: Path) -> Path:
    st = os.stat(tokenizer_file)
    return cache_dir / f"v4-bpe-{_TABLE_VERSION}-{st.st_size}-{st.st_mtime_ns}.marshal"


def _read_tables(path: Path) -> _Tables:
    byte_ids, merges, patterns, byte_pairs = marshal.loads(path.read_bytes())
    return _Tables(byte_ids, merges, patterns, byte_pairs)


def _cut_before(text: str, lo: int, at: int) -> int:
    """The last safe cut (see `TokenCounter._pretokenize`) in [lo, at]; `lo` is one."""
    while (nl := text.rfind("\n", lo, at)) >= 0:
        if _CUT_FOLLOWS.match(text, nl + 1):
            return nl + 1
        at = nl
    return lo


def _cut_after(text: str, at: int) -> int:
    """The first safe cut after `at`, or the end of the text."""
    while (nl := text.find("\n", at)) >= 0:
        if _CUT_FOLLOWS.match(text, nl + 1):
            return nl + 1
        at = nl + 1
    return len(text)


def _in_scope(text: str) -> bool:
    """Whether every character is one both regex engines classify alike: ASCII, or assigned
    in this Python's Unicode database (older than either engine's tables)."""
    if text.isascii():
        return True
    unusual = {c for c in text if c > "\x7f"}
    return all(unicodedata.category(c) != "Cn" for c in unusual)


def _split_isolated(pattern, text: str) -> list[str]:
    """`text` cut into the matches of `pattern` and the stretches between them."""
    if not pattern.groups:
        parts = pattern.findall(text)
        if sum(map(len, parts)) == len(text) and "" not in parts:
            return parts  # the matches tile the text: nothing between them (the usual case)
    parts = []
    pos = 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        if m.end() > m.start():
            parts.append(m.group())
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    return parts


def _byte_alphabet() -> list[str]:
    """The byte-level pre-tokenizer's character for each byte value (GPT-2's mapping)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _build_tables(tokenizer_file: Path) -> tuple[list[int], dict[int, int], list[str], list[int]]:
    with open(tokenizer_file, encoding="utf-8") as fh:
        spec = json.load(fh)
    patterns = split_patterns(spec["pre_tokenizer"], tokenizer_file)
    model = spec["model"]
    vocab: dict[str, int] = model["vocab"]
    byte_ids = [vocab[c] for c in _byte_alphabet()]
    merges: dict[int, int] = {}
    for rank, merge in enumerate(model["merges"]):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        key = vocab[left] << _SHIFT | vocab[right]
        merges.setdefault(key, rank << _SHIFT | vocab[left + right])
    return byte_ids, merges, patterns, byte_pair_merges(byte_ids, merges)


def byte_pair_merges(byte_ids: list[int], merges: dict[int, int]) -> list[int]:
    """`_Tables.byte_pairs` for these byte symbols and merges."""
    return [
        merges.get(byte_ids[pair >> 8] << _SHIFT | byte_ids[pair & 0xFF], _NO_MERGE)
        for pair in range(1 << 16)
    ]


def split_patterns(pre_tokenizer: dict, source: Path) -> list[str]:
    """The Split regexes of a `Sequence[Split…, ByteLevel]` pre-tokenizer, in order."""
    steps = pre_tokenizer.get("pretokenizers", []) if pre_tokenizer["type"] == "Sequence" else []
    splits = [s for s in steps if s["type"] == "Split"]
    byte_level = steps[-1] if steps else {}
    supported = (
        steps
        and steps[: len(splits)] == splits
        and all(s["behavior"] == "Isolated" and not s["invert"] for s in splits)
        and byte_level.get("type") == "ByteLevel"
        and not byte_level.get("add_prefix_space")
        and not byte_level.get("use_regex")
        and len(splits) == len(steps) - 1
    )
    if not supported:
        raise ValueError(f"{source}: pre-tokenizer not supported by the fast counter")
    return [s["pattern"]["Regex"] for s in splits]


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
