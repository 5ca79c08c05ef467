"""Triton twin of `indexer.py`: Lightning-indexer scores Σ_h w[t,h]·relu(q[t,h]·k[j]).

One program per (query block, key block, batch) loops over the heads, so the [H, N] score
tensor of the reference is never materialized. Precision follows the reference in bf16
mode: each q·k dot (fp32 accumulation) is rounded to bf16, relu, the product with w is
rounded to bf16, the head sum accumulates in fp32 and is rounded once.

Top-k selection is not fused yet: `index_topk_triton` runs the reference selection (a
stable sort on the scores' device) so that ties keep going to the lower index.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_util import check_same_device, check_tensor, dot_bf16_exact, next_pow2, round_bf16

_ACT = (torch.bfloat16, torch.float32)
_BLOCK_M, _BLOCK_N = 16, 64


@triton.jit
def _index_scores_kernel(
    q_ptr, k_ptr, w_ptr, o_ptr, M, N, H,
    D: tl.constexpr, DP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BF16: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(2).to(tl.int64)
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, DP)
    m_ok, n_ok, d_ok = rm < M, rn < N, cols < D
    k = tl.load(k_ptr + (b * N + rn)[:, None] * D + cols[None, :],
                mask=n_ok[:, None] & d_ok[None, :], other=0.0)  # fmt: skip
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for h in range(H):
        qh = (b * M + rm) * H + h
        q = tl.load(q_ptr + qh[:, None] * D + cols[None, :],
                    mask=m_ok[:, None] & d_ok[None, :], other=0.0)  # fmt: skip
        w = tl.load(w_ptr + qh, mask=m_ok, other=0.0).to(tl.float32)
        if BF16:
            s = round_bf16(dot_bf16_exact(q, tl.trans(k)))
            acc += round_bf16(tl.maximum(s, 0.0) * w[:, None])
        else:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
            acc += tl.maximum(s, 0.0) * w[:, None]
    if BF16:
        acc = round_bf16(acc)
    out = o_ptr + (b * M + rm)[:, None] * N + rn[None, :]
    tl.store(out, acc.to(o_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def index_scores_triton(q: torch.Tensor, k: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """q act [B,M,H,d], k act [B,N,d], weights act [B,M,H] -> act [B,M,N]."""
    check_tensor("q", q, _ACT, ndim=4)
    b, m, h, d = q.shape
    check_tensor("k", k, (q.dtype,), shape=(b, None, d))
    check_tensor("weights", weights, (q.dtype,), shape=(b, m, h))
    check_same_device(q=q, k=k, weights=weights)
    n = k.shape[1]
    out = torch.empty((b, m, n), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    grid = (triton.cdiv(m, _BLOCK_M), triton.cdiv(n, _BLOCK_N), b)
    _index_scores_kernel[grid](
        q.contiguous(), k.contiguous(), weights.contiguous(), out, m, n, h,
        d, next_pow2(d), _BLOCK_M, _BLOCK_N, q.dtype == torch.bfloat16,
    )  # fmt: skip
    return out


def index_topk_triton(
    scores: torch.Tensor, q_pos: torch.Tensor, ratio: int, topk: int
) -> torch.Tensor:
    """scores [B,M,N], q_pos int64 [M] -> int32 [B,M,min(topk,N)]. Not fused: this is the
    reference selection, run on the scores' device."""
    from .indexer import index_topk_ref

    check_tensor("scores", scores, _ACT, ndim=3)
    check_tensor("q_pos", q_pos, (torch.int64, torch.int32), shape=(scores.shape[1],))
    return index_topk_ref(scores, q_pos, ratio, topk)
