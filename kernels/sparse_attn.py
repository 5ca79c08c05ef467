"""Sparse attention over gathered KV rows with an attention sink (SPEC §4.3 step 7, §8).

Each query attends to the KV rows listed in `topk_idxs` (−1 = skip); K = V = the gathered
512-dim row (one shared KV head). Scores and softmax statistics are fp32; the per-head sink
logit enters the softmax denominator only (a zero value vector). REF's kernel casts the
probabilities to the activation dtype before P·V (bf16 P in bf16 mode) and accumulates in
fp32. This reference normalizes by the global row max where REF runs an online softmax over
blocks of 64; the two differ only in the rounding of P.
"""

from __future__ import annotations

import torch

from .dispatch import native_lib, use_triton
from .sparse_attn_native import native_supported, sparse_attn_native


def sparse_attn_ref(
    q: torch.Tensor,
    kv: torch.Tensor,
    attn_sink: torch.Tensor,
    topk_idxs: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """q act [B,M,H,D], kv act [B,N,D], attn_sink fp32 [H], topk_idxs int32 [B,M,K]
    -> act [B,M,H,D]."""
    if topk_idxs.shape[-1] * 2 >= kv.shape[1]:
        return _dense(q, kv, attn_sink, topk_idxs, scale)
    b, m, _, d = q.shape
    valid = topk_idxs >= 0  # [B,M,K]
    idx = topk_idxs.long().clamp_min(0)
    rows = torch.gather(kv, 1, idx.view(b, -1, 1).expand(-1, -1, d).long()).view(b, m, -1, d)
    scores = torch.einsum("bmhd,bmkd->bmhk", q.float(), rows.float()) * scale
    scores = scores.masked_fill(~valid.unsqueeze(2), float("-inf"))
    top = scores.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # all-skip rows
    p = torch.exp(scores - top)
    denom = p.sum(-1, keepdim=True) + torch.exp(attn_sink.float().view(1, 1, -1, 1) - top)
    out = torch.einsum("bmhk,bmkd->bmhd", p.to(q.dtype).float(), rows.float())
    return (out / denom).to(q.dtype)


def _softmax_pv(scores, weight, rows, attn_sink, dtype) -> torch.Tensor:
    """Sink softmax of fp32 scores [B, M, H, N] (weight = multiplicity, 0 = skip) times the
    rows fp32 [B, N, D] -> fp32 [B, M, H, D]."""
    scores = scores.masked_fill(weight == 0, float("-inf"))
    top = scores.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # all-skip rows
    p = torch.exp(scores - top) * weight
    denom = p.sum(-1, keepdim=True) + torch.exp(attn_sink.float().view(-1, 1) - top)
    b, m, h, n = p.shape
    # the batched product einsum("bmhn,bnd->bmhd") runs, without its parsing and permutes
    pv = torch.bmm(p.to(dtype).float().view(b, m * h, n), rows).view(b, m, h, -1)
    return pv / denom


def _dense(q, kv, attn_sink, topk_idxs, scale: float, chunk_bytes: int = 1 << 26) -> torch.Tensor:
    b, m, h, _ = q.shape
    n = kv.shape[1]
    idx = torch.where(topk_idxs >= 0, topk_idxs.long(), n)  # -1 -> a spill column
    counts = torch.zeros(b, m, n + 1, device=kv.device).scatter_add_(
        2, idx, torch.ones_like(idx, dtype=torch.float32)
    )
    counts = counts[..., :n].unsqueeze(2)  # [B, M, 1, N]
    kvf = kv.float()
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    step = max(1, chunk_bytes // (4 * h * max(n, 1)))
    for lo in range(0, m, step):
        qs = q[:, lo : lo + step].float()
        rows = qs.shape[1]
        # einsum("bmhd,bnd->bmhn") as the batched product it runs (same kernel, same bits)
        scores = torch.bmm(qs.reshape(b, rows * h, -1), kvf.transpose(1, 2)).view(b, rows, h, n)
        scores = scores * scale
        cnt = counts[:, lo : lo + step]
        o = _softmax_pv(scores, cnt, kvf, attn_sink, q.dtype)
        out[:, lo : lo + step] = o.to(q.dtype)
    return out


def sparse_attn(q, kv, attn_sink, topk_idxs, scale: float) -> torch.Tensor:
    if use_triton(q, kv, attn_sink, topk_idxs):
        from .sparse_attn_triton import sparse_attn_triton

        return sparse_attn_triton(q, kv, attn_sink, topk_idxs, scale)
    lib = native_lib("sparse_attn", q, kv, attn_sink, topk_idxs)
    if lib is not None and native_supported(q, kv, attn_sink, topk_idxs):
        return sparse_attn_native(lib, q, kv, attn_sink, topk_idxs, scale)
    return sparse_attn_ref(q, kv, attn_sink, topk_idxs, scale)
