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
import subprocess
import sys
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE

from .packer import SPECIAL_TOKEN as _SPECIAL

# The pre-tokenizer is read from `tokenizer.json` itself when the tables are built: this
# counter supports exactly a Sequence of `Split` (Isolated) regexes then a ByteLevel step
# without prefix space or regex, which is what the V4 file holds (anything else raises).
# Longer pre-tokens (a run of thousands of spaces or dashes) go to the official tokenizer.
_MAX_PIECE = 256
# Bump when the table layout changes.
_TABLE_VERSION = 2
_SHIFT = 20  # bits per symbol id in a packed pair key (ids < 2**17)


@dataclass(frozen=True)
class _Tables:
    byte_ids: list[int]
    """Symbol id of each byte value (the byte-level alphabet)."""
    merges: dict[int, int]
    """(left << _SHIFT | right) -> (rank << _SHIFT | merged id)."""
    patterns: list[str]
    """The pre-tokenizer's Split regexes, in order, as written in tokenizer.json."""


class TokenCounter:
    """Counts V4 tokens of plain text; `count` is None for text it does not handle."""

    def __init__(self, tables: _Tables) -> None:
        import regex

        self._tables = tables
        self._patterns = [regex.compile(p) for p in tables.patterns]
        self._words: dict[str, int] = {}

    def count(self, text: str) -> int | None:
        """Exact V4 token count of `text`, or None when the text is out of scope."""
        if not _in_scope(text) or _SPECIAL.search(text):
            return None
        words = self._words
        total = 0
        for piece in self._pretokenize(text):
            n = words.get(piece)
            if n is None:
                if len(piece) > _MAX_PIECE:
                    return None  # the merge loop is quadratic in the piece's length
                n = words[piece] = self._bpe_count(piece)
            total += n
        return total

    def _pretokenize(self, text: str) -> list[str]:
        pieces = [text]
        for pattern in self._patterns:
            pieces = [part for piece in pieces for part in _split_isolated(pattern, piece)]
        return pieces

    def _bpe_count(self, piece: str) -> int:
        ids = [self._tables.byte_ids[b] for b in piece.encode("utf-8")]
        merges = self._tables.merges
        while len(ids) > 1:
            best = best_at = -1
            for i in range(len(ids) - 1):
                m = merges.get(ids[i] << _SHIFT | ids[i + 1])
                if m is not None and (best < 0 or m < best):
                    best, best_at = m, i
            if best < 0:
                break
            ids[best_at : best_at + 2] = [best & ((1 << _SHIFT) - 1)]
        return len(ids)


@functools.lru_cache(maxsize=4)
def load(tokenizer_file: Path, cache_dir: Path) -> TokenCounter:
    """The counter for `tokenizer_file` (once per process), its tables built on first use
    and kept in `cache_dir` (~0.5 s to build from the JSON, ~0.05 s to load)."""
    return TokenCounter(_read_tables(table_file(tokenizer_file, cache_dir)))


def table_file(tokenizer_file: Path, cache_dir: Path) -> Path:
    """The counter's tables for `tokenizer_file` in `cache_dir`, built there if missing."""
    st = os.stat(tokenizer_file)
    path = cache_dir / f"v4-bpe-{_TABLE_VERSION}-{st.st_size}-{st.st_mtime_ns}.marshal"
    try:
        _read_tables(path)
    except (OSError, EOFError, ValueError, TypeError):
        _write_atomic(path, marshal.dumps(_build_tables(tokenizer_file)))
    return path


class CounterError(Exception):
    """The background counting process failed (its stderr is in the message)."""


class BackgroundCount:
    """Counts texts in a child process while this one goes on (`count` per text, so None
    for texts out of scope). A process, not a thread: the counter is pure Python, and the
    indexer meanwhile parses with tree-sitter, also under the GIL most of the time."""

    def __init__(self, tables: Path, texts: list[str]) -> None:
        cmd = [sys.executable, "-m", "dsv4.agent.token_counter", str(tables)]
        self._proc = subprocess.Popen(cmd, stdin=PIPE, stdout=PIPE, stderr=PIPE)
        self._writer = threading.Thread(target=self._send, args=(marshal.dumps(texts),))
        self._writer.start()

    def _send(self, data: bytes) -> None:
        try:
            with self._proc.stdin:  # type: ignore[union-attr]
                self._proc.stdin.write(data)  # type: ignore[union-attr]
        except OSError:
            pass  # the child died early; `result` reports why

    def result(self) -> list[int | None]:
        """Wait for the counts."""
        self._writer.join()
        self._proc.stdin = None  # closed by the writer; `communicate` must not flush it
        out, err = self._proc.communicate()
        if self._proc.returncode != 0:
            tail = err.decode("utf-8", "replace")[-800:]
            raise CounterError(f"token counting process exited {self._proc.returncode}: {tail}")
        return marshal.loads(out)


def _read_tables(path: Path) -> _Tables:
    byte_ids, merges, patterns = marshal.loads(path.read_bytes())
    return _Tables(byte_ids, merges, patterns)


def _main(argv: list[str]) -> None:
    """`python -m dsv4.agent.token_counter TABLES`: marshal'd texts on stdin, counts out."""
    counter = TokenCounter(_read_tables(Path(argv[1])))
    texts = marshal.loads(sys.stdin.buffer.read())
    sys.stdout.buffer.write(marshal.dumps([counter.count(t) for t in texts]))


def _in_scope(text: str) -> bool:
    """Whether every character is one both regex engines classify alike: ASCII, or assigned
    in this Python's Unicode database (older than either engine's tables)."""
    if text.isascii():
        return True
    unusual = {c for c in text if c > "\x7f"}
    return all(unicodedata.category(c) != "Cn" for c in unusual)


def _split_isolated(pattern, text: str) -> list[str]:
    """`text` cut into the matches of `pattern` and the stretches between them."""
    parts: list[str] = []
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


def _build_tables(tokenizer_file: Path) -> tuple[list[int], dict[int, int], list[str]]:
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
    return byte_ids, merges, patterns


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


if __name__ == "__main__":
    _main(sys.argv)
