"""Native CPU twin of `sparse_attn.py` (`csrc/sparse_attn.c`): sparse attention with a sink.

One C call does the whole op, a query row at a time and two passes per row as the reference:
fp32 scores of all heads over the listed rows (dot product, then `* scale`), the max over the
valid entries, p = exp(s - max), the denominator from the unrounded p plus the sink term, p
cast to the act dtype, P·V in fp32, and `/ denom` cast to the act dtype. Only the summation
order of the dot products and of the denominator differs from `sparse_attn_ref` (and exp may
differ from torch's in the last bit). A repeated index counts once per entry, as in the
reference's gather path (its dense path rounds `count * p` instead: the same for count 2).

Code paths: bf16 with D % 32 == 0 runs on AMX tiles where the CPU and the OS
offer them; otherwise AVX-512 FMA loops over fp32 rows; otherwise portable C loops.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Literal

import torch

from . import native

_ACT = (torch.bfloat16, torch.float32)
_IDX = (torch.int32, torch.int64)
Impl = Literal["best", "no_amx", "portable"]
_IMPLS: tuple[Impl, ...] = ("best", "no_amx", "portable")  # the C kernel's `impl` codes


class SparseAttnKernelError(ValueError):
    """An operand of `sparse_attn_native` has the wrong shape, dtype or device."""


def native_supported(q, kv, attn_sink, topk_idxs) -> bool:
    """Whether the C kernel takes these operands (else the dispatcher runs the reference,
    which also raises the reference's own errors)."""
    return (
        q.dtype in _ACT
        and kv.dtype == q.dtype
        and q.dim() == 4
        and kv.dim() == 3
        and topk_idxs.dim() == 3
        and topk_idxs.dtype in _IDX
    )


def sparse_attn_native(
    lib: ctypes.CDLL,
    q: torch.Tensor,
    kv: torch.Tensor,
    attn_sink: torch.Tensor,
    topk_idxs: torch.Tensor,
    scale: float,
    impl: Impl = "best",
) -> torch.Tensor:
    """`sparse_attn_ref` in C: q act [B,M,H,D], kv act [B,N,D], attn_sink fp32 [H], topk_idxs
    int32 [B,M,K] (< 0 = skip) -> act [B,M,H,D]. `impl` picks a code path (tests run each):
    the fastest this machine has, all but AMX, or the portable loops only."""
    _check(q, kv, attn_sink, topk_idxs)
    (b, m, h, d), n, k = q.shape, kv.shape[1], topk_idxs.shape[2]
    q, kv = q.contiguous(), kv.contiguous()
    sink = attn_sink if attn_sink.dtype == torch.float32 else attn_sink.float()
    idx = topk_idxs if topk_idxs.dtype == torch.int32 else topk_idxs.int()
    sink, idx = sink.contiguous(), idx.contiguous()
    out = torch.empty((b, m, h, d), dtype=q.dtype)
    if out.numel() == 0:
        return out
    # contiguous CPU tensors (checked above), so their data pointers are what C reads
    bad = _kernel(lib)(q.data_ptr(), kv.data_ptr(), sink.data_ptr(), idx.data_ptr(),
                       out.data_ptr(), b, m, h, d, n, k, scale, q.dtype == torch.bfloat16,
                       _IMPLS.index(impl))  # fmt: skip
    if bad < 0:
        raise MemoryError(f"sparse_attn_native: no memory for the work buffers of H={h}, D={d}, "
                          f"K={k}, N={n}")  # fmt: skip
    if bad:
        raise IndexError(f"sparse_attn_native: {bad} entries of topk_idxs are >= N={n} "
                         f"(the rows of kv {tuple(kv.shape)})")  # fmt: skip
    return out


def available_impls(lib: ctypes.CDLL) -> tuple[Impl, ...]:
    """The code paths this machine really runs ("no_amx" is the AVX-512 one; asking for a
    missing path runs the next one down)."""
    fn = lib.sparse_attn_impls
    fn.argtypes, fn.restype = [], ctypes.c_int64
    flags = fn()
    return tuple(i for i, bit in zip(_IMPLS, (2, 1, 0), strict=True) if not bit or flags & bit)


@functools.cache
def _kernel(lib: ctypes.CDLL):
    P, I64, F32 = native.P, native.I64, native.F32  # noqa: N806
    fn = native.declare(lib, "sparse_attn_fwd", P, P, P, P, P, I64, I64, I64, I64, I64, I64, F32,
                        I64, I64)  # fmt: skip
    fn.restype = I64  # the number of indices >= N (-1: out of memory)
    return fn


def _check(q, kv, attn_sink, topk_idxs) -> None:
    """Shapes, dtypes and devices that the C kernel reads blindly."""
    if q.dim() != 4 or q.dtype not in _ACT:
        _fail(f"q is {q.dtype} {tuple(q.shape)}, expected [B, M, H, D] of bf16/fp32")
    b, m, h, d = q.shape
    ks = kv.shape
    if len(ks) != 3 or ks[0] != b or ks[2] != d or kv.dtype != q.dtype:
        _fail(f"kv is {kv.dtype} {tuple(ks)}, expected [{b}, N, {d}] of {q.dtype}")
    if attn_sink.shape != (h,) or not attn_sink.dtype.is_floating_point:
        _fail(f"attn_sink is {attn_sink.dtype} {tuple(attn_sink.shape)}, expected fp32 [{h}]")
    if topk_idxs.dim() != 3 or topk_idxs.shape[:2] != (b, m) or topk_idxs.dtype not in _IDX:
        _fail(f"topk_idxs is {topk_idxs.dtype} {tuple(topk_idxs.shape)}, expected int32 "
              f"[{b}, {m}, K]")  # fmt: skip
    if not (q.is_cpu and kv.is_cpu and attn_sink.is_cpu and topk_idxs.is_cpu):
        _fail(f"operands on {q.device}, {kv.device}, {attn_sink.device}, {topk_idxs.device}, "
              f"expected the CPU")  # fmt: skip


def _fail(msg: str) -> None:
    raise SparseAttnKernelError(f"sparse_attn_native: {msg}")
