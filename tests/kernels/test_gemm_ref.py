"""Block-scaled GEMM references against the blockwise sum of their definition."""

import pytest
import torch

from dsv4.kernels.formats import (
    e2m1_decode,
    e8m0_to_fp32,
    quantize_fp4_weight,
    quantize_fp8_weight,
    unpack_fp4,
)
from dsv4.kernels.gemm import bf16_matmul_fp32, bf16_products, fp4_gemm_ref, fp8_gemm_ref
from dsv4.kernels.quant import act_quant_ref


def _operands(m, n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) * 0.05
    return x, w


# (M, N): N not a multiple of 128 (slabs); few rows with whole blocks (scales folded into the
# activation); many rows (bf16 products)
@pytest.mark.parametrize("m, n", [(5, 200), (1, 256), (3, 384), (40, 256)])
def test_fp8_gemm_matches_blockwise_definition(m, n):
    x, w = _operands(m, n, 384)
    a, a_s = act_quant_ref(x)
    b, b_s = quantize_fp8_weight(w)
    out = fp8_gemm_ref(a, a_s, b, b_s, torch.float32)
    want = torch.zeros(m, n, dtype=torch.float64)
    bs = e8m0_to_fp32(b_s)
    for kb in range(3):
        sl = slice(128 * kb, 128 * (kb + 1))
        part = a[:, sl].double() @ b[:, sl].double().T
        col_scale = bs[torch.arange(n) // 128, kb].double()
        want += part * a_s[:, kb, None].double() * col_scale[None, :]
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e-6)
    assert fp8_gemm_ref(a, a_s, b, b_s).dtype == torch.bfloat16


@pytest.mark.parametrize("m", [3, 40])
def test_fp4_gemm_matches_blockwise_definition(m):
    x, w = _operands(m, 64, 256, seed=1)
    a, a_s = act_quant_ref(x)
    b, b_s = quantize_fp4_weight(w)
    out = fp4_gemm_ref(a, a_s, b, b_s, torch.float32)
    vals = e2m1_decode(unpack_fp4(b)).double()  # [64, 256], low nibble = even element
    bs = e8m0_to_fp32(b_s).double()
    want = torch.zeros(m, 64, dtype=torch.float64)
    for kb in range(256 // 32):
        sl = slice(32 * kb, 32 * (kb + 1))
        part = a[:, sl].double() @ vals[:, sl].T
        want += part * a_s[:, kb // 4, None].double() * bs[None, :, kb]
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("m", [1, 7, 33])
def test_bf16_matmul_fp32_is_the_fp32_gemm_of_bf16_operands(m, monkeypatch):
    monkeypatch.setattr("dsv4.kernels.gemm._SLAB_BYTES", 4 * 96 * 16)  # several slabs
    monkeypatch.setattr("dsv4.kernels.gemm._WIDE_SLAB_BYTES", 4 * 96 * 40)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(m, 96, generator=g).bfloat16()
    w = (torch.randn(1000, 96, generator=g) * 0.05).bfloat16()
    out = bf16_matmul_fp32(x, w)
    assert out.dtype == torch.float32 and out.shape == (m, 1000)
    want = x.double() @ w.double().T  # products exact; fp32 accumulation differs in order only
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e-6)
    assert (out.double() - want).abs().max() < (out.bfloat16().double() - want).abs().max()


@pytest.mark.skipif(
    not hasattr(torch.backends.mkldnn, "matmul"), reason="torch without the fp32 precision knob"
)
def test_bf16_products_restores_the_fp32_mode():
    knob = torch.backends.mkldnn.matmul
    before = knob.fp32_precision
    with bf16_products():
        assert knob.fp32_precision == "bf16"
    with bf16_products(False):
        assert knob.fp32_precision == before
    assert knob.fp32_precision == before
