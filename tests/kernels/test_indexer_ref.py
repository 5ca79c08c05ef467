"""Indexer scoring and top-k references against their definitions (causality, tie order)."""

import torch

from dsv4.kernels.indexer import index_scores_ref, index_topk_ref


def test_scores_match_definition():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 3, 4, 8, generator=g)
    k = torch.randn(1, 5, 8, generator=g)
    w = torch.randn(1, 3, 4, generator=g)
    s = index_scores_ref(q, k, w)
    for m in range(3):
        for n in range(5):
            want = sum(float(w[0, m, h]) * max(0.0, float(q[0, m, h] @ k[0, n])) for h in range(4))
            assert abs(float(s[0, m, n]) - want) < 1e-5
    assert index_scores_ref(q.bfloat16(), k.bfloat16(), w.bfloat16()).dtype == torch.bfloat16


def test_topk_is_causal_and_breaks_ties_low():
    scores = torch.tensor([[[1.0, 3.0, 3.0, 2.0, 3.0, 9.0]] * 3])  # [1, 3, 6]
    pos = torch.tensor([3, 11, 23])  # visible entries: 1, 3, 6 (ratio 4)
    idx = index_topk_ref(scores, pos, ratio=4, topk=3)
    assert idx.dtype == torch.int32 and idx.shape == (1, 3, 3)
    assert idx[0, 0].tolist() == [0, -1, -1]
    assert idx[0, 1].tolist() == [1, 2, 0]  # 3.0 ties broken low; 3..5 are not visible yet
    assert idx[0, 2].tolist() == [5, 1, 2]  # 3.0 ties at 1, 2, 4: the lower two win


def test_topk_caps_at_n():
    idx = index_topk_ref(torch.zeros(1, 1, 2), torch.tensor([100]), ratio=4, topk=16)
    assert idx.shape == (1, 1, 2) and idx.tolist() == [[[0, 1]]]
