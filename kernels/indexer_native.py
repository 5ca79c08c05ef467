"""Host wrapper of the C lightning-indexer kernel (`csrc/indexer.c`): scores and top-k
selection in one pass, per query a heap of the reference's sort keys.

Same definition as `indexer.index_score_topk_ref` (REF's act-dtype roundings, the head sum
in head order, ties to the lower entry); the q·k dot products sum in another order than the
CPU GEMM's, so a score can land one bf16 step away and swap two near-equal entries.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from .indexer import IndexerArgumentError
from .native import ACT_KIND, I64, P, declare, ptr


@functools.cache
def _fn(lib: ctypes.CDLL):
    fn = declare(lib, "dsv4_index_topk", P, P, P, P, I64, I64, I64, I64, I64, I64, P, I64)
    fn.restype = ctypes.c_int
    return fn


def index_score_topk(
    lib: ctypes.CDLL,
    q: torch.Tensor,
    k: torch.Tensor,
    weights: torch.Tensor,
    q_pos: torch.Tensor,
    ratio: int,
    topk: int,
) -> torch.Tensor:
    """q act [B,M,H,d], k act [B,N,d], weights act [B,M,H], q_pos int [M]
    -> int32 [B,M,min(topk,N)] (−1 where nothing more is visible)."""
    if ratio < 1 or topk < 1:
        raise IndexerArgumentError(f"arguments `ratio`={ratio}, `topk`={topk}: expected >= 1")
    b, m, h, d = q.shape
    n = k.shape[1]
    if q.dtype not in ACT_KIND or k.shape != (b, n, d) or weights.shape != (b, m, h):
        raise IndexerArgumentError(
            f"q {q.dtype} {tuple(q.shape)}, k {tuple(k.shape)}, weights "
            f"{tuple(weights.shape)}: shapes or dtype do not match"
        )
    kout = min(topk, n)
    out = torch.full((b, m, kout), -1, dtype=torch.int32)
    pos = q_pos.to(torch.int64).contiguous()
    kind, fn = ACT_KIND[q.dtype], _fn(lib)
    for i in range(b):
        qi, ki = q[i].contiguous(), k[i].to(q.dtype).contiguous()
        wi, oi = weights[i].to(q.dtype).contiguous(), out[i]
        if fn(ptr(qi), ptr(ki), ptr(wi), ptr(pos), m, h, n, d, ratio, kout, ptr(oi), kind):
            raise MemoryError("index_score_topk: the C kernel could not allocate its buffers")
    return out
