"""The C few-row GEMMs (`kernels/gemm_native.py`) against the torch references.

Products are the same fp32 products as the references'; only the summation order differs, so
results agree to fp32 rounding of sums (relative to Σ|x·w|). Each case also runs the portable
scalar build (`-mno-avx512f`), which covers machines without AVX-512, and the fp32 FMA build
(`-mno-avx512bf16`): where the CPU has AVX-512 BF16, FP8 GEMVs of bf16-exact activations
(bf16, or FP8-quantized) run as bf16 dot products instead.
"""

from __future__ import annotations

import ctypes

import pytest
import torch

from dsv4.kernels import gemm_native, native
from dsv4.kernels.formats import e8m0_to_fp32
from dsv4.kernels.gemm import bf16_matmul_fp32, dequantize_fp8
from dsv4.kernels.quant import act_quant_values_ref

from .conftest import native_build


@pytest.fixture(scope="module", params=["native", "no-bf16", "portable"])
def lib(request, tmp_path_factory) -> ctypes.CDLL:
    return native_build(request, tmp_path_factory, "gemm")


def _close(out: torch.Tensor, want: torch.Tensor, bound: torch.Tensor) -> None:
    """|out − want| within fp32 summation error: a few ulps of Σ|x·w| per output."""
    err = (out.double() - want.double()).abs()
    assert (err <= 1e-6 * bound.double() + 1e-30).all(), float((err / bound.double()).max())


@pytest.mark.parametrize("m, n, k", [(1, 1000, 96), (3, 257, 77), (4, 64, 512), (2, 5, 16)])
def test_bf16_gemm_is_the_fp32_gemm_of_the_bf16_weight(lib, m, n, k):
    g = torch.Generator().manual_seed(m * n + k)
    x = torch.randn(m, k, generator=g)
    w = (torch.randn(n, k, generator=g) * 0.05).bfloat16()
    out = gemm_native.bf16_gemm(lib, x, w)
    assert out.dtype == torch.float32 and out.shape == (m, n)
    _close(out, x.double() @ w.double().T, x.double().abs() @ w.double().abs().T)
    xb = x.bfloat16()  # the engine's case: bf16 activations, exact products
    _close(gemm_native.bf16_gemm(lib, xb, w), bf16_matmul_fp32(xb, w),
           xb.double().abs() @ w.double().abs().T)  # fmt: skip


def _fp8_weight(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=g) * 3).to(torch.float8_e4m3fn)
    w.view(torch.uint8)[0, :8] = torch.arange(8, dtype=torch.uint8)  # subnormals and zero
    w.view(torch.uint8)[-1, :8] = torch.arange(8, dtype=torch.uint8) | 0x80
    codes = torch.randint(110, 130, (-(-n // 128), -(-k // 128)), generator=g, dtype=torch.uint8)
    return w, e8m0_to_fp32(codes)


@pytest.mark.parametrize("m, n, k", [(1, 256, 384), (4, 130, 256), (3, 300, 128), (2, 7, 200)])
def test_fp8_gemm_without_quantization(lib, m, n, k):
    w, s = _fp8_weight(n, k, seed=n + k)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(k))
    dense = dequantize_fp8(w, s).double()
    out = gemm_native.fp8_gemm(lib, x, w, s, quant=False)
    _close(out, x.double() @ dense.T, x.double().abs() @ dense.abs().T)


@pytest.mark.parametrize("m, n, k", [(1, 200, 192), (2, 129, 200), (4, 64, 64)])
def test_fp8_gemm_of_bf16_activations(lib, m, n, k):
    """bf16 x without quantization: the BF16 dot-product path where K % 64 == 0 (the rest
    of K in the fp32 loops otherwise), the same products either way."""
    w, s = _fp8_weight(n, k, seed=7 * n + k)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(n)).bfloat16()
    dense = dequantize_fp8(w, s).double()
    for out_dtype in (torch.float32, torch.bfloat16):
        out = gemm_native.fp8_gemm(lib, x, w, s, False, out_dtype)
        want = x.double() @ dense.T
        if out_dtype == torch.bfloat16:  # the fp32 sums rounded once
            assert (out.double() - want).abs().le(want.abs() * 2**-8 + 1e-6).all()
        else:
            _close(out, want, x.double().abs() @ dense.abs().T)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("m, n, k", [(1, 256, 384), (4, 130, 256), (3, 300, 128)])
def test_fp8_gemm_quantizes_the_activation_as_ref(lib, m, n, k, dtype):
    w, s = _fp8_weight(n, k, seed=n * k)
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(m)) * 5).to(dtype)
    x[0, :128] *= 1e-6  # a block under the amax floor
    xq = act_quant_values_ref(x, 128).double()  # REF's FP8 values, bit for bit in the kernel
    dense = dequantize_fp8(w, s).double()
    out = gemm_native.fp8_gemm(lib, x, w, s, quant=True)
    _close(out, xq @ dense.T, xq.abs() @ dense.abs().T)
    assert not torch.equal(out, gemm_native.fp8_gemm(lib, x, w, s, quant=False))


