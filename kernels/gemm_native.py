"""Host wrappers of the C few-row GEMMs (`csrc/gemm.c`): the head's bf16 GEMM with fp32
accumulation and the FP8 block-scaled GEMM with REF's activation quantization fused in.

Both read each weight row once for a group of rows of x and never materialize a dequantized
weight, so a decode step reads the weights at their stored size (bf16: 2 bytes, FP8: 1 byte
per value) in one call, where the torch path upcasts slabs and dispatches per slab. x comes
in its own dtype (fp32 or bf16, widened in C) and the output is fp32 or, rounded once from
the fp32 sums, bf16: REF's GEMMs with an act-dtype output round the same way.
"""

from __future__ import annotations

import ctypes
import functools
from concurrent.futures import ThreadPoolExecutor

import torch

from .native import ACT_KIND, F32, I64, P, declare, ptr


@functools.cache
def _fn(lib: ctypes.CDLL, name: str):
    args = {
        "dsv4_bf16_gemm": (P, I64, P, P, I64, I64, I64, I64),
        "dsv4_fp8_gemm": (P, I64, P, P, P, I64, I64, I64, I64, I64),
        "dsv4_fp8_swiglu": (P, I64, P, P, P, P, P, P, P, I64, I64, I64, F32, I64),
        "dsv4_amx_gemm": (P, P, I64, P, P, I64, I64, I64, I64),
    }[name]
    fn = declare(lib, name, *args)
    fn.restype = ctypes.c_int
    return fn


def _check_weight(w: torch.Tensor, dtype: torch.dtype) -> None:
    if w.dtype != dtype or w.dim() != 2 or not w.is_contiguous():
        raise ValueError(f"weight: expected a contiguous {dtype} tensor of 2 dims, got "
                         f"{w.dtype} {tuple(w.shape)} strides {w.stride()}")  # fmt: skip


