"""Where a session can rewind to: a bounded, position-ordered log of `StateSnapshot`s.

A session takes a snapshot every `interval` tokens (a multiple of 128 keeps it small: at a
boundary of every compression ratio the compressors hold at most one finished window) and at
the end of each multi-token prefill (a prompt's end is where the next prompt most often
diverges). Rewinding to n restores the latest snapshot at or before n and re-prefills the
gap from the session's tokens, so the gap is what a rewind costs.

The log holds at most `max_snapshots`. When it overflows, the snapshot closest to its
predecessor is dropped (the latest is always kept): spacing stays even over the whole
sequence and grows slowly as it lengthens, so memory stays bounded.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

from .state import StateSnapshot


@dataclass(frozen=True)
class SnapshotPolicy:
    """When a session snapshots its state."""

    interval: int = 4096  # tokens between periodic snapshots
    max_snapshots: int = 64  # snapshots kept per session (older ones are thinned out)
    at_prefill_end: bool = True  # also snapshot at the end of every multi-token prefill

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise ValueError(f"SnapshotPolicy.interval={self.interval}: expected >= 1")
        if self.max_snapshots < 1:
            raise ValueError(f"SnapshotPolicy.max_snapshots={self.max_snapshots}: expected >= 1")

    def chunk_ends(self, start: int, end: int) -> list[int]:
        """Where a prefill of positions start…end−1 stops: each periodic boundary, then end."""
        first = (start // self.interval + 1) * self.interval
        return [*range(first, end, self.interval), end]


@dataclass
class SnapshotLog:
    """Snapshots of one sequence, ordered by position (shareable between forks: read-only)."""

    policy: SnapshotPolicy = field(default_factory=SnapshotPolicy)
    _items: list[StateSnapshot] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[StateSnapshot]:
        return iter(self._items)

    @property
    def positions(self) -> list[int]:
        return [s.pos for s in self._items]

    def copy(self) -> SnapshotLog:
        """A new log over the same snapshots (they are never modified, only dropped)."""
        return SnapshotLog(self.policy, list(self._items))

    def add(self, snap: StateSnapshot) -> None:
        """Record `snap` (replacing one at the same position) and keep within the bound."""
        self.drop_after(snap.pos - 1)
        self._items.append(snap)
        while len(self._items) > self.policy.max_snapshots:
            del self._items[_closest_to_predecessor(self.positions)]

    def latest_at_or_before(self, n: int) -> StateSnapshot | None:
        i = bisect.bisect_right(self.positions, n)
        return self._items[i - 1] if i else None

    def drop_after(self, n: int) -> None:
        """Forget snapshots of positions > n (the sequence no longer passes through them)."""
        del self._items[bisect.bisect_right(self.positions, n) :]


def _closest_to_predecessor(positions: list[int]) -> int:
    """Index of the snapshot whose removal leaves the smallest gap (never the last one)."""
    best, best_gap = 0, None
    for i in range(len(positions) - 1):
        gap = positions[i + 1] - (positions[i - 1] if i else 0)
        if best_gap is None or gap < best_gap:
            best, best_gap = i, gap
    return best
