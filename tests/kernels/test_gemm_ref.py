"""Block-scaled GEMM references against the blockwise sum of their definition."""

import pytest
import torch

from dsv4.kernels.formats import (
    dequantize_fp4_weight,
    e2m1_decode,
    e8m0_to_fp32,
    quantize_fp4_weight,
    quantize_fp8_weight,
    unpack_fp4,
)
from dsv4.kernels.gemm import (
    bf16_matmul_fp32,
    bf16_products,
    block_scales_fp32,
    dequantize_fp4,
    dequantize_fp8,
    fp4_gemm_ref,
    fp8_gemm,
    fp8_gemm_kept,
    fp8_gemm_ref,
    fp8_matmul,
    kept_matmul,
)
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


@pytest.mark.parametrize("m, n, k", [(1, 256, 384), (5, 200, 384), (40, 256, 384), (2, 130, 384)])
def test_fp8_scales_decoded_at_load_give_identical_results(m, n, k):
    x, w = _operands(m, n, k, seed=5)
    a, a_s = act_quant_ref(x)
    b, b_s = quantize_fp8_weight(w)
    s32 = block_scales_fp32(b_s)
    assert s32.dtype == torch.float32 and torch.equal(s32, e8m0_to_fp32(b_s))
    assert block_scales_fp32(s32) is s32
    want = fp8_gemm_ref(a, a_s, b, b_s, torch.float32)
    assert torch.equal(fp8_gemm_ref(a, a_s, b, s32, torch.float32), want)
    assert torch.equal(
        fp8_gemm_kept(a, a_s, b, b_s, s32, torch.float32), fp8_gemm(a, a_s, b, b_s, torch.float32)
    )
    assert torch.equal(fp8_matmul(x, b, s32), fp8_matmul(x, b, b_s))
    assert torch.equal(dequantize_fp8(b, s32), dequantize_fp8(b, b_s))
    assert torch.equal(s32, e8m0_to_fp32(b_s))  # the kept scales are never scaled in place


def test_fp8_ragged_k_with_fp32_scales():
    x, w = _operands(2, 130, 320, seed=7)  # ragged K blocks: the plain dequantization path
    b, b_s = quantize_fp8_weight(w)
    s32 = block_scales_fp32(b_s)
    assert torch.equal(dequantize_fp8(b, s32), dequantize_fp8(b, b_s))
    assert torch.equal(fp8_matmul(x, b, s32), fp8_matmul(x, b, b_s))


def test_fp4_scales_may_be_fp32():
    _, w = _operands(1, 64, 128, seed=6)
    b, b_s = quantize_fp4_weight(w)
    assert torch.equal(dequantize_fp4(b, block_scales_fp32(b_s)), dequantize_fp4(b, b_s))


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
    monkeypatch.setattr("dsv4.kernels.gemm._HEAD_SLAB_BYTES", 4 * 96 * 16)  # several slabs
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


# Weights kept dequantized at load (`kept_matmul`) against the per-call dequantizing GEMMs:
# the same GEMM calls on the same values, so the results must be equal bit for bit.
@pytest.mark.parametrize("m, n, k", [(1, 256, 384), (3, 512, 256), (20, 256, 384), (1, 130, 384)])
def test_kept_fp8_weight_gives_identical_results(m, n, k):
    x, w = _operands(m, n, k, seed=11)
    xb = x.bfloat16().float()  # bf16 values: the bf16-products path is exact for them
    b, b_s = quantize_fp8_weight(w)
    s32 = block_scales_fp32(b_s)
    dense = dequantize_fp8(b, s32)
    assert torch.equal(kept_matmul(xb, dense, bf16_exact=True), fp8_matmul(xb, b, s32, True))
    assert torch.equal(kept_matmul(x, dense), fp8_matmul(x, b, s32))


@pytest.mark.parametrize("m", [1, 5, 33])
def test_kept_bf16_weight_gives_identical_results(m):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(m, 96, generator=g).bfloat16()
    w = (torch.randn(300, 96, generator=g) * 0.05).bfloat16()
    assert torch.equal(kept_matmul(x.float(), w.float(), bf16_exact=True), bf16_matmul_fp32(x, w))


def test_fp4_decode_table_matches_the_format_definition():
    g = torch.Generator().manual_seed(6)
    b, b_s = quantize_fp4_weight(torch.randn(3 * 64, 256, generator=g) * 0.05)
    b, b_s = b.view(3, 64, 128), b_s.view(3, 64, 8)
    b_s.view(torch.uint8)[0, 0, :2] = torch.tensor([255, 0], dtype=torch.uint8)  # NaN, 2^-127
    got = dequantize_fp4(b, b_s)
    want = torch.stack([dequantize_fp4_weight(b[i], b_s[i]) for i in range(3)])
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))  # NaN bits included
