"""A one-token attention step on CPU with the C kernels called directly.

At decode each C kernel does microseconds of work, and the Python around it (checks,
allocations, views, dispatch) cost more than the kernels: ~300 µs per layer for a dozen
calls. `AttentionStep` binds one layer's kernels, weight pointers and scratch rows once and
then makes the same calls, with the same arguments, as `Attention.__call__` does through the
wrappers: the results are the same bits (tests compare the two paths). The window's new key
is written straight into its ring slot. The compressors and the indexer are stepped the same
way (`_CompressorStep`, `_IndexerStep`); their state updates stay their own code.
"""

from __future__ import annotations

import ctypes
import threading

import torch

from dsv4.kernels import (
    gemm_native,
    indexer_native,
    quant_native,
    rows_native,
    sparse_attn_native,
)
from dsv4.kernels.dispatch import native_lib
from dsv4.kernels.native import ACT_KIND

from .numerics import Numerics
from .state import LayerState


def thread_step(steps: dict, cls, owner, x: torch.Tensor, nx: Numerics):
    """The calling thread's step of `owner` (a step's scratch rows are written by each call),
    built on first use and rebuilt when x's dtype, the numerics or the C library change;
    None where the general path must run."""
    thread = threading.get_ident()
    step = steps.get(thread)
    if step is None or not step.matches(x, nx):
        step = steps[thread] = cls.build(owner, x, nx)
    return step


