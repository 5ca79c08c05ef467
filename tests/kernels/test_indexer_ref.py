"""Indexer references against their definitions (causality, tie order), and the tiled
selection against the unblocked reference, bit for bit."""

import pytest
import torch

from dsv4.kernels.indexer import (  # the exactness mechanisms
    IndexerArgumentError,
    IndexTiles,
    _entries,
    _sort_keys,
    _tiling,
    index_score_topk,
    index_score_topk_ref,
    index_scores_ref,
    index_topk_ref,
)

DTYPES = [torch.bfloat16, torch.float32]


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


@pytest.mark.parametrize("dtype", DTYPES)
def test_scores_round_each_step_in_the_act_dtype(dtype):
    """q·k, relu, ×w and the head sum each in the act dtype (REF's einsum precision)."""
    q, k, w, _ = _inputs(1, 6, 4, 16, 40, dtype, seed=1)
    s = torch.einsum("bmhd,bnd->bmhn", q, k)
    want = (s.relu() * w.unsqueeze(-1)).sum(dim=2)
    assert torch.equal(index_scores_ref(q, k, w), want)


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


# --- tiled selection == unblocked reference ---------------------------------------------


def _inputs(b, m, h, d, n, dtype, seed, first_pos=None):
    """Random q, k, w in `dtype` and positions ending where n entries are complete."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, m, h, d, generator=g).to(dtype)
    k = torch.randn(b, n, d, generator=g).to(dtype)
    w = torch.randn(b, m, h, generator=g).to(dtype)
    start = 4 * n - m if first_pos is None else first_pos
    return q, k, w, torch.arange(start, start + m)


def _assert_tiled_equals_reference(q, k, w, pos, topk, tiles):
    want = index_topk_ref(index_scores_ref(q, k, w), pos, 4, topk)
    got = index_score_topk_ref(q, k, w, pos, 4, topk, tiles)
    assert got.dtype == torch.int32 and got.shape == want.shape
    diff = (got != want).nonzero()[:5].tolist()
    assert torch.equal(got, want), f"{len((got != want).nonzero())} picks differ, first {diff}"


# (b, m, h, d, n, topk, first position, tiles): none of the sizes is a tile multiple.
CASES = {
    "prefill_chunk": (1, 37, 8, 32, 1001, 16, None, IndexTiles(7, 1)),
    "from_position_0": (2, 45, 4, 16, 777, 64, 0, IndexTiles(9, 1)),
    "decode": (1, 1, 32, 128, 1030, 16, None, IndexTiles(1, 1)),
    "decode_default_tiles": (1, 1, 16, 64, 2500, 64, None, IndexTiles()),
    "topk_above_n": (1, 20, 8, 16, 300, 512, None, IndexTiles(3, 1)),
    "few_keys": (1, 6, 4, 8, 5, 16, None, IndexTiles(1, 1)),
    "one_head": (1, 70, 1, 128, 600, 16, None, IndexTiles(1, 1)),
    "one_key_past_a_tile": (1, 33, 2, 128, 1025, 16, None, IndexTiles(5, 1)),
    "wide_tiles": (1, 300, 16, 64, 2049, 64, None, IndexTiles(64, 64 * 16 * 768)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_score_tiles_equal_the_full_scores(case, dtype):
    """Fact 1 of the tiling: every tile's scores are the full tensor's, bit for bit (a last-ulp
    change rarely moves a pick, so this is checked on the scores themselves)."""
    b, m, h, d, n, _, first, tiles = CASES[case]
    q, k, w, _ = _inputs(b, m, h, d, n, dtype, seed=list(CASES).index(case), first_pos=first)
    full = index_scores_ref(q, k, w)
    query_spans, key_spans = _tiling(m, h, n, tiles)
    for i0, i1 in query_spans:
        for j0, j1 in key_spans:
            tile = index_scores_ref(q[:, i0:i1], k[:, j0:j1], w[:, i0:i1])
            assert torch.equal(tile, full[:, i0:i1, j0:j1]), f"tile {i0}:{i1} x {j0}:{j1}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_tiled_selection_equals_reference(case, dtype):
    b, m, h, d, n, topk, first, tiles = CASES[case]
    q, k, w, pos = _inputs(b, m, h, d, n, dtype, seed=list(CASES).index(case), first_pos=first)
    _assert_tiled_equals_reference(q, k, w, pos, topk, tiles)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tiled_selection_keeps_tie_order(dtype):
    """Small integer q, k and ±1 weights: most scores are exact ties (and many are 0 or −0),
    so the result depends on ties going to the lower index across tile boundaries."""
    g = torch.Generator().manual_seed(3)
    q = torch.randint(0, 2, (1, 40, 4, 8), generator=g).to(dtype)
    k = torch.randint(-1, 2, (1, 900, 8), generator=g).to(dtype)
    w = (torch.randint(0, 2, (1, 40, 4), generator=g) * 2 - 1).to(dtype)
    pos = torch.arange(3560, 3600)
    scores = index_scores_ref(q, k, w)
    assert scores.unique().numel() <= 40  # 36,000 scores: nearly all of them are ties
    _assert_tiled_equals_reference(q, k, w, pos, 64, IndexTiles(6, 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_tiled_selection_masks_rows_with_nothing_visible(dtype):
    q, k, w, pos = _inputs(1, 12, 4, 16, 600, dtype, seed=4, first_pos=0)
    got = index_score_topk_ref(q, k, w, pos, 4, 8, IndexTiles(2, 1))
    assert (got[0, :3] == -1).all()  # positions 0..2 see no entry yet
    assert got[0, 3].tolist() == [0] + [-1] * 7  # position 3 sees entry 0 only
    _assert_tiled_equals_reference(q, k, w, pos, 8, IndexTiles(2, 1))


def test_tiled_selection_orders_nan_and_inf_like_the_sort():
    q, k, w, pos = _inputs(1, 8, 4, 16, 700, torch.float32, seed=5)
    k[0, 300] = float("nan")  # every query scores NaN there: the sort puts NaN first
    k[0, 650, 0] = 3e38  # overflow to ±inf for some queries
    _assert_tiled_equals_reference(q, k, w, pos, 16, IndexTiles(3, 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sort_keys_order_like_the_stable_sort(dtype):
    """The int64 keys order every float the way the reference's stable descending sort
    does: NaN of either sign above +inf, −0 equal to +0, then the lower index first."""
    special = [float("nan"), -float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1.5, -1.5]
    g = torch.Generator().manual_seed(10)
    picks = torch.randint(0, len(special), (3, 200), generator=g)
    scores = torch.tensor(special)[picks].to(dtype)[None]  # [1, 3, 200], heavy ties
    limit = torch.tensor([200, 150, 0]).view(1, 3, 1)
    keys = _sort_keys(scores, 0, limit)
    assert keys[0, 0].unique().numel() == 200 and keys[0, 1, :150].unique().numel() == 150
    assert keys[0, 2].unique().numel() == 1  # nothing visible: all masked alike
    want = index_topk_ref(scores, limit.view(-1) * 4, 4, 200)
    assert torch.equal(_entries(keys.sort(dim=-1, descending=True).values, limit), want)


def test_tiled_selection_with_two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        q, k, w, pos = _inputs(1, 64, 16, 64, 1500, torch.bfloat16, seed=6)
        _assert_tiled_equals_reference(q, k, w, pos, 32, IndexTiles(16, 1))
    finally:
        torch.set_num_threads(threads)


def test_tiled_selection_with_no_entries_or_queries():
    q, k, w, pos = _inputs(1, 3, 4, 8, 0, torch.float32, seed=7, first_pos=0)
    assert index_score_topk_ref(q, k, w, pos, 4, 16).shape == (1, 3, 0)
    q, k, w, pos = _inputs(1, 0, 4, 8, 10, torch.float32, seed=7, first_pos=0)
    assert index_score_topk_ref(q, k, w, pos, 4, 16).shape == (1, 0, 10)


def test_tile_key_width_is_aligned_and_fits_the_budget():
    tiles = IndexTiles(queries=128, elements=1 << 22)
    assert tiles.key_width(128, 32) == 1024
    assert tiles.key_width(128, 64) == 512
    assert tiles.key_width(1, 32) == 131072  # decode: one tile up to 128K keys
    assert IndexTiles(1, 1).key_width(1, 1) == 256  # never below the alignment


def test_bad_arguments_name_themselves():
    q, k, w, pos = _inputs(1, 2, 2, 8, 10, torch.float32, seed=8)
    with pytest.raises(IndexerArgumentError, match="ratio"):
        index_score_topk_ref(q, k, w, pos, 0, 16)
    with pytest.raises(IndexerArgumentError, match="topk"):
        index_score_topk_ref(q, k, w, pos, 4, 0)
    with pytest.raises(IndexerArgumentError, match="queries"):
        IndexTiles(queries=0)


def test_dispatcher_uses_the_tiled_reference_on_the_torch_path(monkeypatch):
    monkeypatch.setenv("DSV4_KERNELS", "torch")
    q, k, w, pos = _inputs(1, 10, 4, 16, 400, torch.bfloat16, seed=9)
    want = index_topk_ref(index_scores_ref(q, k, w), pos, 4, 16)
    assert torch.equal(index_score_topk(q, k, w, pos, 4, 16), want)
