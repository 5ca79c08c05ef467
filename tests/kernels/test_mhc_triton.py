"""mhc_triton vs mhc: Sinkhorn split, hc_pre, hc_post.

Tolerances: all fp32, with a different summation order (the 4D-wide mixes GEMV, the
Sinkhorn row/column sums) and exp/sigmoid implementations: 1e-5 relative L2 for fp32
outputs, which 20 Sinkhorn rounds keep (they are contractive normalizations). bf16 outputs
may flip one bf16 rounding: 2e-3.
"""

from __future__ import annotations

import pytest
import torch

from dsv4.kernels.mhc import hc_post_ref, hc_pre_ref, hc_split_sinkhorn_ref

from .conftest import rel_l2

HC, ITERS, EPS = 4, 20, 1e-6


def _params():
    return torch.rand(3) + 0.5, torch.randn((2 + HC) * HC) * 0.5


@pytest.mark.parametrize("lead", [(1,), (2, 17)])
def test_split_sinkhorn_matches_reference(lead, device):
    from dsv4.kernels.mhc_triton import hc_split_sinkhorn_triton

    mixes = torch.randn(*lead, (2 + HC) * HC) * 3
    scale, base = _params()
    got = hc_split_sinkhorn_triton(
        mixes.to(device), scale.to(device), base.to(device), HC, ITERS, EPS
    )
    want = hc_split_sinkhorn_ref(mixes, scale, base, HC, ITERS, EPS)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and rel_l2(g.cpu(), w) <= 1e-5


@pytest.mark.parametrize(("lead", "d", "dtype"), [((1,), 96, torch.bfloat16),
                                                  ((2, 9), 64, torch.float32)])  # fmt: skip
def test_hc_pre_matches_reference(lead, d, dtype, device):
    from dsv4.kernels.mhc_triton import hc_pre_triton

    h = torch.randn(*lead, HC, d).to(dtype)
    fn = torch.randn((2 + HC) * HC, HC * d) * 0.05
    scale, base = _params()
    args = (h, fn, scale, base)
    y, post, comb = hc_pre_triton(*(a.to(device) for a in args), HC, ITERS, 1e-6, EPS)
    y_r, post_r, comb_r = hc_pre_ref(*args, HC, ITERS, 1e-6, EPS)
    assert y.dtype == dtype and y.shape == y_r.shape
    assert rel_l2(y.cpu(), y_r) <= (2e-3 if dtype == torch.bfloat16 else 1e-5)
    assert rel_l2(post.cpu(), post_r) <= 1e-5 and rel_l2(comb.cpu(), comb_r) <= 1e-5


@pytest.mark.parametrize(("lead", "d", "dtype"), [((1,), 200, torch.bfloat16),
                                                  ((3, 5), 64, torch.float32)])  # fmt: skip
def test_hc_post_matches_reference(lead, d, dtype, device):
    from dsv4.kernels.mhc_triton import hc_post_triton

    out, h = torch.randn(*lead, d).to(dtype), torch.randn(*lead, HC, d).to(dtype)
    post, comb = torch.rand(*lead, HC) * 2, torch.rand(*lead, HC, HC)
    args = (out, h, post, comb)
    y = hc_post_triton(*(a.to(device) for a in args))
    y_r = hc_post_ref(*args)
    assert y.dtype == dtype and y.shape == y_r.shape
    assert rel_l2(y.cpu(), y_r) <= (2e-3 if dtype == torch.bfloat16 else 1e-5)


def test_hc_pre_rejects_wrong_stream_count(device):
    from dsv4.kernels.mhc_triton import hc_pre_triton
    from dsv4.kernels.triton_util import KernelArgumentError

    scale, base = _params()
    with pytest.raises(KernelArgumentError, match="argument `h`"):
        hc_pre_triton(torch.randn(2, 3, 8), torch.randn(24, 32), scale, base, HC, ITERS, 1e-6, EPS)
