"""A cold index's second core: token counts and a share of the tree-sitter parsing, in a
child process.

A cold index spends nearly all its time in two loops that hold the GIL: the token counter
(pure Python) and tree-sitter (its bindings do not release the GIL while parsing), so a
thread would not help. A child process started with the counter's tables counts every text
it is given, while this process parses the files. Neither knows in advance which ends
first, so the two share the rest of each other's work at the end, through counters in
shared memory: the child, whenever it has nothing to count, parses files from the last one
back until it meets the parent parsing from the first one on (`Pending.claim`); the parent,
once done parsing, counts the child's texts from the last one back until the two meet
(`Pending.finish`). The child counts before it parses, the parent parses before it counts:
each side's word cache or parser is warm for its own kind of work.
"""

from __future__ import annotations

import marshal
import mmap
import os
import queue
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE
from typing import TYPE_CHECKING

from . import packer, tags, token_counter

if TYPE_CHECKING:
    from concurrent.futures import Future

# CPU cost model (seconds) for the two decisions the sharing does not make itself: whether a
# child is worth starting, and whether the parent should read the counter's tables to count.
# Measured on a 2-core x86 VM over setuptools and rich (Python sources).
CHILD_START_S = 0.15
"""Interpreter start, imports and the counter's tables."""
COUNT_S_PER_CHAR = 0.16e-6
"""Counting, reading the texts off the pipe included."""
PARSE_S_PER_CHAR = 0.2e-6
SEND_EVERY = 16
"""Texts per message to the child while the caller goes on."""
SHARE_CHARS = 32_000_000
"""At most this many characters of files are offered to the child to parse (the last ones):
~6 s of parsing, far past where the two sides meet on any tree that is counted up front."""
PARENT_TABLES_S = 0.06
"""Reading the counter's tables in the parent, when it has not yet."""

# The shared counters: int64 slots in one page of memory (a memfd passed to the child).
_DONE, _STOP, _FRONT, _BACK = 0, 8, 16, 24
"""Texts the child has counted; the text it must stop counting at; files the parent has
claimed (all before this index); the lowest file the child has claimed (it and all after)."""
_NEVER = 1 << 62


class BackgroundError(Exception):
    """The background process failed (its stderr is in the message)."""


@dataclass(frozen=True)
class Analysis:
    counts: list[int | None]
    """Token count per text; None for a text the counter declines (out of its scope)."""
    tags: dict[int, tags.FileTags]
    """Tags of the files the child parsed, by their index in the list sent."""
    outline_counts: dict[int, int | None]
    """For the same files, the token count of the outline chunk (`packer.outline_chunk`; 0
    without an outline), or None when not counted (no tables given, or declined)."""


def worth_taking_over(chars_left: int, parent_ready: bool) -> bool:
    """Whether the parent, done with its own work, should count the tail of the child's:
    yes unless the child will be done before the parent has read the counter's tables."""
    return parent_ready or chars_left * COUNT_S_PER_CHAR > PARENT_TABLES_S


def worth_starting(parse_chars: int, count_chars: int) -> bool:
    """Whether a child pays for its start-up: when the work it can take (half of the
    parsing and counting, at most) outweighs it."""
    work = parse_chars * PARSE_S_PER_CHAR + count_chars * COUNT_S_PER_CHAR
    return work / 2 > CHILD_START_S


