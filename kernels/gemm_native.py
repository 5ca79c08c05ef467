"""Host wrappers of the C few-row GEMMs (`csrc/gemm.c`): the head's bf16 GEMM with fp32
output and the FP8 block-scaled GEMM with REF's activation quantization fused in.

Both read each weight row once for a group of rows of x and never materialize a dequantized
weight, so a decode step reads the weights at their stored size (bf16: 2 bytes, FP8: 1 byte
per value) in one call, where the torch path upcasts slabs and dispatches per slab.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from .native import I64, P, declare, ptr


@functools.cache
def _fn(lib: ctypes.CDLL, name: str):
    args = {"dsv4_bf16_gemm": (P, P, P, I64, I64, I64),
            "dsv4_fp8_gemm": (P, P, P, P, P, I64, I64, I64, I64)}[name]  # fmt: skip
    return declare(lib, name, *args)


def _check(name: str, t: torch.Tensor, dtype: torch.dtype, ndim: int = 2) -> None:
    if t.dtype != dtype or t.dim() != ndim or not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous {dtype} tensor of {ndim} dims, got "
                         f"{t.dtype} {tuple(t.shape)} strides {t.stride()}")  # fmt: skip


def bf16_gemm(lib: ctypes.CDLL, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [M, K] (any float dtype; multiplied as fp32) @ w bf16 [N, K]ᵀ -> fp32 [M, N]."""
    xf = x.float().contiguous()
    _check("weight", w, torch.bfloat16)
    (m, k), n = xf.shape, w.shape[0]
    if w.shape[1] != k:
        raise ValueError(f"x {tuple(x.shape)} and weight {tuple(w.shape)}: inner dims differ")
    y = torch.empty(m, n, dtype=torch.float32)
    _fn(lib, "dsv4_bf16_gemm")(ptr(xf), ptr(w), ptr(y), m, n, k)
    return y


def fp8_gemm(
    lib: ctypes.CDLL, x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, quant: bool
) -> torch.Tensor:
    """x [M, K] @ Wᵀ -> fp32 [M, N] for W = w e4m3 [N, K] times fp32 block scales
    [⌈N/128⌉, ⌈K/128⌉]; `quant`: x goes through REF's FP8 activation quantization first (the
    values of `quant.act_quant_values(x, 128)`)."""
    xf = x.float().contiguous()
    _check("weight", w, torch.float8_e4m3fn)
    _check("scale", scale, torch.float32)
    (m, k), n = xf.shape, w.shape[0]
    if w.shape[1] != k or tuple(scale.shape) != (-(-n // 128), -(-k // 128)):
        raise ValueError(f"x {tuple(x.shape)}, weight {tuple(w.shape)}, scale "
                         f"{tuple(scale.shape)}: shapes do not match")  # fmt: skip
    if quant and k % 128:
        raise ValueError(f"activation quantization needs K % 128 == 0, got K = {k}")
    y = torch.empty(m, n, dtype=torch.float32)
    work = torch.empty(m + min(m, 4), k, dtype=torch.float32)
    _fn(lib, "dsv4_fp8_gemm")(ptr(xf), ptr(w), ptr(scale), ptr(y), ptr(work), m, n, k, int(quant))
    return y
