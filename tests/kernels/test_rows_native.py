"""The C row-wise steps (`kernels/rows_native.py`) against the torch references: RoPE bit for
bit; the RMS statistics up to their summation order."""

from __future__ import annotations

import pytest
import torch

from dsv4.kernels import native, rows_native


@pytest.fixture(scope="module")
def lib():
    return native.load("rows")


def _torch_ref(monkeypatch):
    monkeypatch.setenv("DSV4_KERNELS", "torch")


def _tables(rows: int, half: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ang = torch.outer(
        torch.arange(rows, dtype=torch.float32) * 37 + 5, torch.rand(half, generator=g)
    )
    return torch.cos(ang), torch.sin(ang)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 8, 512), (7, 3, 96), (5, 64), (1, 16, 128), (3, 2, 72)])
@pytest.mark.parametrize("inverse", [False, True])
def test_rope_is_bit_identical(lib, monkeypatch, dtype, shape, inverse):
    from dsv4.engine.rope import apply_rope

    x = (torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    cos, sin = _tables(shape[0], 32, seed=shape[-1])
    got = rows_native.head_norm_rope(lib, x, cos, sin, inverse=inverse)
    _torch_ref(monkeypatch)
    want = apply_rope(x, cos, sin, inverse=inverse)
    assert got.dtype == dtype and torch.equal(got, want)
    assert not torch.equal(got, x)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows, n", [(1, 512), (33, 256), (4, 100)])
def test_rms_norm_matches_up_to_summation_order(lib, monkeypatch, dtype, rows, n):
    from dsv4.engine.weights import rms_norm

    g = torch.Generator().manual_seed(rows + n)
    x = (torch.randn(rows, n, generator=g) * 4).to(dtype)
    w = torch.randn(n, generator=g)
    got = rows_native.rms_norm(lib, x, w, 1e-6)
    _torch_ref(monkeypatch)
    want = rms_norm(x, w, 1e-6)
    # the fp32 sum of squares in another order moves rsqrt by an ulp or so: fp32 outputs
    # agree to a few ulps, bf16 outputs to one bf16 step on the few elements near a tie
    tol = 2e-6 if dtype == torch.float32 else 2**-7
    assert torch.allclose(got.float(), want.float(), rtol=tol, atol=0)
    if dtype == torch.bfloat16:
        assert (got != want).float().mean() < 0.01


def _head_norm_single_rounding(q: torch.Tensor, eps: float) -> torch.Tensor:
    """REF's q * rsqrt(mean(q²) + eps) in q's dtype, every step rounded once to that dtype.
    (Torch's CPU bf16 rsqrt rounds twice on the elements past the last full vector, an
    artefact of its scalar tail; the C kernel and REF's GPU kernels round once.)"""
    m = q.square().mean(-1, keepdim=True) + eps
    r = (1 / torch.sqrt(m.float())).to(q.dtype)
    return q * r


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [1, 9])
def test_head_norm_then_rope(lib, monkeypatch, dtype, rows):
    from dsv4.engine.rope import apply_rope

    g = torch.Generator().manual_seed(rows)
    q = (torch.randn(rows, 8, 256, generator=g) * 2).to(dtype)
    cos, sin = _tables(rows, 32, seed=2)
    got = rows_native.head_norm_rope(lib, q, cos, sin, norm_eps=1e-6)
    _torch_ref(monkeypatch)
    want = apply_rope(_head_norm_single_rounding(q, 1e-6), cos, sin)
    tol = 2e-6 if dtype == torch.float32 else 2**-7  # the mean's summation order, as above
    assert torch.allclose(got.float(), want.float(), rtol=tol, atol=1e-6)
    no_rope = rows_native.head_norm_rope(lib, q, None, None, norm_eps=1e-6)
    assert torch.allclose(no_rope.float(), _head_norm_single_rounding(q, 1e-6).float(),
                          rtol=tol, atol=1e-6)  # fmt: skip


def test_bad_inputs_are_named(lib):
    with pytest.raises(ValueError, match="activation dtype"):
        rows_native.rms_norm(lib, torch.zeros(2, 4, dtype=torch.float16), torch.ones(4), 1e-6)
    with pytest.raises(ValueError, match="norm weight"):
        rows_native.rms_norm(lib, torch.zeros(2, 4), torch.ones(5), 1e-6)
    cos, sin = _tables(3, 4, seed=0)
    with pytest.raises(ValueError, match="RoPE tables"):
        rows_native.head_norm_rope(lib, torch.zeros(2, 16), cos, sin)


def test_engine_takes_the_native_path_on_cpu(monkeypatch):
    from dsv4.engine import rope, weights

    calls = []
    real_rope, real_norm = rows_native.head_norm_rope, rows_native.rms_norm
    monkeypatch.setattr(rows_native, "head_norm_rope",
                        lambda *a, **k: calls.append("rope") or real_rope(*a, **k))  # fmt: skip
    monkeypatch.setattr(rows_native, "rms_norm",
                        lambda *a, **k: calls.append("norm") or real_norm(*a, **k))  # fmt: skip
    cos, sin = _tables(2, 8, seed=0)
    x = torch.randn(2, 32)
    rope.apply_rope(x, cos, sin)
    weights.rms_norm(x, torch.ones(32), 1e-6)
    assert calls == ["rope", "norm"]
    monkeypatch.setenv("DSV4_KERNELS", "torch")
    rope.apply_rope(x, cos, sin)
    weights.rms_norm(x, torch.ones(32), 1e-6)
    assert calls == ["rope", "norm"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_add_act_is_the_torch_sum_cast_once(lib, dtype):
    g = torch.Generator().manual_seed(3)
    a = torch.randn(3, 517, generator=g) * 7
    b = (torch.randn(3, 517, generator=g) * 3).to(dtype)
    a[0, :4] = torch.tensor([float("inf"), float("nan"), -0.0, 1e-40])  # specials pass as torch's
    got = rows_native.add_act(lib, a, b)
    assert got.dtype == dtype
    torch.testing.assert_close(got, (a + b.float()).to(dtype), rtol=0, atol=0, equal_nan=True)
    with pytest.raises(ValueError, match="same shape"):
        rows_native.add_act(lib, a[:2], b)