def test_bad_shapes_are_named():
    lib = native.load("gemm")
    w, s = _fp8_weight(256, 256, seed=1)
    with pytest.raises(ValueError, match="shapes do not match"):
        gemm_native.fp8_gemm(lib, torch.zeros(1, 128), w, s, quant=True)
    with pytest.raises(ValueError, match="K % 128"):
        gemm_native.fp8_gemm(lib, torch.zeros(1, 200), *_fp8_weight(8, 200, 2), quant=True)
    with pytest.raises(ValueError, match="weight: expected a contiguous torch.bfloat16"):
        gemm_native.bf16_gemm(lib, torch.zeros(1, 8), torch.zeros(4, 8))


def test_engine_linears_take_the_native_path_for_few_rows(monkeypatch):
    from dsv4.engine.numerics import Numerics
    from dsv4.engine.weights import FP8Linear, fp8_linears, linear_fp32

    calls: list[str] = []
    for owner, name in ((gemm_native, "bf16_gemm"), (gemm_native.BoundFP8, "__call__")):
        real = getattr(owner, name)

        def spy(*a, _r=real, _n=name, **kw):
            calls.append("bf16_gemm" if _n == "bf16_gemm" else "fp8_gemm")
            return _r(*a, **kw)

        monkeypatch.setattr(owner, name, spy)
    w, s = _fp8_weight(256, 256, seed=5)
    lin = FP8Linear(w, torch.full(s.shape, 127, dtype=torch.uint8))
    head = torch.randn(300, 256).bfloat16()
    x = torch.randn(2, 256).bfloat16()
    nx = Numerics(torch.bfloat16, quant_sim=True)
    native_out = (fp8_linears(x, (lin,), nx)[0], lin(x, Numerics(quant_sim=False)),
                  linear_fp32(x, head))  # fmt: skip
    assert calls == ["fp8_gemm", "fp8_gemm", "bf16_gemm"]
    monkeypatch.setenv("DSV4_KERNELS", "torch")
    torch_out = (fp8_linears(x, (lin,), nx)[0], lin(x, Numerics(quant_sim=False)),
                 linear_fp32(x, head))  # fmt: skip
    assert len(calls) == 3  # the torch references ran
    for a, b in zip(native_out, torch_out, strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-2, atol=1e-2)  # bf16 outputs
    calls.clear()
    monkeypatch.setenv("DSV4_KERNELS", "auto")
    fp8_linears(torch.randn(40, 256).bfloat16(), (lin,), nx)  # prefill rows: torch GEMMs
    assert calls == []


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("quant_sim", [True, False])
@pytest.mark.parametrize("rows", [1, 3])
def test_shared_expert_in_one_call_matches_the_torch_path(monkeypatch, dtype, quant_sim, rows):
    from dsv4.engine.moe import SharedExpert
    from dsv4.engine.numerics import Numerics

    def lin(n: int, k: int, seed: int):
        from dsv4.engine.weights import FP8Linear

        w, s = _fp8_weight(n, k, seed)
        codes = (torch.log2(s).round() + 127).to(torch.uint8)  # the e8m0 bytes of s
        return FP8Linear(w, codes)

    expert = SharedExpert(lin(256, 384, 1), lin(384, 256, 2), lin(256, 384, 3), limit=10.0)
    x = (torch.randn(rows, 384, generator=torch.Generator().manual_seed(rows)) * 2).to(dtype)
    nx = Numerics(dtype, quant_sim)
    got = expert(x, nx)
    monkeypatch.setenv("DSV4_KERNELS", "torch")
    want = expert(x, nx)
    assert got.dtype == dtype and got.shape == want.shape
    # fp32 sums in another order, then act-dtype roundings (and FP8 roundings of the hidden
    # activation): most elements equal, the rest within a couple of act-dtype steps
    rel = (got.float() - want.float()).abs() / want.float().abs().clamp_min(1e-3)
    assert (got == want).float().mean() > (0.9 if dtype == torch.bfloat16 else 0.0)
    assert rel.max() < (0.08 if quant_sim else 0.02), float(rel.max())


def test_shared_expert_rejects_mismatched_weights():
    lib = native.load("gemm")
    w1, s1 = _fp8_weight(256, 384, 1)
    w2, s2 = _fp8_weight(384, 128, 2)
    with pytest.raises(ValueError, match="shapes do not match"):
        gemm_native.fp8_swiglu(lib, torch.zeros(1, 384), (w1, s1), (w1, s1), (w2, s2), 10.0, True)


@pytest.fixture(scope="module")
def amx():
    lib = native.load("amx")
    if not gemm_native.amx_ready(lib):
        pytest.skip("no AMX tiles on this CPU (or the OS does not grant them)")
    return lib


@pytest.mark.parametrize("m, n, k", [(256, 1000, 512), (37, 333, 96), (5, 17, 32), (70, 4096, 256)])
def test_amx_bf16_gemm_is_the_fp32_gemm_of_bf16_operands(amx, m, n, k):
    g = torch.Generator().manual_seed(m + n)
    x = torch.randn(m, k, generator=g).bfloat16()
    w = (torch.randn(n, k, generator=g) * 0.05).bfloat16()
    out = gemm_native.amx_gemm(amx, x, w)
    assert out.dtype == torch.float32 and out.shape == (m, n)
    _close(out, x.double() @ w.double().T, x.double().abs() @ w.double().abs().T)
    rounded = gemm_native.amx_gemm(amx, x, w, out_dtype=torch.bfloat16)
    assert torch.equal(rounded, out.bfloat16())  # bf16 output: the fp32 sums rounded once