class BackgroundAnalysis:
    """A child process that counts texts and, when idle, extracts the tags of files this one
    has not reached yet. Started early (its interpreter starts while this process reads the
    files), fed as the work appears (`count` batches while the files are scanned, `parse`
    with every file once the scan is done: each message goes down the pipe at once, so the
    child starts counting during the scan), then waited for (`result`)."""

    def __init__(self, tables: Path | None) -> None:
        """`tables`: the counter's table file (`token_counter.table_file`), needed to count."""
        self._shared, fd = _shared_counters()
        cmd = [sys.executable, "-m", "dsv4.agent.background", str(tables or "-"), str(fd)]
        try:
            self._proc = subprocess.Popen(
                cmd, stdin=PIPE, stdout=PIPE, stderr=PIPE, pass_fds=(fd,) if fd >= 0 else ()
            )
        finally:
            if fd >= 0:
                os.close(fd)  # the mapping stays
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write, daemon=True)
        self._writer.start()

    def count(self, texts: list[str]) -> None:
        """Texts to count (the counts come back in the order sent)."""
        if texts:
            self._queue.put(("count", texts))

    def parse(self, files: list[tuple[str, str]]) -> None:
        """The (path, text) files this process parses from the first one on (`claim`): the
        child takes them from the last one back while it has nothing to count. Sent once,
        and only the last ones up to `SHARE_CHARS` characters (the child never reaches the
        first ones of a large tree, and would hold them all in memory). Without shared
        memory the child cannot take any: this process parses them all."""
        if not files or self._shared is None:
            return
        first, chars = len(files), 0
        while first > 0 and chars + len(files[first - 1][1]) <= SHARE_CHARS:
            first -= 1
            chars += len(files[first][1])
        if first < len(files):
            self._queue.put(("parse", (first, files[first:])))

    def claim(self, index: int) -> bool:
        """Claim file `index` of those sent to `parse`, before parsing it here; False when
        the child has claimed it (and those after it) already."""
        if self._shared is None:
            return True
        struct.pack_into("<q", self._shared, _FRONT, index + 1)
        return struct.unpack_from("<q", self._shared, _BACK)[0] > index

    def counted(self) -> int:
        """How many of the texts sent the child has counted so far (0 if unknown)."""
        return 0 if self._shared is None else struct.unpack_from("<q", self._shared, _DONE)[0]

    def stop_at(self, index: int) -> bool:
        """Ask the child to count no text from `index` on (it may have passed it already:
        `result` then holds more counts). False when the child cannot be told."""
        if self._shared is None:
            return False
        struct.pack_into("<q", self._shared, _STOP, index)
        return True

    def _write(self) -> None:
        """Send each message as it comes: an 8-byte length, then the marshal'd message."""
        try:
            with self._proc.stdin as pipe:  # type: ignore[union-attr]
                while (message := self._queue.get()) is not None:
                    data = marshal.dumps(message)
                    pipe.write(len(data).to_bytes(8, "little"))
                    pipe.write(data)
                    pipe.flush()
        except OSError:
            pass  # the child died early; `result` reports why

    def result(self) -> Analysis:
        """Wait for the counts and tags (BackgroundError if the child failed)."""
        self._queue.put(None)
        self._writer.join()
        self._proc.stdin = None  # closed by the writer; `communicate` must not flush it
        out, err = self._proc.communicate()
        if self._proc.returncode != 0:
            tail = err.decode("utf-8", "replace")[-800:]
            raise BackgroundError(f"background analysis exited {self._proc.returncode}: {tail}")
        counts, parsed = marshal.loads(out)
        return Analysis(
            counts,
            {i: tags.FileTags.from_plain(plain) for i, plain, _ in parsed},
            {i: outline for i, _, outline in parsed},
        )


@dataclass
class Done:
    """What `Pending.finish` hands back."""

    counts: list[int]
    """Token counts of the texts, in order."""
    tags: dict[int, tags.FileTags]
    """Tags of the files the background process parsed, by index in `Pending.files` (the
    caller parses any file neither side parsed)."""
    outline_counts: dict[str, int]
    """Outline token counts taken in the background, by path."""
    frame_counts: dict[str, int]
    """Token counts of the frame strings, counted in the background."""
    tokens_encoded: int
    """Tokens counted in the background process (the rest is counted by the callables)."""


