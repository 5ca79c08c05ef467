"""The C lightning-indexer kernel against `index_score_topk_ref`.

The q·k dot products sum in another order than the CPU GEMM's; with bf16 scores that can move
a score by one bf16 step and swap two near-equal entries, so rows are compared by the
reference scores of what each picked."""

from __future__ import annotations

import pytest
import torch

from dsv4.kernels import indexer, native
from dsv4.kernels.indexer import IndexerArgumentError, index_score_topk_ref, index_scores_ref
from dsv4.kernels.indexer_native import index_score_topk


@pytest.fixture(scope="module")
def lib():
    return native.load("indexer")


def _inputs(m: int, n: int, dtype: torch.dtype, seed: int, h: int = 16, d: int = 128):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, m, h, d, generator=g).to(dtype)
    k = torch.randn(1, n, d, generator=g).to(dtype)
    w = torch.randn(1, m, h, generator=g).to(dtype)
    return q, k, w


def _same_selection(got, want, scores) -> None:
    """Equal indices, or picks whose reference scores equal the reference picks' to one bf16
    step (a near-tie ordered the other way)."""
    assert got.shape == want.shape and got.dtype == torch.int32
    assert torch.equal(got < 0, want < 0)  # the same number of visible picks per row
    for r in range(got.shape[1]):
        g, w = got[0, r], want[0, r]
        if torch.equal(g, w):
            continue
        sg = scores[0, r, g[g >= 0].long()].float()
        sw = scores[0, r, w[w >= 0].long()].float()
        assert torch.allclose(sg.sort().values, sw.sort().values, rtol=2**-7, atol=0)
        assert len(set(g.tolist())) == len(g.tolist())  # no duplicate picks


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("m, n, start, topk", [(1, 70, 283, 64), (40, 64, 0, 16),
                                               (3, 300, 1200, 64), (5, 10, 30, 64),
                                               (1, 1, 3, 8)])  # fmt: skip
def test_native_selection_matches_the_reference(lib, dtype, m, n, start, topk):
    q, k, w = _inputs(m, n, dtype, seed=m * n + start)
    pos = torch.arange(start, start + m)
    got = index_score_topk(lib, q, k, w, pos, 4, topk)
    want = index_score_topk_ref(q, k, w, pos, 4, topk)
    _same_selection(got, want, index_scores_ref(q, k, w))
    if dtype == torch.float32:  # no act rounding: the selections agree exactly here
        assert torch.equal(got, want)


def test_ties_go_to_the_lower_entry_and_masked_picks_are_minus_one(lib):
    q = torch.ones(1, 2, 2, 8, dtype=torch.bfloat16)
    k = torch.ones(1, 6, 8, dtype=torch.bfloat16)  # every score equal
    k[0, 4] = 2.0  # entry 4 scores highest
    w = torch.ones(1, 2, 2, dtype=torch.bfloat16)
    pos = torch.tensor([7, 19])  # sees entries < 2, < 5
    got = index_score_topk(lib, q, k, w, pos, 4, 4)
    assert got.tolist() == [[[0, 1, -1, -1], [4, 0, 1, 2]]]
    assert torch.equal(got, index_score_topk_ref(q, k, w, pos, 4, 4))


def test_bad_arguments(lib):
    q, k, w = _inputs(2, 8, torch.bfloat16, seed=0)
    with pytest.raises(IndexerArgumentError, match="topk"):
        index_score_topk(lib, q, k, w, torch.arange(2), 4, 0)
    with pytest.raises(IndexerArgumentError, match="shapes"):
        index_score_topk(lib, q, k[:, :, :64], w, torch.arange(2), 4, 4)


def test_dispatcher_takes_the_native_path_on_cpu(monkeypatch):
    import dsv4.kernels.indexer_native as mod

    calls = []
    real = mod.index_score_topk
    monkeypatch.setattr(mod, "index_score_topk", lambda *a: calls.append(1) or real(*a))
    q, k, w = _inputs(2, 20, torch.bfloat16, seed=1)
    pos = torch.arange(40, 42)
    native_out = indexer.index_score_topk(q, k, w, pos, 4, 8)
    assert calls == [1]
    monkeypatch.setenv("DSV4_KERNELS", "torch")
    torch_out = indexer.index_score_topk(q, k, w, pos, 4, 8)
    assert calls == [1]
    _same_selection(native_out, torch_out, index_scores_ref(q, k, w))
