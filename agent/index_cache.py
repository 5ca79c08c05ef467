"""The indexer's on-disk cache: per-file results keyed by git blob id, outside the work tree.

One file per repository root holds a `FileRecord` per path (the redacted text, its token
counts, tags and outline, what was excluded or redacted) and a memo of token counts for
small strings (preambles, tree lines). A record is reused when its blob id matches the file's
current blob id; for untracked or modified files the id is computed from the content, and a
matching (mtime, size, inode) lets the indexer skip even reading the file. Records hold
redacted text only, so secrets never reach the cache either.

The folder is `$DSV4_CACHE_DIR`, else `$XDG_CACHE_HOME/dsv4/index`, else
`~/.cache/dsv4/index`; a cache folder inside the indexed work tree is refused.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .secrets import Finding
from .tags import FileTags

# Bump when FileRecord or the way its fields are computed changes: old caches are ignored.
CACHE_VERSION = 3


@dataclass(frozen=True)
class FileRecord:
    """Everything the indexer learned about one file version."""

    path: str
    blob: str
    """Git blob id of the file content the record describes."""
    stat: tuple[int, int, int]
    """(mtime_ns, size, inode) when it was read; (0, 0, 0) when it was not read."""
    excluded: str | None
    """Reason the file is left out, or None."""
    text: str = ""
    """Packed text: secrets redacted, control tokens defused, newline-terminated."""
    full_tokens: int = 0
    """Tokens of the file's full chunk; -1 until a pack needs the count."""
    full_floor: int = 0
    """Lower bound on `full_tokens` (`packer.chunk_floor`)."""
    outline: str = ""
    outline_tokens: int = 0
    """Tokens of the outline chunk; -1 until a pack needs the count."""
    outline_floor: int = 0
    """Lower bound on `outline_tokens` (`packer.chunk_floor`)."""
    tags: FileTags | None = None
    findings: tuple[Finding, ...] = ()


@dataclass
class CacheState:
    records: dict[str, FileRecord] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    """Token counts of small strings (tree lines, preambles)."""
    rank: tuple[str, dict[str, float]] | None = None
    """(digest of the ranking inputs, scores) of the last ranking."""


class CacheError(Exception):
    """The cache folder is unusable (e.g. inside the indexed work tree)."""


def default_cache_dir() -> Path:
    if env := os.environ.get("DSV4_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dsv4" / "index"


def cache_file(cache_dir: Path, root: Path, fingerprint: str) -> Path:
    """The cache file for `root`; refuses a cache folder inside the work tree."""
    root = root.resolve()
    cache_dir = cache_dir.resolve()
    if cache_dir == root or root in cache_dir.parents:
        raise CacheError(
            f"cache folder {cache_dir} lies inside the indexed work tree {root}; "
            "set DSV4_CACHE_DIR (or pass cache_dir) to a folder outside it"
        )
    key = hashlib.sha256(f"{root}\0{fingerprint}\0{CACHE_VERSION}".encode()).hexdigest()[:24]
    return cache_dir / f"{key}.cache"


def load(path: Path) -> CacheState:
    """The cached state, or an empty one when the file is missing, unreadable or stale."""
    try:
        version, records, counts, rank = marshal.loads(path.read_bytes())
        if version != _FORMAT:
            return CacheState()
        decoded = {rec[0]: _decode(rec) for rec in records}
    except (OSError, EOFError, ValueError, TypeError, IndexError):
        return CacheState()
    return CacheState(decoded, counts, rank)


def save(path: Path, state: CacheState) -> None:
    """Write atomically: a crash mid-write leaves the previous cache intact."""
    records = [_encode(r) for r in state.records.values()]
    data = marshal.dumps((_FORMAT, records, state.counts, state.rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# The file is `marshal` data of plain tuples: it loads ~5x faster than a pickle of the
# dataclasses, which matters for a re-index after a one-file change. marshal's format may
# change between Python versions, so the version is part of the format tag.
_FORMAT = f"{CACHE_VERSION}-py{sys.version_info[0]}.{sys.version_info[1]}"


def _encode(r: FileRecord) -> tuple:
    tags = None if r.tags is None else r.tags.to_plain()
    findings = tuple((f.path, f.kind, f.action, f.line) for f in r.findings)
    return (
        *(r.path, r.blob, r.stat, r.excluded, r.text, r.full_tokens, r.full_floor),
        *(r.outline, r.outline_tokens, r.outline_floor, tags, findings),
    )


def _decode(t: tuple) -> FileRecord:
    path, blob, stat, excluded, text, full, full_floor, outline, outline_tokens = t[:9]
    outline_floor, tags, findings = t[9:]
    if tags is not None:
        tags = FileTags.from_plain(tags)
    return FileRecord(
        *(path, blob, stat, excluded, text, full, full_floor, outline, outline_tokens),
        outline_floor,
        tags,
        tuple(Finding(*f) for f in findings),
    )


def blob_id(data: bytes) -> str:
    """Git's blob id of `data` (SHA-1 of the object header and content)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
