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

import torch

from .native import I64, P, declare, ptr

_ACT = {torch.float32: 0, torch.bfloat16: 1}


@functools.cache
def _fn(lib: ctypes.CDLL, name: str):
    args = {"dsv4_bf16_gemm": (P, I64, P, P, I64, I64, I64, I64),
            "dsv4_fp8_gemm": (P, I64, P, P, P, I64, I64, I64, I64, I64)}[name]  # fmt: skip
    fn = declare(lib, name, *args)
    fn.restype = ctypes.c_int
    return fn


def _operands(x: torch.Tensor, w: torch.Tensor, wdtype: torch.dtype, out_dtype: torch.dtype):
    if x.dtype not in _ACT or out_dtype not in _ACT:
        raise ValueError(f"x {x.dtype}, output {out_dtype}: expected bfloat16 or float32")
    if w.dtype != wdtype or w.dim() != 2 or not w.is_contiguous():
        raise ValueError(f"weight: expected a contiguous {wdtype} tensor of 2 dims, got "
                         f"{w.dtype} {tuple(w.shape)} strides {w.stride()}")  # fmt: skip
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
    rc = _fn(lib, "dsv4_bf16_gemm")(ptr(x), _ACT[x.dtype], ptr(w), ptr(y), _ACT[y.dtype], m, n, k)
    _check_rc(rc, "bf16_gemm")
    return y


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
    (m, k), n = x.shape, w.shape[0]
    if scale.dtype != torch.float32 or tuple(scale.shape) != (-(-n // 128), -(-k // 128)):
        raise ValueError(f"scale {scale.dtype} {tuple(scale.shape)} for weight "
                         f"{tuple(w.shape)}: shapes do not match")  # fmt: skip
    if quant and k % 128:
        raise ValueError(f"activation quantization needs K % 128 == 0, got K = {k}")
    rc = _fn(lib, "dsv4_fp8_gemm")(ptr(x), _ACT[x.dtype], ptr(w), ptr(scale), ptr(y),
                                   _ACT[y.dtype], m, n, k, int(quant))  # fmt: skip
    _check_rc(rc, "fp8_gemm")
    return y