class Pending:
    """Counting and parsing started off the caller's thread: by a `BackgroundAnalysis`
    (`job`, which also counts the `frame` strings and, as the caller reports them, the
    outlines of the files it parses itself, and parses files from the last one back), by a
    worker thread (`future`), or already done (`counts`)."""

    def __init__(
        self,
        texts: list[str],
        files: list[tuple[str, str]],
        *,
        job: BackgroundAnalysis | None = None,
        frame: Sequence[str] = (),
        counts: list[int] | None = None,
        future: Future | None = None,
        fallback: Callable[[list[str]], list[int]] | None = None,
        rest: Callable[[list[str]], list[int]] | None = None,
        parent_ready: bool = False,
    ) -> None:
        """`fallback` counts here (the texts if the job fails, the tail of its work it is
        relieved of), `rest` what the job declines; `parent_ready`: `fallback` needs no
        start-up (the counter's tables are loaded here already)."""
        self._texts = texts
        self.files = files
        """(path, text) of every file to parse, in the caller's order; the job (when there
        is one) is offered the last of them (`BackgroundAnalysis.parse`) and takes them from
        the last one back (`claim`)."""
        self._job = job
        self._frame = list(frame)
        self._counts = counts
        self._future = future
        self._fallback = fallback
        self._rest = rest
        self._parent_ready = parent_ready
        self._outlines: list[tuple[str, str]] = []  # (path, chunk) sent to `job` to count
        self._sent = 0

    def claim(self, index: int) -> bool:
        """Whether the caller should parse `files[index]` (called in order, before parsing
        each): False once the job has claimed it, and so every file after it."""
        return self._job is None or self._job.claim(index)

    def outline_done(self, path: str, outline: str) -> None:
        """A file parsed by the caller: the job counts its outline too (in batches)."""
        if self._job is None or not self._texts or not outline:
            return
        self._outlines.append((path, packer.outline_chunk(path, outline)))
        if len(self._outlines) - self._sent >= SEND_EVERY:
            self._job.count([chunk for _, chunk in self._outlines[self._sent :]])
            self._sent = len(self._outlines)

    def finish(self) -> Done:
        """Wait for everything started."""
        if self._job is not None:
            return self._finish_job(self._job)
        counts = self._counts if self._future is None else self._future.result()
        return Done(counts or [], {}, {}, {}, 0)

    def _finish_job(self, job: BackgroundAnalysis) -> Done:
        """Wait for the child, meanwhile counting here from the last text back until the
        child has reached the next one (`fallback` counts here, `rest` what the child
        declines)."""
        assert self._fallback is not None and self._rest is not None
        job.count([chunk for _, chunk in self._outlines[self._sent :]])
        strings = self._texts + self._frame + [chunk for _, chunk in self._outlines]
        start = len(strings)  # strings[start:] are counted here
        tail: list[int] = []  # their counts, last first
        left = sum(map(len, strings[job.counted() :]))
        if worth_taking_over(left, self._parent_ready) and job.stop_at(start):
            while start > 0:
                job.stop_at(start - 1)  # the child counts no more from there
                if job.counted() >= start:
                    break  # it had got there first (it may also count the one claimed)
                tail += self._fallback([strings[start - 1]])
                start -= 1
        tail.reverse()
        try:
            analysis = job.result()
        except BackgroundError:  # counted here again; the caller parses what is left
            return Done(self._fallback(self._texts), {}, {}, {}, 0)
        counts = analysis.counts[:start]  # it may have counted the one claimed last too
        by_child = len(counts)
        declined = [i for i, c in enumerate(counts) if c is None]
        for i, c in zip(declined, self._rest([strings[i] for i in declined]), strict=True):
            counts[i] = c
        # Counted here (and so in the caller's figures already): the tail, and anything the
        # child left before it (it stops only past `start`; nothing relies on that).
        counts += self._fallback(strings[by_child:start]) + tail
        exact: list[int] = counts  # type: ignore[assignment]
        encoded = sum(exact[:by_child])
        n_texts, n_frame = len(self._texts), len(self._frame)
        outlines = zip(self._outlines, exact[n_texts + n_frame :], strict=True)
        outline_counts = {path: c for (path, _), c in outlines}
        for i, c in analysis.outline_counts.items():
            path = self.files[i][0]
            if c is not None and path not in outline_counts:  # else both parsed it
                outline_counts[path] = c
                encoded += c
        frame_counts = dict(zip(self._frame, exact[n_texts : n_texts + n_frame], strict=True))
        return Done(exact[:n_texts], analysis.tags, outline_counts, frame_counts, encoded)