def _check_scale(w: torch.Tensor, scale: torch.Tensor) -> None:
    want = (-(-w.shape[0] // 128), -(-w.shape[1] // 128))
    if scale.dtype != torch.float32 or tuple(scale.shape) != want:
        raise ValueError(f"scale {scale.dtype} {tuple(scale.shape)} for weight "
                         f"{tuple(w.shape)}: shapes do not match")  # fmt: skip


def _operands(x: torch.Tensor, w: torch.Tensor, wdtype: torch.dtype, out_dtype: torch.dtype):
    if x.dtype not in ACT_KIND or out_dtype not in ACT_KIND:
        raise ValueError(f"x {x.dtype}, output {out_dtype}: expected bfloat16 or float32")
    _check_weight(w, wdtype)
    if x.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"x {tuple(x.shape)} and weight {tuple(w.shape)}: shapes do not match")
    return x.contiguous(), torch.empty(x.shape[0], w.shape[0], dtype=out_dtype)


def _check_rc(rc: int, what: str) -> None:
    if rc:
        raise MemoryError(f"{what}: the C kernel could not allocate its work buffers")


def bf16_gemm(
    lib: ctypes.CDLL, x: torch.Tensor, w: torch.Tensor, out_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """x [M, K] (fp32 or bf16) @ w bf16 [N, K]ᵀ -> [M, N] in out_dtype, fp32 sums."""
    x, y = _operands(x, w, torch.bfloat16, out_dtype)
    (m, k), n = x.shape, w.shape[0]
    fn, xa, ya = _fn(lib, "dsv4_bf16_gemm"), ACT_KIND[x.dtype], ACT_KIND[y.dtype]
    parts = _row_split(m, n)
    if len(parts) == 1:
        _check_rc(fn(ptr(x), xa, ptr(w), ptr(y), ya, m, n, k), "bf16_gemm")
        return y
    # one x row: each thread writes its own slice of y; the GIL is released during the calls
    wb, yb, esize = ptr(w), ptr(y), y.element_size()
    calls = [(ptr(x), xa, wb + lo * k * 2, yb + lo * esize, ya, 1, hi - lo, k) for lo, hi in parts]
    for rc in _pool().map(lambda args: fn(*args), calls):
        _check_rc(rc, "bf16_gemm")
    return y


_SPLIT_MIN_ROWS = 1 << 14
"""A one-row GEMV over at least this many weight rows (the head) is split over torch's
threads: it streams the weight from memory, and one core does not saturate the memory
system. Every output is the same dot product whatever the split, so results do not change."""


def _row_split(m: int, n: int) -> list[tuple[int, int]]:
    """[lo, hi) weight-row ranges for the threads (one range: no split)."""
    threads = torch.get_num_threads()
    if m != 1 or n < _SPLIT_MIN_ROWS or threads < 2:
        return [(0, n)]
    step = -(-n // threads)
    step = -(-step // 64) * 64  # cache-line-sized boundaries in y
    return [(lo, min(n, lo + step)) for lo in range(0, n, step)]


@functools.cache
def _pool_of(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dsv4-gemv")


def _pool() -> ThreadPoolExecutor:
    return _pool_of(torch.get_num_threads())


def fp8_gemm(
    lib: ctypes.CDLL,
    x: torch.Tensor,
    w: torch.Tensor,
    scale: torch.Tensor,
    quant: bool,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """x [M, K] @ Wᵀ -> [M, N] in out_dtype for W = w e4m3 [N, K] times fp32 block scales
    [⌈N/128⌉, ⌈K/128⌉]; `quant`: x goes through REF's FP8 activation quantization first (the
    values of `quant.act_quant_values(x, 128)`)."""
    x, y = _operands(x, w, torch.float8_e4m3fn, out_dtype)
    _check_scale(w, scale)
    (m, k), n = x.shape, w.shape[0]
    if quant and k % 128:
        raise ValueError(f"activation quantization needs K % 128 == 0, got K = {k}")
    rc = _fn(lib, "dsv4_fp8_gemm")(ptr(x), ACT_KIND[x.dtype], ptr(w), ptr(scale), ptr(y),
                                   ACT_KIND[y.dtype], m, n, k, int(quant))  # fmt: skip
    _check_rc(rc, "fp8_gemm")
    return y


class BoundFP8:
    """`fp8_gemm` of one weight whose operands were checked once: a decode step calls each
    linear's GEMV with one x row, and re-checking the weight and scales cost twice the C call
    for the small ones. Each call checks only x (anything unusual takes `fp8_gemm`)."""

    __slots__ = ("lib", "fn", "w", "scale", "wp", "sp", "n", "k")

    def __init__(self, lib: ctypes.CDLL, w: torch.Tensor, scale: torch.Tensor) -> None:
        _check_weight(w, torch.float8_e4m3fn)
        _check_scale(w, scale)
        if not (w.is_cpu and scale.is_contiguous()):
            raise ValueError("BoundFP8: the weight and its scales must be contiguous CPU tensors")
        self.lib, self.fn, self.w, self.scale = lib, _fn(lib, "dsv4_fp8_gemm"), w, scale
        self.wp, self.sp, (self.n, self.k) = w.data_ptr(), scale.data_ptr(), w.shape

    def __call__(self, x: torch.Tensor, quant: bool, out_dtype: torch.dtype) -> torch.Tensor:
        kind, out_kind = ACT_KIND.get(x.dtype), ACT_KIND.get(out_dtype)
        if (kind is None or out_kind is None or x.dim() != 2 or x.shape[1] != self.k
                or not x.is_contiguous() or not x.is_cpu or (quant and self.k % 128)):  # fmt: skip
            return fp8_gemm(self.lib, x, self.w, self.scale, quant, out_dtype)  # its errors
        y = torch.empty(x.shape[0], self.n, dtype=out_dtype)
        rc = self.fn(x.data_ptr(), kind, self.wp, self.sp, y.data_ptr(), out_kind, x.shape[0],
                     self.n, self.k, int(quant))  # fmt: skip
        _check_rc(rc, "fp8_gemm")
        return y


def fp8_swiglu(
    lib: ctypes.CDLL,
    x: torch.Tensor,
    w1: tuple[torch.Tensor, torch.Tensor],
    w3: tuple[torch.Tensor, torch.Tensor],
    w2: tuple[torch.Tensor, torch.Tensor],
    limit: float,
    quant: bool,
) -> torch.Tensor:
    """REF's shared expert on x act [M, D] -> act [M, D] in one call: w2(act(silu(g)·u)) with
    g = w1(x), u = w3(x) rounded to the act dtype and clamped (`limit` > 0); each weight is an
    (e4m3 [out, in], fp32 block scales) pair, and `quant` is REF's FP8 act-quant before each
    GEMM."""
    (b1, c1), (b3, c3), (b2, c2) = w1, w3, w2
    i, d = b1.shape
    if b3.shape != (i, d) or b2.shape != (d, i) or x.dim() != 2 or x.shape[1] != d:
        raise ValueError(f"x {tuple(x.shape)}, w1 {tuple(b1.shape)}, w3 {tuple(b3.shape)}, "
                         f"w2 {tuple(b2.shape)}: shapes do not match")  # fmt: skip
    if x.dtype not in ACT_KIND:
        raise ValueError(f"x {x.dtype}: expected bfloat16 or float32")
    for b, c in ((b1, c1), (b3, c3), (b2, c2)):
        _check_weight(b, torch.float8_e4m3fn)
        _check_scale(b, c)
    if quant and (d % 128 or i % 128):
        raise ValueError(f"activation quantization needs D and I % 128 == 0, got {d}, {i}")
    x = x.contiguous()
    y = torch.empty_like(x)
    rc = _fn(lib, "dsv4_fp8_swiglu")(ptr(x), ACT_KIND[x.dtype], ptr(b1), ptr(c1), ptr(b3), ptr(c3),
                                     ptr(b2), ptr(c2), ptr(y), x.shape[0], d, i, limit,
                                     int(quant))  # fmt: skip
    _check_rc(rc, "fp8_swiglu")
    return y


@functools.cache
def amx_ready(lib: ctypes.CDLL) -> bool:
    """Whether the AMX GEMM runs here: built with AMX support and granted the tile state."""
    init = lib.dsv4_amx_init
    init.argtypes, init.restype = [], ctypes.c_int
    return bool(init())


def amx_gemm(
    lib: ctypes.CDLL,
    x: torch.Tensor,
    w: torch.Tensor,
    scale: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor | None:
    """x bf16 [M, K] @ Wᵀ on AMX tiles -> [M, N] in out_dtype (fp32 sums), for W = w bf16
    [N, K], or w e4m3 [N, K] times fp32 block `scale`; None when the tiles cannot take it
    (no AMX here, or K not a multiple of 32): the caller then runs its torch GEMM.

    Exact products of bf16 values with fp32 accumulation: REF's fp32 GEMM of bf16-valued
    operands up to the summation order."""
    if not amx_ready(lib) or w.shape[1] % 32:
        return None
    fp8 = w.dtype == torch.float8_e4m3fn
    x, y = _operands(x, w, w.dtype if fp8 else torch.bfloat16, out_dtype)
    if x.dtype != torch.bfloat16:
        raise ValueError(f"x {x.dtype}: the AMX GEMM takes bf16 activations")
    if fp8:
        _check_scale(w, scale)
    (m, k), n = x.shape, w.shape[0]
    s = ptr(scale) if fp8 else None
    rc = _fn(lib, "dsv4_amx_gemm")(ptr(x), ptr(w), int(fp8), s, ptr(y), ACT_KIND[y.dtype], m, n, k)
    _check_rc(rc, "amx_gemm")
    return y
