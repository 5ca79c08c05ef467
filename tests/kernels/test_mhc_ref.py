"""mHC references against a per-token statement of SPEC §4.2."""

import math

import pytest
import torch

from dsv4.kernels.mhc import hc_post_ref, hc_pre_ref, hc_split_sinkhorn_ref

HC = 4


def _sig(v):
    return 1 / (1 + math.exp(-v))


def _naive_split(m, scale, base, iters, eps):
    pre = [_sig(m[j] * scale[0] + base[j]) + eps for j in range(HC)]
    post = [2 * _sig(m[HC + j] * scale[1] + base[HC + j]) for j in range(HC)]
    c = [[m[2 * HC + HC * j + k] * scale[2] + base[2 * HC + HC * j + k] for k in range(HC)]
         for j in range(HC)]  # fmt: skip
    for j in range(HC):
        mx = max(c[j])
        ex = [math.exp(v - mx) for v in c[j]]
        c[j] = [v / sum(ex) + eps for v in ex]

    def cols():
        s = [sum(c[j][k] for j in range(HC)) + eps for k in range(HC)]
        return [[c[j][k] / s[k] for k in range(HC)] for j in range(HC)]

    c = cols()
    for _ in range(iters - 1):
        c = [[v / (sum(row) + eps) for v in row] for row in c]
        c = cols()
    return pre, post, c


def _params(seed=0, d=8):
    g = torch.Generator().manual_seed(seed)
    mix = (2 + HC) * HC
    return (torch.randn(mix, HC * d, generator=g) * 0.1, torch.rand(3, generator=g) + 0.5,
            torch.randn(mix, generator=g) * 0.5)  # fmt: skip


def test_split_sinkhorn_matches_definition():
    _, scale, base = _params()
    mixes = torch.randn(3, 24, dtype=torch.float32)
    pre, post, comb = hc_split_sinkhorn_ref(mixes, scale, base, HC, 20, 1e-6)
    for t in range(3):
        wp, wq, wc = _naive_split(mixes[t].tolist(), scale.tolist(), base.tolist(), 20, 1e-6)
        torch.testing.assert_close(pre[t], torch.tensor(wp), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(post[t], torch.tensor(wq), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(comb[t], torch.tensor(wc), rtol=1e-5, atol=1e-6)
    # Nearly doubly stochastic after 20 rounds.
    torch.testing.assert_close(comb.sum(-2), torch.ones(3, HC), atol=1e-4, rtol=0)


def test_hc_pre_and_post():
    fn, scale, base = _params(d=8)
    h = torch.randn(2, 3, HC, 8)
    y, post, comb = hc_pre_ref(h, fn, scale, base, HC, 20, 1e-6, 1e-6)
    flat = h.flatten(-2)
    for b in range(2):
        for s in range(3):
            x = flat[b, s]
            mixes = (fn @ x) / torch.sqrt((x * x).mean() + 1e-6)
            pre, _, _ = hc_split_sinkhorn_ref(mixes, scale, base, HC, 20, 1e-6)
            want = sum(pre[j] * h[b, s, j] for j in range(HC))
            torch.testing.assert_close(y[b, s], want, rtol=1e-5, atol=1e-6)
    out = torch.randn(2, 3, 8)
    new = hc_post_ref(out, h, post, comb)
    for k in range(HC):
        want = post[..., k, None] * out + sum(
            comb[..., j, k, None] * h[..., j, :] for j in range(HC)
        )
        torch.testing.assert_close(new[..., k, :], want, rtol=1e-5, atol=1e-6)
    assert hc_post_ref(out.bfloat16(), h.bfloat16(), post, comb).dtype == torch.bfloat16


@pytest.mark.parametrize("hc", [2, 3, 4])
def test_sinkhorn_numpy_and_torch_paths_are_bit_identical(hc: int) -> None:
    """Small batches (decode) run the rounds in numpy, large ones in torch: same bits."""
    from dsv4.kernels import mhc

    torch.manual_seed(hc)
    comb = torch.rand(3, hc, hc, dtype=torch.float32).softmax(-1) + 1e-6
    small = mhc._sinkhorn_rounds(comb.clone(), 19, 1e-6)  # 3 rows: the numpy path
    tiled = comb.repeat(8, 1, 1)  # 24 rows: past the numpy limit, the torch path
    assert tiled[..., 0, 0].numel() > mhc._NUMPY_MAX_ROWS
    large = mhc._sinkhorn_rounds(tiled.clone(), 19, 1e-6)
    for i in range(large.shape[0]):
        assert torch.equal(large[i], small[i % 3])
