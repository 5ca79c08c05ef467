"""Block-scaled GEMM references against the blockwise sum of their definition."""

import torch

from dsv4.kernels.formats import (
    e2m1_decode,
    e8m0_to_fp32,
    quantize_fp4_weight,
    quantize_fp8_weight,
    unpack_fp4,
)
from dsv4.kernels.gemm import fp4_gemm_ref, fp8_gemm_ref
from dsv4.kernels.quant import act_quant_ref


def _operands(m, n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) * 0.05
    return x, w


def test_fp8_gemm_matches_blockwise_definition():
    x, w = _operands(5, 200, 384)  # N not a multiple of 128
    a, a_s = act_quant_ref(x)
    b, b_s = quantize_fp8_weight(w)
    out = fp8_gemm_ref(a, a_s, b, b_s, torch.float32)
    want = torch.zeros(5, 200, dtype=torch.float64)
    bs = e8m0_to_fp32(b_s)
    for kb in range(3):
        sl = slice(128 * kb, 128 * (kb + 1))
        part = a[:, sl].double() @ b[:, sl].double().T
        col_scale = bs[torch.arange(200) // 128, kb].double()
        want += part * a_s[:, kb, None].double() * col_scale[None, :]
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e-6)
    assert fp8_gemm_ref(a, a_s, b, b_s).dtype == torch.bfloat16


def test_fp4_gemm_matches_blockwise_definition():
    x, w = _operands(3, 64, 256, seed=1)
    a, a_s = act_quant_ref(x)
    b, b_s = quantize_fp4_weight(w)
    out = fp4_gemm_ref(a, a_s, b, b_s, torch.float32)
    vals = e2m1_decode(unpack_fp4(b)).double()  # [64, 256], low nibble = even element
    bs = e8m0_to_fp32(b_s).double()
    want = torch.zeros(3, 64, dtype=torch.float64)
    for kb in range(256 // 32):
        sl = slice(32 * kb, 32 * (kb + 1))
        part = a[:, sl].double() @ vals[:, sl].T
        want += part * a_s[:, kb // 4, None].double() * bs[None, :, kb]
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e-6)
