"""A cold index's second core: token counts and a share of the tree-sitter parsing, in a
child process.

A cold index spends nearly all its time in two loops that hold the GIL: the token counter
(pure Python) and tree-sitter (its bindings do not release the GIL while parsing), so a
thread would not help. A child process started with the counter's tables counts every text
it is given and parses a share of the files, sized (`child_share`) so that the child and the
parent, which parses the rest meanwhile, finish at about the same time.
"""

from __future__ import annotations

import marshal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE

from . import tags, token_counter

# CPU cost model (seconds), measured on a 2-core x86 VM over the source trees of setuptools
# and pip (Python): it only balances the two processes, so it need not be exact.
CHILD_START_S = 0.12
"""Interpreter start, imports and the counter's tables."""
COUNT_S_PER_CHAR = 0.2e-6
PARSE_S_PER_CHAR = 0.22e-6


class BackgroundError(Exception):
    """The background process failed (its stderr is in the message)."""


@dataclass(frozen=True)
class Analysis:
    counts: list[int | None]
    """Token count per text; None for a text the counter declines (out of its scope)."""
    tags: list[tags.FileTags]
    """Tags per file, in order."""


def child_share(parse_chars: Sequence[int], count_chars: int, started_s: float = 0.0) -> int:
    """How many of the files (taken from the end of `parse_chars`, each file's characters,
    0 for a file without a grammar) the child should parse, next to counting `count_chars`
    characters, for both processes to finish together. `started_s`: how long ago the child
    was started (its start-up runs meanwhile)."""
    parent = sum(parse_chars) * PARSE_S_PER_CHAR
    child = max(0.0, CHILD_START_S - started_s) + count_chars * COUNT_S_PER_CHAR
    taken = 0
    for chars in reversed(parse_chars):
        cost = chars * PARSE_S_PER_CHAR
        if child + cost >= parent:
            break  # moving this file would not shorten the longer of the two
        child += cost
        parent -= cost
        taken += 1
    return taken


class BackgroundAnalysis:
    """A child process that counts texts and extracts the tags of files while this one goes
    on. Started early (`__init__`: its interpreter starts while this process reads and scans
    the files), given its work once (`send`), then waited for (`result`)."""

    def __init__(self, tables: Path | None) -> None:
        """`tables`: the counter's table file (`token_counter.table_file`), needed to count."""
        cmd = [sys.executable, "-m", "dsv4.agent.background", str(tables or "-")]
        self._proc = subprocess.Popen(cmd, stdin=PIPE, stdout=PIPE, stderr=PIPE)
        self.started = time.perf_counter()
        self._writer: threading.Thread | None = None

    def send(self, texts: list[str], files: list[tuple[str, str]]) -> None:
        """The work: texts to count and (path, text) files to parse."""
        data = marshal.dumps((texts, files))
        self._writer = threading.Thread(target=self._send, args=(data,))
        self._writer.start()

    def _send(self, data: bytes) -> None:
        try:
            with self._proc.stdin:  # type: ignore[union-attr]
                self._proc.stdin.write(data)  # type: ignore[union-attr]
        except OSError:
            pass  # the child died early; `result` reports why

    def result(self) -> Analysis:
        """Wait for the counts and tags (BackgroundError if the child failed)."""
        if self._writer is None:
            self.send([], [])
        assert self._writer is not None
        self._writer.join()
        self._proc.stdin = None  # closed by the writer; `communicate` must not flush it
        out, err = self._proc.communicate()
        if self._proc.returncode != 0:
            tail = err.decode("utf-8", "replace")[-800:]
            raise BackgroundError(f"background analysis exited {self._proc.returncode}: {tail}")
        counts, plain_tags = marshal.loads(out)
        return Analysis(counts, [tags.FileTags.from_plain(t) for t in plain_tags])


def _main(argv: list[str]) -> None:
    """`python -m dsv4.agent.background TABLES`: marshal'd (texts, files) on stdin, marshal'd
    (counts, plain tags) out."""
    texts, files = marshal.loads(sys.stdin.buffer.read())
    counts: list[int | None] = []
    if texts:
        counter = token_counter.from_table_file(Path(argv[1]))
        counts = [counter.count(t) for t in texts]
    plain = [tags.extract(path, text).to_plain() for path, text in files]
    sys.stdout.buffer.write(marshal.dumps((counts, plain)))


if __name__ == "__main__":
    _main(sys.argv)
