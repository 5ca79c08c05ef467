"""Host wrappers of the C row-wise steps (`csrc/rows.c`): RMSNorm, the per-head RMS scaling
of the queries, and RoPE, each one call for a whole chunk instead of a dozen torch ops.

The torch references are `engine.weights.rms_norm`, the query scaling in
`engine.attention.Attention.__call__` and `engine.rope.apply_rope`; the results are theirs up
to the summation order of the RMS statistics (RoPE is bit-identical).
"""

from __future__ import annotations

import ctypes
import functools

import torch

from .native import ACT_KIND, F32, I64, P, declare, ptr


@functools.cache
def _fn(lib: ctypes.CDLL, name: str):
    args = {
        "dsv4_rms_norm": (P, P, P, I64, I64, F32, I64),
        "dsv4_head_norm_rope": (P, P, P, P, I64, I64, I64, I64, I64, F32, I64, I64),
        "dsv4_add_act": (P, P, P, I64, I64),
    }[name]
    return declare(lib, name, *args)


def _act(x: torch.Tensor) -> int:
    if x.dtype not in ACT_KIND:
        raise ValueError(f"activation dtype {x.dtype}: expected bfloat16 or float32")
    return ACT_KIND[x.dtype]


def rms_norm(lib: ctypes.CDLL, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x act [..., n], weight fp32 [n] -> act [..., n] (`engine.weights.rms_norm`)."""
    kind, x = _act(x), x.contiguous()
    n = x.shape[-1]
    if weight.dtype != torch.float32 or weight.shape != (n,):
        raise ValueError(f"norm weight {weight.dtype} {tuple(weight.shape)}: expected fp32 [{n}]")
    y = torch.empty_like(x)
    _fn(lib, "dsv4_rms_norm")(ptr(x), ptr(weight), ptr(y), x.numel() // max(n, 1), n, eps, kind)
    return y


def head_norm_rope(
    lib: ctypes.CDLL,
    x: torch.Tensor,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
    norm_eps: float | None = None,
    inverse: bool = False,
) -> torch.Tensor:
    """x act [S, rd'] or [S, H, dim] -> act, same shape: with `norm_eps`, each head row scaled
    by rsqrt(mean(x²) + eps) in the act dtype; then, with cos/sin fp32 [S, rd/2], RoPE on the
    last rd dims (`inverse`: by the conjugate), as `engine.rope.apply_rope`."""
    kind, x = _act(x), x.contiguous()
    rows, dim = x.shape[0], x.shape[-1]
    heads = x.numel() // max(rows * dim, 1)
    rd = 0 if cos is None else 2 * cos.shape[-1]
    if cos is not None and (cos.shape != (rows, rd // 2) or sin.shape != cos.shape
                            or cos.dtype != torch.float32 or rd > dim):  # fmt: skip
        raise ValueError(f"RoPE tables {tuple(cos.shape)} for x {tuple(x.shape)}")
    y = torch.empty_like(x)
    if cos is not None:  # kept referenced until the call returns
        cos, sin = cos.contiguous(), sin.contiguous()
    c, s = (0, 0) if cos is None else (ptr(cos), ptr(sin))
    norm = norm_eps is not None
    _fn(lib, "dsv4_head_norm_rope")(ptr(x), ptr(y), c, s, rows, heads, dim, rd, int(norm),
                                    norm_eps if norm else 0.0, int(inverse), kind)  # fmt: skip
    return y


def add_act(lib: ctypes.CDLL, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a fp32 [..., n] + b act [..., n] -> act: `(a + b.float()).to(b.dtype)` in one call."""
    kind = _act(b)
    if a.dtype != torch.float32 or a.shape != b.shape:
        raise ValueError(f"a {a.dtype} {tuple(a.shape)}, b {b.dtype} {tuple(b.shape)}: expected "
                         f"fp32 a and an act b of the same shape")  # fmt: skip
    a, b = a.contiguous(), b.contiguous()
    y = torch.empty_like(b)
    _fn(lib, "dsv4_add_act")(ptr(a), ptr(b), ptr(y), b.numel(), kind)
    return y
