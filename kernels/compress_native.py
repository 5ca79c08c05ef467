"""Host wrapper of the C compressor pooling (`csrc/compress.c`): softmax-gated pooling of n
windows in one call, where `engine.compressor.Compressor._pool` runs a dozen torch ops on
[n, 2r, d] tensors. The same fp32 steps; exp is common.h's correctly rounded one (torch's
vector exp can differ from it by an ulp)."""

from __future__ import annotations

import ctypes
import functools

import torch

from .native import I64, P, declare, ptr


@functools.cache
def _fn(lib: ctypes.CDLL):
    fn = declare(lib, "dsv4_compress_pool", P, P, I64, I64, I64, I64, I64, I64, P)
    fn.restype = ctypes.c_int
    return fn


def pool(
    lib: ctypes.CDLL, kv: torch.Tensor, score: torch.Tensor, lo: int, n: int, r: int, d: int,
    overlap: bool,
) -> torch.Tensor:  # fmt: skip
    """kv, score fp32 [rows, width] (width = 2d with overlap, else d): windows of r rows from
    row lo -> pooled fp32 [n, d]. A window before row 0 (overlap) is padding."""
    width = kv.shape[1]
    if kv.dtype != torch.float32 or score.shape != kv.shape or score.dtype != torch.float32:
        raise ValueError(f"kv {kv.dtype} {tuple(kv.shape)}, score {score.dtype} "
                         f"{tuple(score.shape)}: expected fp32 of one shape")  # fmt: skip
    if width != (2 * d if overlap else d) or lo < 0 or lo + n * r > kv.shape[0]:
        raise ValueError(f"pool(lo={lo}, n={n}, r={r}, d={d}) outside kv {tuple(kv.shape)}")
    kv, score = kv.contiguous(), score.contiguous()
    out = torch.empty(n, d, dtype=torch.float32)
    if _fn(lib)(ptr(kv), ptr(score), width, lo, n, r, d, int(overlap), ptr(out)):
        raise MemoryError("compressor pool: the C kernel could not allocate its buffer")
    return out