@pytest.mark.parametrize("m, n, k", [(40, 256, 384), (9, 130, 256), (128, 300, 128)])
def test_amx_fp8_gemm_decodes_the_weight_exactly(amx, m, n, k):
    w, s = _fp8_weight(n, k, seed=n + k)
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(k)) * 3).bfloat16()
    dense = dequantize_fp8(w, s).double()
    out = gemm_native.amx_gemm(amx, x, w, s)
    _close(out, x.double() @ dense.T, x.double().abs() @ dense.abs().T)


def test_amx_declines_what_it_cannot_take(amx):
    x = torch.randn(20, 48).bfloat16()
    assert gemm_native.amx_gemm(amx, x, torch.randn(8, 48).bfloat16()) is None  # K % 32
    with pytest.raises(ValueError, match="bf16 activations"):
        gemm_native.amx_gemm(amx, torch.randn(20, 64), torch.randn(8, 64).bfloat16())


def test_engine_prefill_linears_run_on_amx(amx, monkeypatch):
    from dsv4.engine.numerics import Numerics
    from dsv4.engine.weights import FP8Linear, fp8_linears, linear_fp32

    calls = []
    real = gemm_native.amx_gemm
    monkeypatch.setattr(gemm_native, "amx_gemm",
                        lambda *a, **k: calls.append(1) or real(*a, **k))  # fmt: skip
    w, s = _fp8_weight(256, 256, seed=5)
    lin = FP8Linear(w, (torch.log2(s).round() + 127).to(torch.uint8))
    x = torch.randn(40, 256).bfloat16()
    got = fp8_linears(x, (lin,), Numerics(torch.bfloat16, quant_sim=True))[0]
    head = (torch.randn(300, 256) * 0.05).bfloat16()
    logits = linear_fp32(x, head)
    assert len(calls) == 2
    monkeypatch.setenv("DSV4_KERNELS", "torch")
    want = fp8_linears(x, (lin,), Numerics(torch.bfloat16, quant_sim=True))[0]
    assert (got != want).float().mean() < 0.01  # bf16 outputs: summation order only
    torch.testing.assert_close(logits, linear_fp32(x, head), rtol=1e-5, atol=1e-5)


def test_amx_build_without_tiles_declines(tmp_path, monkeypatch):
    monkeypatch.setenv("DSV4_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("DSV4_NATIVE_CFLAGS", "-mno-amx-tile -mno-amx-bf16")
    lib = ctypes.CDLL(str(native.build("amx")))
    assert not gemm_native.amx_ready(lib)
    x = torch.randn(20, 64).bfloat16()
    assert gemm_native.amx_gemm(lib, x, torch.randn(8, 64).bfloat16()) is None


def test_one_row_gemv_split_over_threads_gives_the_same_bits():
    lib = native.load("gemm")
    g = torch.Generator().manual_seed(9)
    w = (torch.randn(gemm_native._SPLIT_MIN_ROWS + 77, 64, generator=g) * 0.05).bfloat16()
    x = torch.randn(1, 64, generator=g).bfloat16()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert len(gemm_native._row_split(1, w.shape[0])) == 1
        one = gemm_native.bf16_gemm(lib, x, w)
        torch.set_num_threads(3)
        assert len(gemm_native._row_split(1, w.shape[0])) == 3
        assert len(gemm_native._row_split(2, w.shape[0])) == 1  # only one-row GEMVs split
        split = gemm_native.bf16_gemm(lib, x, w)
        rounded = gemm_native.bf16_gemm(lib, x, w, torch.bfloat16)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, split)
    assert torch.equal(rounded, one.bfloat16())
    _close(one, x.double() @ w.double().T, x.double().abs() @ w.double().abs().T)


def test_bound_fp8_gemv_is_fp8_gemm(lib):
    w, s = _fp8_weight(200, 256, seed=11)
    bound = gemm_native.BoundFP8(lib, w, s)
    x = torch.randn(3, 512, generator=torch.Generator().manual_seed(3)).bfloat16()
    cases = ((x[:1, :256], True, torch.bfloat16), (x[:2, :256], False, torch.float32))
    for rows, quant, out in cases:
        dense = rows.contiguous()
        assert torch.equal(bound(dense, quant, out),
                           gemm_native.fp8_gemm(lib, dense, w, s, quant, out))  # fmt: skip
        assert torch.equal(bound(rows, quant, out), bound(dense, quant, out))  # strided x
    with pytest.raises(ValueError, match="shapes do not match"):
        bound(x[:1], True, torch.bfloat16)  # K = 512 for a weight of K = 256
    with pytest.raises(ValueError, match="scale"):
        gemm_native.BoundFP8(lib, w, s[:1])
