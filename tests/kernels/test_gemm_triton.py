"""gemm_triton vs gemm: block-scaled FP8 x FP8 and FP8 x FP4 GEMMs.

Tolerance: both sides compute exact FP8/FP4 products and sum them in fp32, but in a
different order (per 128/32-wide K block in the kernel, one fp32 matmul in the reference),
so the fp32 results differ by a few fp32 ulps; after the bf16 output cast that flips at
most an occasional last bf16 bit. Relative L2 <= 1e-3 against the reference (a bf16 ulp is
2^-8 relative, so 1e-3 allows ~1 in 4 elements to differ by one ulp), and with fp32 output
1e-5 (fp32 summation order only).
"""

from __future__ import annotations

import pytest
import torch

from dsv4.kernels.formats import quantize_fp4_weight, quantize_fp8_weight
from dsv4.kernels.gemm import fp4_gemm_ref, fp8_gemm_ref
from dsv4.kernels.quant import act_quant_ref

from .conftest import rel_l2

# (M, N, K): single-row decode, sizes not multiples of the tiles, several K blocks.
SHAPES = [(1, 96, 256), (37, 200, 384), (70, 33, 128)]


def _operands(m: int, k: int, device: torch.device):
    x = torch.randn(m, k) * 3
    a, a_s = act_quant_ref(x)
    return a.to(device), a_s.to(device)


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("m", "n", "k"), SHAPES)
def test_fp8_gemm_matches_reference(m, n, k, out_dtype, device):
    from dsv4.kernels.gemm_triton import fp8_gemm_triton

    a, a_s = _operands(m, k, device)
    # Rows of very different size so the 128x128 weight blocks get different scales.
    w = torch.randn(n, k) * torch.logspace(-3, 1, n).unsqueeze(1)
    b, b_s = quantize_fp8_weight(w)
    c = fp8_gemm_triton(a, a_s, b.to(device), b_s.to(device), out_dtype)
    ref = fp8_gemm_ref(a.cpu(), a_s.cpu(), b, b_s, out_dtype)
    assert c.shape == (m, n) and c.dtype == out_dtype
    assert rel_l2(c.cpu(), ref) <= (1e-3 if out_dtype == torch.bfloat16 else 1e-5)


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("m", "n", "k"), SHAPES)
def test_fp4_gemm_matches_reference(m, n, k, out_dtype, device):
    from dsv4.kernels.gemm_triton import fp4_gemm_triton

    a, a_s = _operands(m, k, device)
    w = torch.randn(n, k) * torch.logspace(-2, 1, k).unsqueeze(0)  # scales vary along K
    b, b_s = quantize_fp4_weight(w)
    c = fp4_gemm_triton(a, a_s, b.to(device), b_s.to(device), out_dtype)
    ref = fp4_gemm_ref(a.cpu(), a_s.cpu(), b, b_s, out_dtype)
    assert rel_l2(c.cpu(), ref) <= (1e-3 if out_dtype == torch.bfloat16 else 1e-5)


def test_gemm_rejects_bad_scales(device):
    from dsv4.kernels.gemm_triton import fp8_gemm_triton
    from dsv4.kernels.triton_util import KernelArgumentError

    a, a_s = _operands(4, 256, device)
    b, b_s = quantize_fp8_weight(torch.randn(64, 256))
    with pytest.raises(KernelArgumentError, match="a_s"):
        fp8_gemm_triton(a, a_s[:, :1], b.to(device), b_s.to(device))
    with pytest.raises(KernelArgumentError, match="multiple of 128"):
        fp8_gemm_triton(a[:, :100], a_s, b.to(device), b_s.to(device))
