"""indexer_triton vs indexer: Lightning-indexer scores and top-k.

Tolerance: the kernel rounds exactly where the reference does (q.k, relu*w, final sum to
bf16), but sums the d products and the H heads in another fp32 order, which can flip a bf16
rounding of an intermediate: relative L2 <= 2e-3 in bf16 (well under one bf16 ulp, 2^-8, on
average); fp32: 1e-5 (order only).
"""

from __future__ import annotations

import pytest
import torch

from dsv4.kernels.indexer import index_scores_ref, index_topk_ref

from .conftest import rel_l2


@pytest.mark.parametrize(
    ("b", "m", "h", "d", "n", "dtype", "tol"),
    [(1, 1, 4, 128, 37, torch.bfloat16, 2e-3),  # decode row, N not a multiple of 64
     (2, 19, 5, 32, 70, torch.bfloat16, 2e-3),
     (1, 3, 3, 64, 20, torch.float32, 1e-5)],
)  # fmt: skip
def test_index_scores_matches_reference(b, m, h, d, n, dtype, tol, device):
    from dsv4.kernels.indexer_triton import index_scores_triton

    q, k = torch.randn(b, m, h, d).to(dtype), torch.randn(b, n, d).to(dtype)
    w = (torch.randn(b, m, h) * 0.1).to(dtype)  # mixed signs: negative heads lower scores
    out = index_scores_triton(q.to(device), k.to(device), w.to(device))
    ref = index_scores_ref(q, k, w)
    assert out.dtype == dtype and out.shape == (b, m, n)
    assert rel_l2(out.cpu(), ref) <= tol


def test_index_topk_masks_and_breaks_ties_low(device):
    from dsv4.kernels.indexer_triton import index_topk_triton

    scores = torch.tensor([[[1.0, 3.0, 3.0, 0.5, 9.0, 9.0]] * 2], dtype=torch.bfloat16)
    pos = torch.tensor([3, 15])  # visible entries: j < 1 and j < 4
    idx = index_topk_triton(scores.to(device), pos.to(device), ratio=4, topk=3)
    assert idx.cpu().tolist() == [[[0, -1, -1], [1, 2, 0]]]
    assert torch.equal(idx.cpu(), index_topk_ref(scores, pos, 4, 3))
