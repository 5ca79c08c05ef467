"""The C sparse attention (`kernels/sparse_attn_native.py`) against `sparse_attn_ref`.

The kernel takes the reference's elementwise steps in its order and precision; only the
summation order of the dot products and of the denominator differs, and its exp may differ
from torch's in the last bit. So:
- fp32: |native - ref| <= 3e-5 * B, B = sum_j p_j |v_j| / denom (fp64): the fp32 rounding of
  512-term dot products (scores move by ~1e-6 relative, p with them) and of the sums;
- bf16: a p near a bf16 rounding boundary may round the other way (one bf16 ulp, 2^-8 of
  p_j, so at most 2^-8 * B on the output) and an output near a boundary may round the other
  way (one ulp of the output): |native - ref| <= 2^-8 * B + 2^-7 * |ref|, and since both are
  rare, at least 99% of the outputs must be bit-identical (a kernel that skipped rounding p
  to bf16 would change far more of them).
Every case runs each code path (AMX where there is one, AVX-512 FMA, portable loops) and a
build without AVX-512 (`-mno-avx512f`), which is what other machines compile.
"""

from __future__ import annotations

import ctypes

import pytest
import torch

from dsv4.kernels import sparse_attn as sa
from dsv4.kernels.sparse_attn import sparse_attn, sparse_attn_ref
from dsv4.kernels.sparse_attn_native import (
    SparseAttnKernelError,
    available_impls,
    sparse_attn_native,
)

from .conftest import native_build

IMPLS = ("best", "no_amx", "portable")


@pytest.fixture(scope="module", params=["native", "no_avx512_build"])
def lib(request, tmp_path_factory) -> ctypes.CDLL:
    return native_build(request, tmp_path_factory, "sparse_attn")


def _exact(q, kv, sink, idx, scale):
    """fp64 (out, B) of the reference formula with unrounded p; B = sum_j p_j |v_j| / denom."""
    b, m, _, d = q.shape
    rows = torch.gather(kv.double(), 1, idx.long().clamp_min(0).view(b, -1, 1).expand(-1, -1, d))
    rows = rows.view(b, m, -1, d)
    s = torch.einsum("bmhd,bmkd->bmhk", q.double(), rows) * scale
    s = s.masked_fill(~(idx >= 0).unsqueeze(2), float("-inf"))
    top = s.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    p = torch.exp(s - top)
    denom = p.sum(-1, keepdim=True) + torch.exp(sink.double().view(1, 1, -1, 1) - top)
    out = torch.einsum("bmhk,bmkd->bmhd", p, rows) / denom
    return out, torch.einsum("bmhk,bmkd->bmhd", p, rows.abs()) / denom


def _check_close(out, ref, bound):
    assert out.dtype == ref.dtype and out.shape == ref.shape
    err = (out.double() - ref.double()).abs()
    if out.dtype == torch.float32:
        assert (err <= 3e-5 * bound + 1e-30).all(), float((err / bound).nan_to_num().max())
        return
    assert (err <= 2**-8 * bound + 2**-7 * ref.double().abs()).all(), float(err.max())
    assert (out != ref).double().mean() <= 0.01, float((out != ref).double().mean())


def _case(b, m, h, d, n, k, dtype, seed, scale=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, m, h, d, generator=g).to(dtype)
    kv = torch.randn(b, n, d, generator=g).to(dtype)
    sink = torch.randn(h, generator=g)
    idx = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(b * m)]).view(b, m, k)
    idx[torch.rand(b, m, k, generator=g) < 0.25] = -1
    return q, kv, sink, idx.int(), d**-0.5 if scale is None else scale


def _run_all(lib, q, kv, sink, idx, scale):
    ref = sparse_attn_ref(q, kv, sink, idx, scale)
    bound = _exact(q, kv, sink, idx, scale)[1]
    for impl in IMPLS:
        _check_close(sparse_attn_native(lib, q, kv, sink, idx, scale, impl), ref, bound)
    return ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "b, m, h, d, n, k",
    [
        (1, 1, 8, 512, 300, 150),  # decode, the reference's gather path
        (1, 1, 8, 512, 160, 150),  # decode, the reference's dense path (2K >= N)
        (2, 5, 3, 40, 70, 13),  # heads and dims off every vector width
        (1, 4, 9, 24, 50, 33),
        (2, 3, 16, 64, 120, 37),  # AMX-sized heads and dims
        (1, 6, 24, 96, 200, 70),  # a half block of 8 heads after a whole one of 16
        (1, 5, 4, 64, 80, 30),  # fewer heads than an AMX block: padded
        (2, 2, 12, 32, 50, 40),
        (1, 33, 8, 128, 40, 40),  # more listed entries than kv rows: whole-kv conversion
    ],
)
def test_matches_reference(lib, b, m, h, d, n, k, dtype):
    _run_all(lib, *_case(b, m, h, d, n, k, dtype, seed=b * m + h * d + n + k))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("h, d, s, win, comp", [(8, 512, 96, 64, 24), (16, 64, 77, 32, 19)])
