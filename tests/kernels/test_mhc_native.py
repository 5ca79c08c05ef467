"""Native mHC kernels (`kernels/mhc_native.py`, `csrc/mhc.c`) against the torch references.

Where the two can differ: the mixes GEMV and the RMS sum of squares sum in another order
(fp32 both), and torch's vectorized sigmoid/softmax use Sleef's expf where the C kernel (and
torch's scalar path) use libm's; the two differ by one ulp on ~1% of arguments, and the
Sinkhorn rounds spread such an ulp over the whole comb matrix (measured: < 1e-6 relative).
Everything else is the reference's elementwise formula, so hc_post and the y = Σ pre·h step
are checked bit for bit, and the split against a float32 statement of REF that uses libm.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
import pytest
import torch

from dsv4.kernels import mhc, mhc_native, native
from dsv4.kernels.mhc_native import (
    NativeArgumentError,
    hc_post_native,
    hc_pre_native,
    hc_split_sinkhorn_native,
)

pytestmark = pytest.mark.skipif(native.library("mhc") is None, reason="no C compiler")

ITERS, EPS, NORM_EPS = 20, 1e-6, 1e-6
_LIBM = ctypes.CDLL(ctypes.util.find_library("m"))
_LIBM.expf.restype, _LIBM.expf.argtypes = ctypes.c_float, [ctypes.c_float]


@pytest.fixture
def torch_ref(monkeypatch):
    """Call a reference with DSV4_KERNELS=torch (hc_pre_ref calls the split dispatcher)."""

    def call(fn, *args):
        with monkeypatch.context() as m:
            m.setenv("DSV4_KERNELS", "torch")
            return fn(*args)

    return call


def _params(hc: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = (2 + hc) * hc
    return (torch.randn(n, hc * d, generator=g) * 0.5 / (hc * d) ** 0.5,
            torch.rand(3, generator=g) + 0.5, torch.randn(n, generator=g) * 0.5)  # fmt: skip


def _expf(a: np.ndarray) -> np.ndarray:
    return np.array([_LIBM.expf(float(v)) for v in a.ravel()], np.float32).reshape(a.shape)


def _split_f32(m, scale, base, hc: int):
    """REF's split + Sinkhorn in numpy float32 (each op IEEE-rounded), libm expf, sums left
    to right: what the C kernel must give bit for bit."""
    f, e = np.float32, np.float32(EPS)
    m, s, b = m.numpy(), scale.numpy(), base.numpy()

    def sig(v):
        return f(1) / (f(1) + _expf(-v))

    def total(a, axis):  # left to right over a length-hc axis
        parts = np.moveaxis(a, axis, 0)
        acc = parts[0]
        for p in parts[1:]:
            acc = acc + p
        return np.expand_dims(acc, axis)

    pre = sig(m[:, :hc] * s[0] + b[:hc]) + e
    post = f(2) * sig(m[:, hc : 2 * hc] * s[1] + b[hc : 2 * hc])
    lg = (m[:, 2 * hc :] * s[2] + b[2 * hc :]).reshape(-1, hc, hc)
    ex = _expf(lg - lg.max(-1, keepdims=True))
    c = ex * (f(1) / total(ex, -1)) + e
    c = c / (total(c, -2) + e)
    for _ in range(ITERS - 1):
        c = c / (total(c, -1) + e)
        c = c / (total(c, -2) + e)
    return [torch.from_numpy(np.ascontiguousarray(x)) for x in (pre, post, c)]


def _assert_bf16_close(got: torch.Tensor, want: torch.Tensor, max_frac: float = 0.01):
    """At most one bf16 ulp apart, on at most `max_frac` of the elements: an input (pre)
    that differs in its last fp32 bits moves a few roundings across a bf16 midpoint."""
    g, w = got.float(), want.float()
    ulp = torch.exp2(torch.floor(torch.log2(torch.maximum(g.abs(), w.abs()).clamp_min(1e-30))) - 7)
    diff = (g - w).abs()
    assert bool((diff <= ulp).all()), f"max diff {diff.max().item()} exceeds one bf16 ulp"
    assert (diff > 0).float().mean().item() <= max_frac


@pytest.mark.parametrize("hc", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("s", [1, 3, 5, 16, 37])
def test_split_bit_exact_against_float32_statement(hc: int, s: int) -> None:
    _, scale, base = _params(hc, 1, seed=hc)
    mixes = torch.randn(s, (2 + hc) * hc) * 3
    got = hc_split_sinkhorn_native(mixes, scale, base, hc, ITERS, EPS)
    want = _split_f32(mixes, scale, base, hc)
    for g, w, name in zip(got, want, ("pre", "post", "comb"), strict=True):
        assert torch.equal(g.reshape(w.shape), w), name


@pytest.mark.parametrize("hc", [2, 3, 4])
@pytest.mark.parametrize("s", [1, 5, 40])
def test_split_matches_reference(torch_ref, hc: int, s: int) -> None:
    _, scale, base = _params(hc, 1, seed=hc)
    mixes = torch.randn(2, s, (2 + hc) * hc) * 3
    got = hc_split_sinkhorn_native(mixes, scale, base, hc, ITERS, EPS)
    want = torch_ref(mhc.hc_split_sinkhorn_ref, mixes, scale, base, hc, ITERS, EPS)
    # Sleef vs libm expf: ~1 ulp, spread over comb by the Sinkhorn rounds.
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("hc", "d"), [(4, 512), (4, 37), (4, 1), (2, 24), (3, 100)])
@pytest.mark.parametrize("s", [1, 4, 5, 19])
def test_hc_pre_matches_reference(torch_ref, dtype, hc: int, d: int, s: int) -> None:
    fn, scale, base = _params(hc, d, seed=d)
    h = (torch.randn(s, hc, d) * 2).to(dtype)
    y, post, comb = hc_pre_native(h, fn, scale, base, hc, ITERS, NORM_EPS, EPS)
    wy, wpost, wcomb = torch_ref(mhc.hc_pre_ref, h, fn, scale, base, hc, ITERS, NORM_EPS, EPS)
    assert y.dtype == dtype and y.shape == wy.shape
    # The mixes sum in another order (and Sleef vs libm expf): a few fp32 ulps downstream.
    torch.testing.assert_close(post, wpost, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(comb, wcomb, rtol=1e-5, atol=1e-6)
    if dtype == torch.float32:
        torch.testing.assert_close(y, wy, rtol=1e-5, atol=1e-5)
    else:
        _assert_bf16_close(y, wy)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [7, 48, 512])
def test_hc_pre_weighted_sum_is_bit_exact(torch_ref, dtype, d: int) -> None:
    """fn = 0 makes the mixes exactly 0 on both sides, and 3 tokens keep torch's sigmoid on
    its scalar libm path: then pre is identical and y = Σ pre·h must match bit for bit."""
    fn, scale, base = _params(4, d, seed=1)
    h = (torch.randn(3, 4, d) * 3).to(dtype)
    got = hc_pre_native(h, torch.zeros_like(fn), scale, base, 4, ITERS, NORM_EPS, EPS)
    want = torch_ref(mhc.hc_pre_ref, h, torch.zeros_like(fn), scale, base, 4, ITERS, NORM_EPS, EPS)
    assert torch.equal(got[0], want[0])
    assert torch.equal(got[1], want[1])


def test_hc_pre_leading_dims_and_layouts(torch_ref) -> None:
    fn, scale, base = _params(4, 33)
    h = torch.randn(2, 3, 33, 4).bfloat16().transpose(-1, -2)  # [2, 3, 4, 33], not contiguous
    y, post, comb = hc_pre_native(h, fn, scale, base, 4, ITERS, NORM_EPS, EPS)
    wy, wpost, wcomb = torch_ref(mhc.hc_pre_ref, h, fn, scale, base, 4, ITERS, NORM_EPS, EPS)
    assert (y.shape, post.shape, comb.shape) == ((2, 3, 33), (2, 3, 4), (2, 3, 4, 4))
    _assert_bf16_close(y, wy)
    torch.testing.assert_close(comb, wcomb, rtol=1e-5, atol=1e-6)
    empty = hc_pre_native(h[:0], fn, scale, base, 4, ITERS, NORM_EPS, EPS)
    assert [t.shape for t in empty] == [(0, 3, 33), (0, 3, 4), (0, 3, 4, 4)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("hc", "d"), [(4, 512), (4, 21), (1, 16), (3, 40), (5, 3), (9, 20)])
@pytest.mark.parametrize("s", [1, 6])
def test_hc_post_bit_exact(torch_ref, dtype, hc: int, d: int, s: int) -> None:
    h = (torch.randn(s, hc, d) * 2).to(dtype)
    out = torch.randn(s, d).to(dtype)
    post = torch.rand(s, hc) * 2
    comb = torch.rand(s, hc, hc).softmax(-1)
    got = hc_post_native(out, h, post, comb)
    want = torch_ref(mhc.hc_post_ref, out, h, post, comb)
    assert got.dtype == dtype
    if hc <= 4:  # torch sums up to 4 streams left to right too
        assert torch.equal(got, want)
    else:  # longer sums: torch regroups them, an fp32 rounding apart
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_hc_post_bf16_rounding_ties(torch_ref) -> None:
    """post = 1 + 2^-8 puts post·out on bf16 midpoints: round to nearest even, like torch."""
    out = torch.arange(-2048, 2048, dtype=torch.float32).mul(0.37).bfloat16().reshape(2, 2048)
    h = torch.zeros(2, 4, 2048, dtype=torch.bfloat16)
    post = torch.full((2, 4), 1 + 2**-8)
    comb = torch.zeros(2, 4, 4)
    got = hc_post_native(out, h, post, comb)
    assert torch.equal(got, torch_ref(mhc.hc_post_ref, out, h, post, comb))


def test_argument_errors() -> None:
    fn, scale, base = _params(4, 8)
    h = torch.randn(1, 4, 8)
    with pytest.raises(NativeArgumentError, match="`fn`"):
        hc_pre_native(h, fn.double(), scale, base, 4, ITERS, NORM_EPS, EPS)
    with pytest.raises(NativeArgumentError, match="`h`"):
        hc_pre_native(h.half(), fn, scale, base, 4, ITERS, NORM_EPS, EPS)
    with pytest.raises(NativeArgumentError, match="`h`"):
        hc_pre_native(h[:, :3], fn, scale, base, 4, ITERS, NORM_EPS, EPS)
    with pytest.raises(NativeArgumentError, match="`base`"):
        hc_split_sinkhorn_native(torch.randn(2, 24), scale, base[:5], 4, ITERS, EPS)
    with pytest.raises(NativeArgumentError, match="`comb`"):
        hc_post_native(torch.randn(1, 8), h, torch.rand(1, 4), torch.rand(1, 4, 3))


def test_dispatchers_take_the_native_path_unless_torch(monkeypatch) -> None:
    calls: list[str] = []
    for name in ("hc_split_sinkhorn_native", "hc_pre_native", "hc_post_native"):
        real = getattr(mhc_native, name)
        monkeypatch.setattr(mhc_native, name,
                            lambda *a, _f=real, _n=name: calls.append(_n) or _f(*a))  # fmt: skip
    fn, scale, base = _params(4, 8)
    h = torch.randn(2, 4, 8)

    def run_all():
        y, post, comb = mhc.hc_pre(h, fn, scale, base, 4, ITERS, NORM_EPS, EPS)
        mhc.hc_post(y, h, post, comb)
        mhc.hc_split_sinkhorn(torch.randn(2, 24), scale, base, 4, ITERS, EPS)

    monkeypatch.delenv("DSV4_KERNELS", raising=False)
    run_all()
    assert calls == ["hc_pre_native", "hc_post_native", "hc_split_sinkhorn_native"]
    calls.clear()
    monkeypatch.setenv("DSV4_KERNELS", "torch")
    run_all()
    assert calls == []


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("hc, d, s", [(4, 512, 1), (4, 128, 7), (3, 33, 2)])
def test_hc_head_matches_reference(dtype, hc: int, d: int, s: int) -> None:
    from dsv4.kernels.mhc import hc_head_ref
    from dsv4.kernels.mhc_native import hc_head_native

    g = torch.Generator().manual_seed(hc * d + s)
    h = torch.randn(s, hc, d, generator=g).to(dtype)
    fn = torch.randn(hc, hc * d, generator=g) * 0.05
    scale, base = torch.rand(1, generator=g), torch.randn(hc, generator=g)
    got = hc_head_native(h, fn, scale, base, 1e-6, 1e-6)
    want = hc_head_ref(h, fn, scale, base, 1e-6, 1e-6)
    assert got.dtype == dtype and got.shape == want.shape == (s, d)
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    else:
        _assert_bf16_close(got, want)
    with pytest.raises(NativeArgumentError, match="scale"):
        hc_head_native(h, fn, torch.rand(2), base, 1e-6, 1e-6)