class AttentionStep:
    """One layer's `Attention` for a single token, for one act dtype and numerics mode."""

    def __init__(self, attn, dtype: torch.dtype, quant: bool, libs: dict[str, ctypes.CDLL]):
        a = attn.args
        self.attn, self.dtype, self.quant, self.libs = attn, dtype, quant, libs
        self.kind = ACT_KIND[dtype]
        self.h, self.hd, self.rd, self.eps = a.n_heads, a.head_dim, a.rope_head_dim, a.norm_eps
        self.win, self.scale = a.window_size, a.head_dim**-0.5
        self.groups, self.esize = a.o_groups, torch.empty(0, dtype=dtype).element_size()
        gemm = libs["gemm"]
        self.fp8 = gemm_native._fn(gemm, "dsv4_fp8_gemm")
        self.norm = rows_native._fn(libs["rows"], "dsv4_rms_norm")
        self.rope = rows_native._fn(libs["rows"], "dsv4_head_norm_rope")
        self.round_trip = quant_native._kernels(libs["quant"]).fp8
        self.attend = sparse_attn_native._kernel(libs["sparse_attn"])
        self.index = _IndexerStep(attn.indexer, self, libs) if attn.indexer is not None else None
        self.compress = None
        if attn.compressor is not None:
            self.compress = _CompressorStep(attn.compressor, gemm, self.kind, dtype)
        # weights checked once (`BoundFP8`); the linears keep them alive
        self.wq_a, self.wkv = attn.wq_a.gemv(gemm), attn.wkv.gemv(gemm)
        self.wq_b, self.wo_b = attn.wq_b.gemv(gemm), attn.wo_b.gemv(gemm)
        self.wo_a = attn.wo_a_fp8.gemv(gemm)
        self.q_norm, self.kv_norm = attn.q_norm.data_ptr(), attn.kv_norm.data_ptr()
        self.sink = attn.attn_sink.contiguous()
        q_lora, hd, h = self.wq_a.n, self.hd, self.h
        row = {"q_low": q_lora, "qr": q_lora, "kv": hd, "kvn": hd, "q": h * hd, "qn": h * hd,
               "o": h * hd, "on": h * hd, "oa": self.wo_a.n}  # fmt: skip
        self.buf = {k: torch.empty(1, n, dtype=dtype) for k, n in row.items()}
        self.ptr = {k: t.data_ptr() for k, t in self.buf.items()}

    @classmethod
    def build(cls, attn, x: torch.Tensor, nx: Numerics) -> AttentionStep | None:
        """The step for these operands, or None where the general path must run: no C
        kernels here or in this mode, an unusual dtype, wo_a not kept as stored, or dims the
        C calls do not take whole (the non-RoPE dims in blocks of 64, the indexer's head a
        power of two in blocks of 32)."""
        a = attn.args
        ihd = a.index_head_dim
        if (x.dtype not in ACT_KIND or attn.wo_a_fp8 is None or a.o_lora_rank % 128
                or (a.head_dim - a.rope_head_dim) % 64
                or (attn.indexer is not None and (ihd & (ihd - 1) or ihd % 32))):  # fmt: skip
            return None
        libs = {}
        for name in ("gemm", "rows", "quant", "sparse_attn", "indexer"):
            if (lib := native_lib(name, x)) is None:
                return None
            libs[name] = lib
        return cls(attn, x.dtype, nx.quant_sim, libs)

    def matches(self, x: torch.Tensor, nx: Numerics) -> bool:
        return (x.dtype == self.dtype and nx.quant_sim == self.quant
                and native_lib("gemm", x) is self.libs["gemm"])  # fmt: skip

    def _gemv(self, bound, src: int, dst: int, quant: bool) -> None:
        rc = self.fp8(src, self.kind, bound.wp, bound.sp, dst, self.kind, 1, bound.n, bound.k,
                      int(quant))  # fmt: skip
        if rc:
            raise MemoryError("fp8_gemm: the C kernel could not allocate its work buffers")

    def __call__(
        self, x: torch.Tensor, start: int, state: LayerState, nx: Numerics
    ) -> torch.Tensor:
        """x act [1, D] at position `start` -> act [1, D]; updates `state`."""
        attn, p, kind, hd, rd, h = self.attn, self.ptr, self.kind, self.hd, self.rd, self.h
        x = x.contiguous()
        tables = attn.rope.positions(start, 1)
        cos, sin = tables[1].data_ptr(), tables[2].data_ptr()
        # -- queries and this token's key, as Attention.__call__
        xp = x.data_ptr()
        self._gemv(self.wq_a, xp, p["q_low"], self.quant)
        self._gemv(self.wkv, xp, p["kv"], self.quant)
        self.norm(p["q_low"], self.q_norm, p["qr"], 1, self.wq_a.n, self.eps, kind)
        self._gemv(self.wq_b, p["qr"], p["q"], self.quant)
        self.rope(p["q"], p["qn"], cos, sin, 1, h, hd, rd, 1, self.eps, 0, kind)
        self.norm(p["kv"], self.kv_norm, p["kvn"], 1, hd, self.eps, kind)
        ring = state.window
        if not ring.is_contiguous() or ring.dtype != self.dtype:
            raise ValueError(f"window ring {ring.dtype} strides {ring.stride()}: expected a "
                             f"contiguous {self.dtype} tensor")  # fmt: skip
        slot = ring.data_ptr() + (start % self.win) * hd * ring.element_size()
        self.rope(p["kvn"], slot, cos, sin, 1, 1, hd, rd, 0, 0.0, 0, kind)
        if self.quant:  # REF's FP8 simulation of the non-RoPE dims, in place in the ring
            self.round_trip(slot, slot, 1, hd - rd, hd, 64, kind, kind)
        keys, idxs = self._keys(x, start, state, nx, tables)
        # -- attention over the keys, inverse RoPE, output projection
        bad = self.attend(p["qn"], keys.data_ptr(), self.sink.data_ptr(), idxs.data_ptr(),
                          p["o"], 1, 1, h, hd, keys.shape[0], idxs.shape[-1], self.scale,
                          kind, 0)  # fmt: skip
        if bad:
            raise (MemoryError if bad < 0 else IndexError)(f"sparse attention failed ({bad})")
        self.rope(p["o"], p["on"], cos, sin, 1, h, hd, rd, 0, 0.0, 1, kind)
        self._project_groups(p["on"], p["oa"])
        out = torch.empty(1, self.wo_b.n, dtype=self.dtype)
        self._gemv(self.wo_b, p["oa"], out.data_ptr(), self.quant)
        return out

    def _project_groups(self, src: int, dst: int) -> None:
        """wo_a per group (as `Attention._project_out_stored`): group g's H/G heads times its
        R rows of wo_a and their block scales, no act-quant (REF's wo_a is a bf16 einsum)."""
        w, g, es = self.wo_a, self.groups, self.esize
        r, k = w.n // g, w.k  # rows per group (a multiple of 128), H·hd/G
        kb = -(-k // 128)
        for i in range(g):
            scales = w.sp + i * (r // 128) * kb * 4  # fp32 block scales of the group's rows
            rc = self.fp8(src + i * k * es, self.kind, w.wp + i * r * k, scales,
                          dst + i * r * es, self.kind, 1, r, k, 0)  # fmt: skip
            if rc:
                raise MemoryError("fp8_gemm: the C kernel could not allocate its work buffers")

    def _keys(self, x, start: int, state: LayerState, nx: Numerics, tables):
        """Keys and int32 indices [1, n] as `Attention._step_keys` (the ring already written)."""
        keys = state.window[: min(start + 1, self.win)]
        choose = lambda: self.index(x, start, state, nx, tables)  # noqa: E731
        return self.attn._one_token_keys(keys, x, start, state, nx, self.compress, choose)


class _CompressorStep:
    """`Compressor.__call__` for one token: the projection by the bound C GEMV (the call the
    general path makes through `linear_fp32`) into a fresh row, ape added in place; the
    state's update is the compressor's own `advance`."""

    def __init__(self, comp, gemm: ctypes.CDLL, kind: int, dtype: torch.dtype) -> None:
        self.comp, self.kind, self.dtype, self.w = comp, kind, dtype, comp.w.contiguous()
        self.fn = gemm_native._fn(gemm, "dsv4_bf16_gemm")
        self.width = self.w.shape[0] // 2

    def __call__(self, x: torch.Tensor, start: int, state, rope):
        comp, n = self.comp, self.w.shape[0]
        y = torch.empty(1, n)
        rc = self.fn(x.data_ptr(), self.kind, self.w.data_ptr(), y.data_ptr(), 0, 1, n,
                     self.w.shape[1])  # fmt: skip
        if rc:
            raise MemoryError("bf16_gemm: the C kernel could not allocate its work buffers")
        kv, score = y[:, : self.width], y[:, self.width :]
        score += comp.ape[start % comp.ratio]
        return comp.advance(kv, score, start, state, rope, self.dtype)


_IOTA: dict[torch.device, torch.Tensor] = {}


def _iota(n: int, device: torch.device) -> torch.Tensor:
    """int32 0…n−1 on `device`: a view of a shared table, grown on demand, never written."""
    table = _IOTA.get(device)
    if table is None or table.shape[0] < n:
        size = max(n, 4096, 0 if table is None else 2 * table.shape[0])
        table = _IOTA[device] = torch.arange(size, dtype=torch.int32, device=device)
    return table[:n]


class _IndexerStep:
    """`Indexer.__call__` for one token with its C calls bound (the compressor keeps its
    code): the same calls and arguments as through the wrappers."""

    def __init__(self, idx, step: AttentionStep, libs: dict[str, ctypes.CDLL]) -> None:
        self.idx, self.step = idx, step
        self.wq_b = idx.wq_b.gemv(libs["gemm"])
        self.bf16_gemm = gemm_native._fn(libs["gemm"], "dsv4_bf16_gemm")
        self.hadamard = quant_native._kernels(libs["quant"]).hadamard
        self.topk = indexer_native._fn(libs["indexer"])
        self.proj = idx.weights_proj.contiguous()
        self.compress = _CompressorStep(idx.compressor, libs["gemm"], step.kind, step.dtype)
        self.w_scale = idx.head_dim**-0.5 * idx.n_heads**-0.5
        h, d, dtype = idx.n_heads, idx.head_dim, step.dtype
        self.buf = {k: torch.empty(1, h * d, dtype=dtype) for k in ("q", "qr", "qs")}
        self.ptr = {k: t.data_ptr() for k, t in self.buf.items()}

    def __call__(self, x, start: int, state: LayerState, nx: Numerics, tables) -> torch.Tensor:
        """x act [1, D] (the step's qr in its buffer) -> entry indices int32 [1, k]."""
        idx, st, p, kind = self.idx, self.step, self.ptr, self.step.kind
        h, d = idx.n_heads, idx.head_dim
        st._gemv(self.wq_b, st.ptr["qr"], p["q"], st.quant)
        pos, cos, sin = tables
        st.rope(p["q"], p["qr"], cos.data_ptr(), sin.data_ptr(), 1, h, d, st.rd, 0, 0.0, 0, kind)
        q = p["qr"]
        if st.quant:  # REF's Hadamard rotation and FP4 round trip
            self.hadamard(p["qr"], p["qs"], h, d, d**-0.5, 32, kind == 1, True)
            q = p["qs"]
        keys, state.index_compressor = self.compress(x, start, state.index_compressor,
                                                     st.attn.rope)  # fmt: skip
        if keys.shape[0]:  # a new key every 4 tokens
            state.index_keys.append(idx._simulate(keys, nx))
        w = torch.empty(1, h, dtype=st.dtype)
        rc = self.bf16_gemm(x.data_ptr(), kind, self.proj.data_ptr(), w.data_ptr(), kind, 1, h,
                            self.proj.shape[1])  # fmt: skip
        if rc:
            raise MemoryError("bf16_gemm: the C kernel could not allocate its work buffers")
        w = w * self.w_scale  # in the act dtype, as REF
        entries = state.index_keys.valid()
        n = entries.shape[0]
        out = torch.full((1, min(idx.topk, n)), -1, dtype=torch.int32)
        if self.topk(q, entries.data_ptr(), w.data_ptr(), pos.data_ptr(), 1, h, n, d, 4,
                     out.shape[1], out.data_ptr(), kind):  # fmt: skip
            raise MemoryError("index_score_topk: the C kernel could not allocate its buffers")
        return out
