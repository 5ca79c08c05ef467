"""Native CPU twin of `moe.py` (`csrc/moe.c`): the routed FP4 experts in one C call.

The C kernel decodes the packed FP4 weights on the fly (a 16-entry table times the block's
power-of-two scale: the values `dequantize_fp4` gives, exactly), groups the (token, slot)
pairs by expert so that each expert's weights are read once per group of pairs, and applies
the reference's elementwise steps in its order and precision (FP8 round trips, act-dtype
casts, clamps, silu). Only the summation order of the dot products differs from `moe_ref`.
At prefill, experts with many pairs run their GEMMs on AMX tiles where the CPU has them
(bf16-valued operands: exact products, fp32 sums); `impl` turns that off for tests.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Literal

import torch

from . import native

_ACT = (torch.bfloat16, torch.float32)
_PACKED = (torch.int8, torch.uint8)
_SCALES = (torch.float8_e8m0fnu, torch.uint8)
_FP4_BLOCK = 32
_ACT_BLOCK = 128  # quant_sim's FP8 activation blocks
Impl = Literal["best", "no_amx"]
_IMPLS: tuple[Impl, ...] = ("best", "no_amx")  # the C kernel's `impl` codes


class MoEKernelError(ValueError):
    """An operand of `moe_native` has the wrong shape, dtype, layout or device."""


def native_supported(x, topk_ids, topk_weights, w1, w1_s, w3, w3_s, w2, w2_s, quant_sim) -> bool:
    """Whether the C kernel takes operands of these dtypes and sizes. Otherwise the
    dispatcher runs `moe_ref`, which also raises the reference's own errors (dims that are
    not whole blocks) or takes what only it handles (scales already decoded to fp32)."""
    if x.dtype not in _ACT or x.ndim != 2 or topk_ids.dtype != torch.int64:
        return False
    if topk_weights.dtype != torch.float32 or w1.ndim != 3:
        return False
    if w1.dtype not in _PACKED or w3.dtype not in _PACKED or w2.dtype not in _PACKED:
        return False
    if w1_s.dtype not in _SCALES or w3_s.dtype not in _SCALES or w2_s.dtype not in _SCALES:
        return False
    d, i = x.shape[1], w1.shape[1]
    block = _ACT_BLOCK if quant_sim else _FP4_BLOCK
    return d > 0 and i > 0 and d % block == 0 and i % block == 0


def moe_native(
    lib: ctypes.CDLL,
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    w1: torch.Tensor,
    w1_s: torch.Tensor,
    w3: torch.Tensor,
    w3_s: torch.Tensor,
    w2: torch.Tensor,
    w2_s: torch.Tensor,
    swiglu_limit: float,
    quant_sim: bool,
    impl: Impl = "best",
) -> torch.Tensor:
    """`moe_ref` in C: x act [T, D], topk_ids int64 [T, k], topk_weights fp32 [T, k], FP4
    experts w1/w3 int8 [E, I, D/2] with e8m0 scales [E, I, D/32], w2 int8 [E, D, I/2] with
    scales [E, D, I/32] -> fp32 [T, D]. D and I multiples of 32 (128 with quant_sim).
    `impl`: "best" uses AMX tiles for the experts with many pairs where it can (see
    `available_impls`), "no_amx" the FMA GEMMs only (tests compare the two)."""
    if not native_supported(x, topk_ids, topk_weights, w1, w1_s, w3, w3_s, w2, w2_s, quant_sim):
        raise MoEKernelError(
            f"moe_native: unsupported operands: x {x.dtype} {tuple(x.shape)}, topk_ids "
            f"{topk_ids.dtype}, topk_weights {topk_weights.dtype}, w1/w3/w2 {w1.dtype}/{w3.dtype}/"
            f"{w2.dtype} {tuple(w1.shape)}, scales {w1_s.dtype}/{w3_s.dtype}/{w2_s.dtype}, "
            f"quant_sim={quant_sim} (see native_supported; moe_ref takes the rest)"
        )
    x, ids, wts = x.contiguous(), topk_ids.contiguous(), topk_weights.contiguous()
    operands = (x, ids, wts, w1, w1_s, w3, w3_s, w2, w2_s)
    _check_layout(operands)
    (t, d), (e, i), k = x.shape, w1.shape[:2], ids.shape[1]
    y = torch.empty((t, d), dtype=torch.float32)
    # data_ptr, not native.ptr: _check_layout checked every operand (a few µs per decode step)
    ptrs = [o.data_ptr() for o in operands]
    bad = _kernel(lib)(ptrs[0], x.dtype == torch.bfloat16, *ptrs[1:3], t, k, d, i, e,
                       *ptrs[3:], swiglu_limit, bool(quant_sim), y.data_ptr(),
                       _IMPLS.index(impl))  # fmt: skip
    if bad < 0:
        raise MemoryError(f"moe_native: no memory for the work buffers (T={t}, D={d}, I={i})")
    if bad:
        raise IndexError(f"moe_native: {bad} entries of topk_ids are outside [0, {e})")
    return y


def available_impls(lib: ctypes.CDLL) -> tuple[Impl, ...]:
    """The code paths that really differ here: ("best", "no_amx") where the AMX path is built
    in and Linux lends the tiles, else ("no_amx",) ("best" then runs the same FMA GEMMs)."""
    fn = lib.moe_fp4_impls
    fn.argtypes, fn.restype = [], ctypes.c_int64
    return _IMPLS if fn() & 2 else ("no_amx",)


@functools.cache
def _kernel(lib: ctypes.CDLL):
    """`moe_fp4` of the library with its argument types (see csrc/moe.c)."""
    P, I64, F32 = native.P, native.I64, native.F32  # noqa: N806
    fn = native.declare(lib, "moe_fp4", P, I64, P, P, I64, I64, I64, I64, I64,
                        P, P, P, P, P, P, F32, I64, P, I64)  # fmt: skip
    fn.restype = I64  # the number of out-of-range expert ids (-1: out of memory)
    return fn


_NAMES = ("x", "topk_ids", "topk_weights", "w1", "w1_s", "w3", "w3_s", "w2", "w2_s")


def _check_layout(operands: tuple[torch.Tensor, ...]) -> None:
    """Shapes consistent with x [T, D] and w1 [E, I, D/2]; every operand a contiguous CPU
    tensor (the C kernel reads them blindly)."""
    x, ids, _, w1 = operands[:4]
    (t, d), (e, i) = x.shape, w1.shape[:2]
    k = ids.shape[-1]
    w13, w13_s = (e, i, d // 2), (e, i, d // _FP4_BLOCK)
    want = ((t, d), (t, k), (t, k), w13, w13_s, w13, w13_s, (e, d, i // 2), (e, d, i // _FP4_BLOCK))
    for name, o, shape in zip(_NAMES, operands, want, strict=True):
        if o.shape != shape or not o.is_cpu or not o.is_contiguous():
            raise MoEKernelError(
                f"moe_native: {name} is {tuple(o.shape)} on {o.device} (contiguous: "
                f"{o.is_contiguous()}), expected a contiguous CPU tensor of shape {shape} "
                f"for x [T={t}, D={d}] and experts [E={e}, I={i}]"
            )
