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


@dataclass
class LayerState:
    window: torch.Tensor  # act [window_size, head_dim] ring buffer
    entries: EntryCache | None = None  # compressed KV (ratio > 0)
    compressor: CompressorState | None = None
    index_keys: EntryCache | None = None  # ratio 4 only
    index_compressor: CompressorState | None = None


@dataclass
class SequenceState:
    """Everything a sequence carries between calls: its length and one state per layer."""

    pos: int
    layers: list[LayerState]
    mtp: list[LayerState]

    def fork(self) -> SequenceState:
        """An independent deep copy (tensors cloned)."""
        return copy.deepcopy(self)
