"""Host wrapper of the C MoE gate (`csrc/route.c`): scores, expert choice and routing weights
of a few tokens in one call, where `engine.moe.MoE.route` runs ~10 torch ops per layer."""

from __future__ import annotations

import ctypes
import functools

import torch

from .native import ACT_KIND, F32, I64, P, declare, ptr


@functools.cache
def _fn(lib: ctypes.CDLL):
    fn = declare(lib, "dsv4_route", P, I64, P, P, P, I64, P, I64, I64, I64, I64, F32, P, P)
    fn.restype = ctypes.c_int64
    return fn


def route(
    lib: ctypes.CDLL,
    x: torch.Tensor,
    gate: torch.Tensor,
    bias: torch.Tensor | None,
    tid2eid: torch.Tensor | None,
    ids: torch.Tensor,
    topk: int,
    route_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x act [T, D], gate fp32 [E, D], bias fp32 [E] (top-k layers) or tid2eid int64 [V, k]
    (hash layers) with the token ids int64 [T] -> (expert ids int64 [T, k], weights fp32
    [T, k]), as `MoE.route`."""
    (t, d), e = x.shape, gate.shape[0]
    if x.dtype not in ACT_KIND or gate.dtype != torch.float32 or gate.shape != (e, d):
        raise ValueError(f"x {x.dtype} {tuple(x.shape)}, gate {gate.dtype} {tuple(gate.shape)}")
    if (bias is None) == (tid2eid is None):
        raise ValueError("route: give exactly one of bias (top-k) and tid2eid (hash)")
    x, ids = x.contiguous(), ids.to(torch.int64).contiguous()
    idx = torch.empty(t, topk, dtype=torch.int64)
    w = torch.empty(t, topk, dtype=torch.float32)
    vocab = 0 if tid2eid is None else tid2eid.shape[0]
    bad = _fn(lib)(ptr(x), ACT_KIND[x.dtype], ptr(gate), None if bias is None else ptr(bias),
                   None if tid2eid is None else ptr(tid2eid), vocab, ptr(ids), t, d, e, topk,
                   route_scale, ptr(idx), ptr(w))  # fmt: skip
    if bad:
        raise IndexError(f"route: {bad} token(s) with an id or hashed expert out of range")
    return idx, w
