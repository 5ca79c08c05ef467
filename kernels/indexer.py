"""Lightning-indexer scoring and top-k selection for CSA layers (SPEC §4.6).

score[t, j] = Σ_h w[t, h]·relu(q[t, h]·k[j]), with REF's precision: the q·k product is
rounded to the activation dtype (bf16 in production), and relu, ×w and the head sum stay in
that dtype. Selection keeps the `topk` best causal entries (j < (pos+1)//ratio); exact ties
go to the LOWER entry index, and picks that are masked become −1.
"""

from __future__ import annotations

import torch

from .dispatch import use_triton


def index_scores_ref(q: torch.Tensor, k: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """q act [B,M,H,d], k act [B,N,d], weights act [B,M,H] -> act [B,M,N]."""
    b, m, h, d = q.shape
    s = torch.bmm(q.reshape(b, m * h, d), k.to(q.dtype).transpose(1, 2)).view(b, m, h, -1)
    return (s.relu() * weights.to(q.dtype).unsqueeze(-1)).sum(dim=2)


def index_topk_ref(
    scores: torch.Tensor, q_pos: torch.Tensor, ratio: int, topk: int
) -> torch.Tensor:
    """scores [B,M,N], q_pos int64 [M] -> int32 [B,M,min(topk,N)] (−1 where nothing visible)."""
    n = scores.shape[-1]
    k = min(topk, n)
    limit = ((q_pos.to(scores.device) + 1) // ratio).view(1, -1, 1)  # visible: j < limit
    j = torch.arange(n, device=scores.device).view(1, 1, -1)
    masked = scores.float().masked_fill(j >= limit, float("-inf"))
    # A stable descending sort keeps equal scores in index order: ties go to the lower index.
    idx = torch.sort(masked, dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.where(idx >= limit, -1, idx).to(torch.int32)


def index_scores(q, k, weights) -> torch.Tensor:
    if use_triton(q, k, weights):
        from .indexer_triton import index_scores_triton

        return index_scores_triton(q, k, weights)
    return index_scores_ref(q, k, weights)


def index_topk(scores, q_pos, ratio: int, topk: int) -> torch.Tensor:
    if use_triton(scores, q_pos):
        from .indexer_triton import index_topk_triton

        return index_topk_triton(scores, q_pos, ratio, topk)
    return index_topk_ref(scores, q_pos, ratio, topk)