def test_prefill_window_and_compressed_entries(lib, h, d, s, win, comp, dtype):
    """The engine's prefill lists: a causal window over the fresh rows (runs of consecutive
    rows starting at every parity) then the compressed entries each query may see."""
    g = torch.Generator().manual_seed(s)
    q = torch.randn(1, s, h, d, generator=g).to(dtype)
    kv = torch.randn(1, s + comp, d, generator=g).to(dtype)
    sink = torch.randn(h, generator=g)
    t = torch.arange(s)[:, None]
    w = t - win + 1 + torch.arange(win)[None]
    w = torch.where((w >= 0) & (w <= t), w, -1)
    c = torch.arange(comp)[None]
    c = torch.where(c < (t + 1) // 4, c + s, -1)
    _run_all(lib, q, kv, sink, torch.cat([w, c], 1).int()[None], d**-0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_rows_duplicates_and_sink_extremes(lib, dtype):
    q, kv, sink, idx, scale = _case(2, 6, 8, 64, 90, 20, dtype, seed=7)
    idx[0, 1] = -1  # nothing to attend to: zeros
    idx[1, 2, :6] = 5  # an index listed twice counts twice (the gather path: K*2 < N)
    idx[1, 2, 6] = 5
    idx[1, 3, :] = -1
    idx[1, 3, 0] = 11  # a single entry
    sink[0], sink[1] = 40.0, -40.0  # the sink dominates / vanishes
    ref = _run_all(lib, q, kv, sink, idx, scale)
    assert torch.count_nonzero(ref[0, 1]) == 0
    for impl in IMPLS:
        out = sparse_attn_native(lib, q, kv, sink, idx, scale, impl)
        assert torch.count_nonzero(out[0, 1]) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_scores_and_nothing_listed(lib, dtype):
    q, kv, sink, idx, _ = _case(1, 3, 8, 64, 50, 12, dtype, seed=3)
    _run_all(lib, q, kv, sink, idx, 3.0)  # p spans e^-100 .. 1: subnormal and zero p
    empty = idx[..., :0]
    for impl in IMPLS:
        out = sparse_attn_native(lib, q, kv, sink, empty, 0.1, impl)
        assert torch.equal(out, torch.zeros_like(out))


def test_operands_are_converted_or_rejected(lib):
    q, kv, sink, idx, scale = _case(1, 4, 8, 32, 20, 6, torch.bfloat16, seed=1)
    sink = sink.bfloat16()  # converted to fp32, as the reference's `.float()`
    ref = sparse_attn_ref(q, kv, sink, idx, scale)
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # a strided view
    out = sparse_attn_native(lib, qt, kv, sink, idx.long(), scale)
    _check_close(out, ref, _exact(q, kv, sink, idx, scale)[1])
    bad = idx.clone()
    bad[0, 0, 0] = 20
    with pytest.raises(IndexError, match="topk_idxs"):
        sparse_attn_native(lib, q, kv, sink, bad, scale)
    with pytest.raises(SparseAttnKernelError, match="kv"):
        sparse_attn_native(lib, q, kv.float(), sink, idx, scale)
    with pytest.raises(SparseAttnKernelError, match="attn_sink"):
        sparse_attn_native(lib, q, kv, sink[:3], idx, scale)


def test_paths_listed(lib):
    impls = available_impls(lib)
    assert impls[-1] == "portable" and set(impls) <= set(IMPLS)


def test_dispatcher_takes_the_native_path_on_cpu(monkeypatch):
    q, kv, sink, idx, scale = _case(1, 2, 8, 64, 40, 10, torch.bfloat16, seed=5)
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return sparse_attn_native(*args, **kwargs)

    monkeypatch.setattr(sa, "sparse_attn_native", counting)
    monkeypatch.delenv("DSV4_KERNELS", raising=False)
    out = sparse_attn(q, kv, sink, idx, scale)
    assert calls == [1]
    _check_close(out, sparse_attn_ref(q, kv, sink, idx, scale), _exact(q, kv, sink, idx, scale)[1])
    monkeypatch.setenv("DSV4_KERNELS", "torch")
    ref = sparse_attn_ref(q, kv, sink, idx, scale)
    assert torch.equal(sparse_attn(q, kv, sink, idx, scale), ref)
    assert calls == [1]
