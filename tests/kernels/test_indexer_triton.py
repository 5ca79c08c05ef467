"""indexer_triton vs indexer: Lightning-indexer scores, top-k selection, and the fused pair.

Scores tolerance: the kernel rounds exactly where the reference does (q.k, relu*w, final sum
to bf16), but sums the d products and the H heads in another fp32 order, which can flip a
bf16 rounding of an intermediate: relative L2 <= 2e-3 in bf16 (well under one bf16 ulp,
2^-8, on average); fp32: 1e-5 (order only).

Selection is compared exactly (index for index, in order): it is pure comparison, so given
the same scores nothing may differ. The fused kernel computes its own scores, so its inputs
are small integers: every dot, product and sum is then exact in any order (and in bf16),
the scores equal the reference's bit for bit, and ties are frequent.
"""

from __future__ import annotations

import pytest
import torch

from dsv4.kernels.indexer import index_scores_ref, index_topk_ref

from .conftest import rel_l2

RATIO = 4


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


def _positions(m: int, n: int) -> torch.Tensor:
    """Query positions from 'nothing visible yet' (pos < RATIO - 1) to 'everything visible'."""
    pos = torch.randint(0, RATIO * n + 8, (m,))
    pos[0] = 1  # (1 + 1) // 4 = 0 visible entries: an all -1 row
    return pos


# (B, M, N, topk): a decode row; two query blocks and three KP-wide tiles; topk not a power
# of two and a tile wider than topk; fewer entries than topk.
TOPK_CASES = [(1, 1, 37, 16), (2, 17, 33, 16), (1, 5, 70, 40), (1, 3, 7, 16)]


@pytest.mark.parametrize(("b", "m", "n", "topk"), TOPK_CASES)
def test_index_topk_matches_reference_exactly(b, m, n, topk, device):
    from dsv4.kernels.indexer_triton import index_topk_triton

    # Few distinct values (half-integers, both zeros): many exact ties.
    scores = (torch.randint(-3, 4, (b, m, n)) * 0.5).to(torch.bfloat16)
    scores[scores == 0] = torch.tensor(-0.0, dtype=torch.bfloat16)
    scores[..., ::5] = 0.0
    pos = _positions(m, n)
    idx = index_topk_triton(scores.to(device), pos.to(device), RATIO, topk)
    ref = index_topk_ref(scores, pos, RATIO, topk)
    assert idx.dtype == torch.int32 and idx.shape == ref.shape
    assert torch.equal(idx.cpu(), ref)
    assert (ref[:, 0] == -1).all()  # the row that sees nothing really is all -1


def test_index_topk_orders_signed_fp32_scores(device):
    from dsv4.kernels.indexer_triton import index_topk_triton

    # Both signs, magnitudes over 12 decades: the integer key must keep IEEE order.
    scores = torch.randn(1, 3, 50) * torch.logspace(-6, 6, 50)
    pos = torch.tensor([40, 120, 199])
    idx = index_topk_triton(scores.to(device), pos.to(device), RATIO, 16)
    assert torch.equal(idx.cpu(), index_topk_ref(scores, pos, RATIO, 16))


@pytest.mark.parametrize(
    ("b", "m", "n", "topk", "dtype"),
    [(1, 1, 37, 16, torch.bfloat16), (2, 6, 40, 16, torch.float32),
     (1, 5, 70, 40, torch.bfloat16)],
)  # fmt: skip
def test_fused_score_topk_matches_reference_exactly(b, m, n, topk, dtype, device):
    from dsv4.kernels.indexer_triton import index_score_topk_triton

    h, d = 3, 32
    # |q.k| <= 32, |w| <= 2, 3 heads: every intermediate is an integer below 256 (bf16-exact).
    q = torch.randint(-1, 2, (b, m, h, d)).to(dtype)
    k = torch.randint(-1, 2, (b, n, d)).to(dtype)
    w = torch.randint(-2, 3, (b, m, h)).to(dtype)
    pos = _positions(m, n)
    args = (q.to(device), k.to(device), w.to(device), pos.to(device))
    idx = index_score_topk_triton(*args, RATIO, topk)
    ref = index_topk_ref(index_scores_ref(q, k, w), pos, RATIO, topk)
    assert torch.equal(idx.cpu(), ref)


def _split_case():
    # Three 16-wide tiles in three splits (the last one partial), as a GPU decode launch would.
    q = torch.randint(-1, 2, (1, 3, 2, 32)).to(torch.bfloat16)
    k = torch.randint(-1, 2, (1, 45, 32)).to(torch.bfloat16)
    w = torch.randint(-2, 3, (1, 3, 2)).to(torch.bfloat16)
    pos = torch.tensor([1, 90, 187])
    return q, k, w, pos, index_topk_ref(index_scores_ref(q, k, w), pos, RATIO, 16)


def test_split_scan_matches_reference_exactly(device):
    from dsv4.kernels.indexer_triton import index_topk_triton

    q, k, w, pos, ref = _split_case()
    scores = index_scores_ref(q, k, w).to(device)
    assert torch.equal(index_topk_triton(scores, pos.to(device), RATIO, 16, splits=3).cpu(), ref)


@pytest.mark.slow
def test_fused_split_scan_matches_reference_exactly(device):
    from dsv4.kernels.indexer_triton import index_score_topk_triton

    q, k, w, pos, ref = _split_case()
    args = (q.to(device), k.to(device), w.to(device), pos.to(device))
    assert torch.equal(index_score_topk_triton(*args, RATIO, 16, splits=3).cpu(), ref)


def test_index_topk_masks_and_breaks_ties_low(device):
    from dsv4.kernels.indexer_triton import index_topk_triton

    scores = torch.tensor([[[1.0, 3.0, 3.0, 0.5, 9.0, 9.0]] * 2], dtype=torch.bfloat16)
    pos = torch.tensor([3, 15])  # visible entries: j < 1 and j < 4
    idx = index_topk_triton(scores.to(device), pos.to(device), ratio=4, topk=3)
    assert idx.cpu().tolist() == [[[0, -1, -1], [1, 2, 0]]]
    assert torch.equal(idx.cpu(), index_topk_ref(scores, pos, 4, 3))


def test_topk_of_nothing_is_empty(device):
    from dsv4.kernels.indexer_triton import index_score_topk_triton, index_topk_triton

    pos = torch.tensor([5, 6], device=device)
    no_entries = index_topk_triton(torch.zeros(1, 2, 0, device=device), pos, RATIO, 16)
    assert no_entries.shape == (1, 2, 0)
    q, w = torch.randn(1, 2, 3, 32, device=device), torch.randn(1, 2, 3, device=device)
    fused = index_score_topk_triton(q, torch.zeros(1, 0, 32, device=device), w, pos, RATIO, 16)
    assert fused.shape == (1, 2, 0) and fused.dtype == torch.int32


def test_topk_rejects_bad_positions(device):
    from dsv4.kernels.indexer_triton import index_topk_triton
    from dsv4.kernels.triton_util import KernelArgumentError

    scores = torch.zeros(1, 3, 8, device=device)
    with pytest.raises(KernelArgumentError, match="q_pos"):
        index_topk_triton(scores, torch.arange(2, device=device), RATIO, 4)
    with pytest.raises(KernelArgumentError, match="topk"):
        index_topk_triton(scores, torch.arange(3, device=device), RATIO, 0)
