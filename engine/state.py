"""Per-sequence, per-layer decode state: plain tensors, so that it can be forked, truncated,
saved and loaded (SPEC §5.1, with the departures of §5.2: fresh state per sequence, chunked
prefill at any position).

* window: ring buffer [window_size, head_dim] of the raw (RoPE'd, FP8-simulated) window KV;
  slot = position % window_size.
* entries: compressed KV entries [capacity, head_dim]; the first `n_entries` are valid.
* compressor: the raw fp32 rows (kv and score + ape) not yet emitted as an entry: the
  partial window at the end of the sequence and, for the overlapping ratio-4 compressor,
  the previous complete window too.
* index_keys / index_compressor: the Lightning indexer's compressed keys and compressor rows.

Rewinding: compressed entries are append-only, so cutting a sequence back to position n only
drops the entries emitted after n; the window ring and the compressor rows, however, are
overwritten as the sequence grows. A `StateSnapshot` keeps those small tensors at one
position, and `SequenceState.restore` brings the whole state back to it exactly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch


@dataclass
class CompressorState:
    kv: torch.Tensor  # fp32 [rows, coff·d]
    score: torch.Tensor  # fp32 [rows, coff·d], gate logits + ape
    start: int  # position of row 0

    @classmethod
    def empty(cls, width: int, device: torch.device | str) -> CompressorState:
        z = torch.empty(0, width, dtype=torch.float32, device=device)
        return cls(z, z.clone(), 0)


@dataclass
class EntryCache:
    """A growable list of rows (capacity doubles, so appends are amortized O(1))."""

    rows: torch.Tensor  # [capacity, width]
    n: int = 0

    @classmethod
    def empty(cls, width: int, dtype: torch.dtype, device: torch.device | str) -> EntryCache:
        return cls(torch.empty(0, width, dtype=dtype, device=device), 0)

    def append(self, new: torch.Tensor) -> None:
        need = self.n + new.shape[0]
        if need > self.rows.shape[0]:
            grown = self.rows.new_empty(max(need, 2 * self.rows.shape[0], 16), self.rows.shape[1])
            grown[: self.n] = self.rows[: self.n]
            self.rows = grown
        self.rows[self.n : need] = new
        self.n = need

    def valid(self) -> torch.Tensor:
        return self.rows[: self.n]

    def truncate(self, n: int) -> None:
        """Keep the first n rows (the later ones are overwritten by the next appends)."""
        assert 0 <= n <= self.n, f"EntryCache.truncate({n}) with {self.n} rows"
        self.n = n


@dataclass
class LayerState:
    window: torch.Tensor  # act [window_size, head_dim] ring buffer
    entries: EntryCache | None = None  # compressed KV (ratio > 0)
    compressor: CompressorState | None = None
    index_keys: EntryCache | None = None  # ratio 4 only
    index_compressor: CompressorState | None = None

    def snapshot(self) -> LayerSnapshot:
        # Compressor states are replaced, never written in place, so they can be shared; the
        # window ring is written in place and must be copied.
        return LayerSnapshot(
            self.window.clone(),
            self.compressor,
            self.index_compressor,
            _count(self.entries),
            _count(self.index_keys),
        )

    def restore(self, snap: LayerSnapshot) -> None:
        """Back to the snapshot's position (entries emitted since then are dropped)."""
        self.window = snap.window.clone()
        self.compressor, self.index_compressor = snap.compressor, snap.index_compressor
        if self.entries is not None:
            self.entries.truncate(snap.n_entries)
        if self.index_keys is not None:
            self.index_keys.truncate(snap.n_index_keys)


@dataclass(frozen=True)
class LayerSnapshot:
    """The overwritten part of a `LayerState` at one position, plus its entry counts.

    Its tensors are never written: `restore` copies the window before the ring is reused.
    """

    window: torch.Tensor  # act [window_size, head_dim]
    compressor: CompressorState | None
    index_compressor: CompressorState | None
    n_entries: int
    n_index_keys: int


@dataclass(frozen=True)
class StateSnapshot:
    """Everything needed to bring a `SequenceState` back to position `pos`."""

    pos: int
    layers: tuple[LayerSnapshot, ...]
    mtp: tuple[LayerSnapshot, ...]


@dataclass
class SequenceState:
    """Everything a sequence carries between calls: its length and one state per layer."""

    pos: int
    layers: list[LayerState]
    mtp: list[LayerState]

    def fork(self) -> SequenceState:
        """An independent deep copy (tensors cloned)."""
        return copy.deepcopy(self)

    def snapshot(self) -> StateSnapshot:
        """The state at the current position, for a later `restore` (a few small copies)."""
        return StateSnapshot(
            self.pos,
            tuple(layer.snapshot() for layer in self.layers),
            tuple(layer.snapshot() for layer in self.mtp),
        )

    def restore(self, snap: StateSnapshot) -> None:
        """Rewind to `snap.pos` exactly; `snap` must come from this sequence at or before now.

        The MTP layers are driven by their caller, not by `pos`; they are restored as they
        were when the snapshot was taken.
        """
        if snap.pos > self.pos:
            raise ValueError(f"cannot restore a snapshot at {snap.pos}: the state is at {self.pos}")
        for layer, layer_snap in zip(self.layers + self.mtp, snap.layers + snap.mtp, strict=True):
            layer.restore(layer_snap)
        self.pos = snap.pos


def _count(cache: EntryCache | None) -> int:
    return 0 if cache is None else cache.n
