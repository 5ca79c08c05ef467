"""KV compressor (SPEC §4.4): gated pooling of `ratio` consecutive tokens into one entry.

Window i (positions i·ratio … i·ratio+ratio−1) emits entry i once it is complete. Ratio 128
pools its own window; ratio 4 overlaps: each token's 2·d features split into Ca (first d) and
Cb (last d), and entry i pools Ca of window i−1 with Cb of window i (per-channel softmax over
the 2·ratio slots; window 0 has no Ca part). Projections, softmax and sum are fp32; the entry
is then cast to the act dtype, RMS-normed and rotated (RoPE at position i·ratio). The caller
applies the quantization simulation.

Chunks of any length at any position are handled from the semantics: the state keeps the raw
rows of the unfinished window (and the previous window for ratio 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dsv4.kernels import compress_native
from dsv4.kernels.dispatch import native_lib

from .rope import Rope, apply_rope
from .state import CompressorState
from .weights import Getter, linear_fp32, rms_norm


@dataclass
class Compressor:
    w: torch.Tensor  # bf16 [2·coff·d, D]: wkv over wgate, multiplied in fp32 (`linear_fp32`)
    ape: torch.Tensor  # fp32 [ratio, coff·d]
    norm: torch.Tensor  # fp32 [d]
    ratio: int
    d: int
    eps: float

    @classmethod
    def load(cls, get: Getter, prefix: str, ratio: int, d: int, eps: float) -> Compressor:
        # REF multiplies both in fp32. Stacked: one GEMM per call instead of two. Kept bf16:
        # a decode step reads them once at that size (the C GEMV upcasts in registers).
        w = torch.cat((get(f"{prefix}.wkv.weight"), get(f"{prefix}.wgate.weight")))
        return cls(w, get(f"{prefix}.ape").float(), get(f"{prefix}.norm.weight").float(),
                   ratio, d, eps)  # fmt: skip

    @property
    def overlap(self) -> int:
        return 1 if self.ratio == 4 else 0

    def new_state(self, device: torch.device | str) -> CompressorState:
        return CompressorState.empty(self.w.shape[0] // 2, device)

    def __call__(
        self, x: torch.Tensor, start: int, state: CompressorState, rope: Rope
    ) -> tuple[torch.Tensor, CompressorState]:
        """x act [S, D] at positions start… -> (new entries act [n, d], next state)."""
        kv, score = linear_fp32(x, self.w).chunk(2, dim=-1)
        score = score + self._ape_rows(start, x.shape[0])
        return self.advance(kv, score, start, state, rope, x.dtype)

    def advance(
        self,
        kv: torch.Tensor,
        score: torch.Tensor,
        start: int,
        state: CompressorState,
        rope: Rope,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, CompressorState]:
        """The projected rows of positions start… (fp32 kv [S, coff·d] and score [S, coff·d],
        ape added) -> (the entries they complete, act [n, d], next state)."""
        seq, r = kv.shape[0], self.ratio
        rows_kv = torch.cat((state.kv, kv))
        rows_score = torch.cat((state.score, score))
        w0, w1 = start // r, (start + seq) // r  # windows w0..w1-1 complete in this chunk
        new_start = max(0, (w1 - self.overlap) * r)
        if new_start == state.start:  # every row stays: the fresh cat results are the state
            next_state = CompressorState(rows_kv, rows_score, new_start)
        else:  # copies, so the dropped rows' buffers are freed
            keep = slice(new_start - state.start, None)
            next_state = CompressorState(rows_kv[keep].clone(), rows_score[keep].clone(), new_start)
        if w1 == w0:
            return kv.new_empty(0, self.d, dtype=dtype), next_state
        pooled = self._pool(rows_kv, rows_score, w0 * r - state.start, w1 - w0)
        entries = rms_norm(pooled.to(dtype), self.norm, self.eps)
        cos, sin = rope.tables(torch.arange(w0, w1, device=kv.device) * r)
        return apply_rope(entries, cos, sin), next_state

    def _ape_rows(self, start: int, seq: int) -> torch.Tensor:
        """ape rows of positions start…start+seq−1 (position p uses row p % ratio)."""
        if seq == 1:  # decode: one row, a view
            return self.ape[start % self.ratio]
        return self.ape[torch.arange(start, start + seq, device=self.ape.device) % self.ratio]

    def _pool(self, kv: torch.Tensor, score: torch.Tensor, lo: int, n: int) -> torch.Tensor:
        """Pool n consecutive windows whose first row is `lo` -> fp32 [n, d]."""
        r, d = self.ratio, self.d
        if (lib := native_lib("compress", kv, score)) is not None:  # one C call
            return compress_native.pool(lib, kv, score, lo, n, r, d, bool(self.overlap))
        cur_kv = kv[lo : lo + n * r].view(n, r, -1)
        cur_score = score[lo : lo + n * r].view(n, r, -1)
        if self.overlap:
            prev_kv, prev_score = self._previous(kv, score, lo, n)
            cur_kv = torch.cat((prev_kv[..., :d], cur_kv[..., d:]), dim=1)
            cur_score = torch.cat((prev_score[..., :d], cur_score[..., d:]), dim=1)
        return (cur_kv * cur_score.softmax(dim=1)).sum(dim=1)

    def _previous(self, kv, score, lo: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The windows before each of the n windows; before window 0: kv 0, score −inf."""
        r = self.ratio
        if lo >= r:
            return kv[lo - r : lo + (n - 1) * r].view(n, r, -1), score[
                lo - r : lo + (n - 1) * r
            ].view(n, r, -1)
        width = kv.shape[-1]
        pad_kv = kv.new_zeros(r, width)
        pad_score = score.new_full((r, width), float("-inf"))
        prev_kv = torch.cat((pad_kv, kv[lo : lo + (n - 1) * r])).view(n, r, -1)
        prev_score = torch.cat((pad_score, score[lo : lo + (n - 1) * r])).view(n, r, -1)
        return prev_kv, prev_score
