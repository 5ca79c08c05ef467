"""Attention of one layer (SPEC §4.3–§4.6): sliding window + compressed entries, one shared
512-dim KV head (K = V), attention sink, grouped low-rank output projection.

A chunk of S tokens at positions start…start+S−1 attends to: the window (the previous
window_size−1 tokens from the ring buffer plus the chunk's own keys, causally), and the
compressed entries visible to each query (all of them for HCA, the indexer's top-k for CSA),
entry j being visible to query t when j < (t+1)//ratio.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dsv4.kernels import gemm_native, rows_native
from dsv4.kernels.dispatch import native_lib
from dsv4.kernels.quant import act_quant_dequant
from dsv4.kernels.sparse_attn import sparse_attn

from .attention_step import AttentionStep, _iota, thread_step
from .compressor import Compressor
from .config import ModelArgs
from .numerics import Numerics
from .rope import Rope, apply_rope
from .sparse_indexer import Indexer
from .state import EntryCache, LayerState
from .weights import (
    FP8Linear,
    Getter,
    amx_gemm,
    fp8_linears,
    native_gemm,
    rms_norm,
    stack_dense,
)


@dataclass
class Attention:
    wq_a: FP8Linear
    q_norm: torch.Tensor  # fp32 [q_lora_rank]
    wq_b: FP8Linear
    wkv: FP8Linear
    kv_norm: torch.Tensor  # fp32 [head_dim]
    wo_a: torch.Tensor  # bf16 [G·R, H·hd/G]: FP8 in the file, dequantized at load as REF's
    # convert.py does; FP8 value × power-of-two scale is exact in bf16, so nothing is lost.
    wo_b: FP8Linear
    attn_sink: torch.Tensor  # fp32 [H]
    rope: Rope
    args: ModelArgs
    ratio: int
    compressor: Compressor | None = None
    indexer: Indexer | None = None
    qkv_a: torch.Tensor | None = None  # wq_a's and wkv's kept dense weights, stacked
    wo_a_fp8: FP8Linear | None = None  # wo_a as stored (CPU): the C kernels read half the bytes
    # one step per thread: a step's scratch rows are written by each call
    _steps: dict[int, AttentionStep | None] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.qkv_a is None:
            self.qkv_a = stack_dense((self.wq_a, self.wkv))

    @classmethod
    def load(cls, get: Getter, prefix: str, args: ModelArgs, ratio: int, device) -> Attention:
        def fp8(name: str) -> FP8Linear:
            return FP8Linear.load(get, f"{prefix}.{name}")

        comp = idx = None
        if ratio:
            comp = Compressor.load(get, f"{prefix}.compressor", ratio, args.head_dim, args.norm_eps)
        if ratio == 4:
            idx = Indexer.load(get, f"{prefix}.indexer", args)
        wo_a = fp8("wo_a")
        wo_a_bf16, wo_a.dense = wo_a.dequantized().bfloat16(), None
        return cls(fp8("wq_a"), get(f"{prefix}.q_norm.weight").float(), fp8("wq_b"), fp8("wkv"),
                   get(f"{prefix}.kv_norm.weight").float(), wo_a_bf16, fp8("wo_b"),
                   get(f"{prefix}.attn_sink").float(), Rope.for_layer(args, ratio, device),
                   args, ratio, comp, idx,
                   wo_a_fp8=wo_a if wo_a.weight.device.type == "cpu" else None)  # fmt: skip

    def new_state(self, dtype: torch.dtype, device) -> LayerState:
        a = self.args
        st = LayerState(torch.zeros(a.window_size, a.head_dim, dtype=dtype, device=device))
        if self.ratio:
            st.entries = EntryCache.empty(a.head_dim, dtype, device)
            st.compressor = self.compressor.new_state(device)
        if self.indexer is not None:
            st.index_keys = EntryCache.empty(a.index_head_dim, dtype, device)
            st.index_compressor = self.indexer.compressor.new_state(device)
        return st

    def _quant_nope(self, kv: torch.Tensor, nx: Numerics) -> torch.Tensor:
        """REF's FP8 simulation of the non-RoPE dims (blocks of 64); RoPE dims stay as they are."""
        if not nx.quant_sim:
            return kv
        rd = self.args.rope_head_dim
        return torch.cat((act_quant_dequant(kv[..., :-rd], 64), kv[..., -rd:]), dim=-1)

    def __call__(
        self, x: torch.Tensor, start: int, state: LayerState, nx: Numerics
    ) -> torch.Tensor:
        """x act [S, D] at positions start… -> act [S, D]; updates `state`."""
        a, seq = self.args, x.shape[0]
        if seq == 1 and (step := self._step_for(x, nx)) is not None:
            return step(x, start, state, nx)  # the same C calls, bound once
        tables = self.rope.positions(start, seq)
        _, cos, sin = tables
        # -- queries: low-rank q, per-head RMS scaling without weight (in the act dtype), RoPE
        q_low, kv = fp8_linears(x, (self.wq_a, self.wkv), nx, self.qkv_a)  # one act-quant
        qr = rms_norm(q_low, self.q_norm, a.norm_eps)
        q = self.wq_b(qr, nx).view(seq, a.n_heads, a.head_dim)
        if (lib := native_lib("rows", q)) is not None:  # both steps in one C call
            q = rows_native.head_norm_rope(lib, q, cos, sin, norm_eps=a.norm_eps)
        else:
            q = q * torch.rsqrt(q.square().mean(-1, keepdim=True) + a.norm_eps)
            q = apply_rope(q, cos, sin)
        # -- this chunk's window keys (= values)
        kv = rms_norm(kv, self.kv_norm, a.norm_eps)
        kv = self._quant_nope(apply_rope(kv, cos, sin), nx)
        if seq == 1:
            keys, idxs = self._step_keys(x, qr, kv, start, state, nx, tables)
        else:
            keys, idxs = self._chunk_keys(x, qr, kv, start, state, nx, tables)
        o = sparse_attn(q[None], keys[None], self.attn_sink, idxs[None], a.head_dim**-0.5)[0]
        # V carries RoPE: rotate the output back at the query position.
        o = apply_rope(o, cos, sin, inverse=True)
        return self._project_out(o, nx)

    def _step_for(self, x: torch.Tensor, nx: Numerics) -> AttentionStep | None:
        return thread_step(self._steps, AttentionStep, self, x, nx)

    def _chunk_keys(self, x, qr, kv, start: int, state: LayerState, nx: Numerics, tables):
        """Keys (window part, then compressed entries) and each query's indices into them,
        int32 [S, n] (−1 pads); updates `state`."""
        keys, idxs = _window(state, kv, start, self.args.window_size)
        if self.ratio:
            entries = self._compress(x, start, state, nx)
            comp_idxs = self._select(x, qr, start, state, nx, entries.shape[0], tables)
            comp_idxs = torch.where(comp_idxs >= 0, comp_idxs + keys.shape[0], -1)
            keys = torch.cat((keys, entries))
            idxs = torch.cat((idxs, comp_idxs), dim=1)
        return keys, idxs.to(torch.int32)

    def _step_keys(self, x, qr, kv, start: int, state: LayerState, nx: Numerics, tables):
        """`_chunk_keys` for one token, with a few ops instead of a few dozen: the query sees
        every key of the window, so the ring buffer itself (its own slot written first) is the
        window part, in ring order; an HCA query sees every entry emitted so far."""
        keys = _window_step(state, kv, start, self.args.window_size)
        return self._one_token_keys(
            keys, x, start, state, nx, self.compressor,
            lambda: self.indexer(x, qr, start, state, self.rope, nx, tables).to(torch.int32),
        )  # fmt: skip

    def _one_token_keys(self, keys, x, start, state, nx, compressor, choose):
        """The window's keys act [n_win, hd] (the ring, this token's slot written) followed
        by the compressed entries, and int32 indices [1, n] into them. `compressor` steps a
        compressor as `Compressor.__call__`; `choose()` gives the indexer's entries (CSA)."""
        n_win = keys.shape[0]
        if not self.ratio:
            return keys, _iota(n_win, x.device)[None]
        entries = self._compress(x, start, state, nx, compressor)
        if entries.shape[0]:
            keys = torch.cat((keys, entries))
        if self.indexer is None:
            return keys, _iota(keys.shape[0], x.device)[None]
        chosen = choose()
        chosen = torch.where(chosen >= 0, chosen + n_win, -1)
        return keys, torch.cat((_iota(n_win, x.device)[None], chosen), dim=1)

    def _compress(self, x, start: int, state: LayerState, nx: Numerics, compressor=None):
        """Steps the compressor (`compressor`: the same call in another form) and returns
        every entry so far, act [n, hd], this chunk's FP8-simulated and appended."""
        run = self.compressor if compressor is None else compressor
        new, state.compressor = run(x, start, state.compressor, self.rope)
        if new.shape[0]:  # most decode steps complete no window: nothing to quantize or append
            state.entries.append(self._quant_nope(new, nx))
        return state.entries.valid()

    def _select(self, x, qr, start, state, nx, n: int, tables) -> torch.Tensor:
        """Compressed entries each query attends to; `tables` = (positions, cos, sin)."""
        if self.indexer is not None:
            return self.indexer(x, qr, start, state, self.rope, nx, tables).long()
        pos = tables[0]
        j = torch.arange(n, device=x.device)
        return torch.where(j[None, :] < ((pos + 1) // self.ratio)[:, None], j[None, :], -1)

    def _project_out_stored(self, o: torch.Tensor, g: int, r: int) -> torch.Tensor | None:
        """o act [S, H·hd] through wo_a as stored (FP8), on CPU: a C GEMV per group at
        decode, the AMX GEMM at prefill; fp32 sums rounded once to the act dtype, REF's bf16
        GEMM of the same values up to summation order. None where neither applies."""
        lin, seq = self.wo_a_fp8, o.shape[0]
        if lin is None or r % 128:
            return None
        if (lib := native_gemm(o, lin.weight)) is not None:
            parts = [gemm_native.fp8_gemm(lib, og, *_group_rows(lin, i, r), False, o.dtype)
                     for i, og in enumerate(o.view(seq, g, -1).unbind(1))]  # fmt: skip
            return parts[0] if g == 1 else torch.cat(parts, dim=1)
        if g == 1:
            return amx_gemm(o.view(seq, -1), lin.weight, lin.scale_fp32, o.dtype)
        return None

    def _project_out(self, o: torch.Tensor, nx: Numerics) -> torch.Tensor:
        """Grouped low-rank projection: per group g, o_g [S, H/G·hd] @ wo_a_gᵀ, then wo_b."""
        a, seq = self.args, o.shape[0]
        g = a.o_groups
        if (y := self._project_out_stored(o, g, a.o_lora_rank)) is not None:
            return self.wo_b(y, nx)
        wo_a = self.wo_a.to(o.dtype).view(g, a.o_lora_rank, -1)  # bf16 in bf16 mode, as REF
        # [G, S, H/G·hd] @ [G, H/G·hd, R]: a batched matmul (torch's einsum is slow in bf16)
        o = torch.bmm(o.view(seq, g, -1).transpose(0, 1), wo_a.transpose(1, 2)).transpose(0, 1)
        return self.wo_b(o.flatten(1), nx)


def _group_rows(lin: FP8Linear, g: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows g·rows… of an FP8 weight with their block scales (rows a multiple of 128)."""
    lo, blk = g * rows, rows // 128
    return lin.weight[lo : lo + rows], lin.scale_fp32[g * blk : (g + 1) * blk]


def _window(
    state: LayerState, kv: torch.Tensor, start: int, win: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys of the window part and each query's indices into them.

    Returns (keys act [L, hd], idxs int64 [S, min(win, L)]): keys are the ring-buffer rows of
    positions max(0, start−win+1)…start−1 followed by the chunk's own rows; query t sees
    positions max(0, t−win+1)…t (−1 pads). The ring buffer is updated with the chunk.
    """
    end = start + kv.shape[0]
    first = max(0, start - win + 1)
    dev = kv.device
    past = state.window.index_select(0, torch.arange(first, start, device=dev) % win)
    keys = torch.cat((past, kv))
    width = min(win, keys.shape[0])
    t = torch.arange(start, end, device=dev)[:, None]
    cols = (t - win + 1).clamp_min(0) + torch.arange(width, device=dev)[None, :]
    idxs = torch.where(cols <= t, cols - first, -1)
    keep = torch.arange(max(first, end - win), end, device=dev)
    state.window.index_copy_(0, keep % win, keys.index_select(0, keep - first))
    return keys, idxs


def _window_step(state: LayerState, kv: torch.Tensor, start: int, win: int) -> torch.Tensor:
    """`_window` for one token, whose query sees every key: its slot of the ring buffer is
    written (the position it held left the window), and the ring itself is the keys, act
    [min(start+1, win), hd] in ring order (attention does not depend on the order)."""
    state.window[start % win] = kv[0]
    return state.window[: min(start + 1, win)]
