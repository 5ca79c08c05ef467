"""Prefix cache: sessions kept across requests so a prompt that extends an earlier one is not
prefilled again.

A chat client resends the whole conversation every turn, so the prompt of turn n+1 begins
with the tokens of turn n. The cache keeps up to `capacity` sessions with the token ids each
has consumed, and hands out the one sharing the longest prefix with a new prompt, positioned
at that prefix; the caller prefills only the rest.

A reused session is forked, not moved: the cached copy stays in place for another
conversation with the same prefix (a shared system prompt, a retried request), at the cost
of one state copy per request, which is far cheaper than the prefill it saves. Entries are
evicted least recently used first.

When a prompt diverges inside a cached session, the session is cut back to the common
prefix if it supports `truncate(n)`; otherwise a fresh session is used. An engine session
rewinds by restoring its latest snapshot at or before the cut and prefilling the gap again;
`truncate` returns that gap, which the counters book as prefilled, not reused.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class CachedSession(Protocol):
    """What the cache needs from an engine session."""

    def fork(self) -> CachedSession: ...


class SessionFactory(Protocol):
    """What the cache needs from the model."""

    def new_session(self) -> Any: ...


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class _Entry:
    session: Any
    tokens: list[int]  # the ids whose state the session holds, in order


@dataclass(frozen=True)
class CacheStats:
    """Counters since the cache was created (tokens, not requests)."""

    entries: int
    capacity: int
    prefilled_tokens: int  # prompt tokens prefilled: by the callers, or replayed by truncate
    reused_tokens: int  # prompt tokens served from cached state
    replayed_tokens: int = 0  # of prefilled_tokens: re-prefilled inside `truncate`


class PrefixCache:
    """Up to `capacity` sessions, reused by longest common token prefix (LRU eviction)."""

    def __init__(self, model: SessionFactory, capacity: int = 4) -> None:
        if capacity < 0:
            raise ValueError(f"PrefixCache capacity={capacity}: expected an integer >= 0")
        self.model = model
        self.capacity = capacity
        self.prefilled_tokens = 0
        self.reused_tokens = 0
        self.replayed_tokens = 0
        self._entries: list[_Entry] = []  # least recently used first
        self._lock = threading.Lock()

    def acquire(self, prompt_ids: Sequence[int]) -> tuple[Any, int]:
        """(session, reused): a session holding `prompt_ids[:reused]`; prefill the rest.

        At least one prompt token is always left to prefill, since its logits start the
        generation. The returned session belongs to the caller until `release`.
        """
        if not prompt_ids:
            raise ValueError("PrefixCache.acquire: the prompt is empty")
        with self._lock:
            entry, usable = self._best_entry(prompt_ids)
            session, reused, replayed = self._session_from(entry, usable)
            if entry is not None and reused:
                self._touch(entry)
            self.reused_tokens += reused - replayed
            self.replayed_tokens += replayed
            self.prefilled_tokens += len(prompt_ids) - reused + replayed
            return session, reused

    def release(self, session: Any, tokens: Sequence[int]) -> None:
        """Keep `session` (which now holds exactly `tokens`) for later requests."""
        pos = getattr(session, "pos", len(tokens))
        if pos != len(tokens):
            raise ValueError(
                f"PrefixCache.release: the session holds {pos} tokens but {len(tokens)} "
                "token ids were given"
            )
        if self.capacity == 0 or not tokens:
            return
        with self._lock:
            tokens = list(tokens)
            self._entries = [e for e in self._entries if e.tokens != tokens]
            self._entries.append(_Entry(session, tokens))
            del self._entries[: max(len(self._entries) - self.capacity, 0)]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                len(self._entries),
                self.capacity,
                self.prefilled_tokens,
                self.reused_tokens,
                self.replayed_tokens,
            )

    # -- internals ---------------------------------------------------------------------------

    def _best_entry(self, prompt_ids: Sequence[int]) -> tuple[_Entry | None, int]:
        """The entry with the longest usable common prefix, and that length (< len(prompt))."""
        best, best_len = None, 0
        limit = len(prompt_ids) - 1
        for entry in self._entries:
            n = min(common_prefix(entry.tokens, prompt_ids), limit)
            # Without truncation only an entry that is wholly a prefix can be continued.
            if n < len(entry.tokens) and not _can_truncate(entry.session):
                continue
            if n > best_len:
                best, best_len = entry, n
        return best, best_len

    def _session_from(self, entry: _Entry | None, usable: int) -> tuple[Any, int, int]:
        """(session at `usable`, usable, tokens the truncation had to prefill again)."""
        if entry is None or usable == 0:
            return self.model.new_session(), 0, 0
        session = entry.session.fork()
        replayed = 0
        if usable < len(entry.tokens):
            replayed = session.truncate(usable) or 0  # sessions may return None: nothing replayed
        return session, usable, replayed

    def _touch(self, entry: _Entry) -> None:
        self._entries.remove(entry)
        self._entries.append(entry)


def _can_truncate(session: Any) -> bool:
    return callable(getattr(session, "truncate", None))