def _shared_counters() -> tuple[mmap.mmap | None, int]:
    """A page of shared memory holding the counters (nothing counted or claimed yet, no
    stop) and a descriptor of it for the child; (None, -1) where the system has no memfd."""
    try:
        fd = os.memfd_create("dsv4-background")
    except (AttributeError, OSError):
        return None, -1
    try:
        os.ftruncate(fd, mmap.PAGESIZE)
        shared = mmap.mmap(fd, mmap.PAGESIZE)
    except OSError:
        os.close(fd)
        return None, -1
    struct.pack_into("<qqqq", shared, 0, 0, _NEVER, 0, _NEVER)  # _DONE, _STOP, _FRONT, _BACK
    return shared, fd


def _main(argv: list[str]) -> None:
    """`python -m dsv4.agent.background TABLES FD`: length-prefixed marshal'd ("count",
    texts) and ("parse", (index of the first file, files)) messages on stdin until it
    closes; marshal'd (counts, [(file index, plain tags, outline count), ...]) out.
    TABLES `-`: nothing to count. FD (-1: none): the shared counters (module constants),
    through which the child reports how many texts it has counted, learns where to stop
    counting, and claims files to parse.

    Counting comes first: the child parses (the one "parse" message's files, from the last
    one back) only while it has nothing to count, and stops at the first file the parent
    has claimed."""
    tables = None if argv[1] == "-" else Path(argv[1])
    shared = None if argv[2] == "-1" else mmap.mmap(int(argv[2]), mmap.PAGESIZE)
    counter = None if tables is None else token_counter.from_table_file(tables)
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_read_messages, args=(sys.stdin.buffer, inbox), daemon=True).start()
    to_count: deque[str] = deque()
    files: list[tuple[str, str]] = []
    first = back = 0  # files first.. were sent; those from `back` on are claimed here
    counts: list[int | None] = []
    parsed: list[tuple[int, tuple, int | None]] = []
    stop, reading = _NEVER, True

    def can_parse() -> bool:
        return back > first and struct.unpack_from("<q", shared, _FRONT)[0] < back

    while True:
        while reading:  # take in what has arrived; wait only with nothing else to do
            try:
                message = inbox.get(block=not to_count and not (shared is not None and can_parse()))
            except queue.Empty:
                break
            if message is None:
                reading = False
            elif isinstance(message, BaseException):
                raise message
            elif message[0] == "parse":
                first, files = message[1]
                back = first + len(files)
            else:
                to_count.extend(message[1])
        if to_count:
            text = to_count.popleft()
            if shared is not None:
                stop = struct.unpack_from("<q", shared, _STOP)[0]
            if len(counts) < stop:  # else the parent counts this one and the rest
                counts.append(counter.count(text) if counter else None)
                if shared is not None:
                    struct.pack_into("<q", shared, _DONE, len(counts))
        elif shared is not None and can_parse():
            struct.pack_into("<q", shared, _BACK, back - 1)
            if struct.unpack_from("<q", shared, _FRONT)[0] >= back:
                back = first  # the parent claimed it meanwhile: it has every file up to here
                continue
            back -= 1
            path, text = files[back - first]
            file_tags = tags.extract(path, text)
            outline = tags.outline(file_tags)
            if counter is None or not outline:
                outline_count = None if counter is None else 0
            else:
                outline_count = counter.count(packer.outline_chunk(path, outline))
            parsed.append((back, file_tags.to_plain(), outline_count))
        elif not reading:
            break
    sys.stdout.buffer.write(marshal.dumps((counts, parsed)))


def _read_messages(stream, inbox: queue.SimpleQueue) -> None:
    """The child's reader thread: each message into `inbox`, then None at the end (after
    the exception that stopped it, if one did)."""
    try:
        while header := stream.read(8):
            inbox.put(marshal.loads(stream.read(int.from_bytes(header, "little"))))
    except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
        inbox.put(exc)
    finally:
        inbox.put(None)


if __name__ == "__main__":
    _main(sys.argv)
