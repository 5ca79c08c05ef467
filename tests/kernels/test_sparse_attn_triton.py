"""sparse_attn_triton vs sparse_attn_ref, and the FP8-KV-cache variant.

Tolerance: scores and sums are fp32 in both, but the kernel's online softmax rounds P to
bf16 relative to the running max of the blocks seen so far, the reference relative to the
final max, so individual P values can differ by one bf16 ulp (2^-8 relative); the output is
bf16 too. Relative L2 <= 4e-3 in bf16. In fp32 only exp/summation order differ: 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from dsv4.kernels.sparse_attn import sparse_attn_ref

from .conftest import rel_l2


def _indices(b: int, m: int, k: int, n: int) -> torch.Tensor:
    idx = torch.randint(0, n, (b, m, k), dtype=torch.int32)
    idx[torch.rand(b, m, k) < 0.3] = -1  # scattered skips
    if m > 1:
        idx[0, -1] = -1  # a query with nothing to attend: zeros
    return idx


@pytest.mark.parametrize(
    ("b", "m", "h", "d", "n", "k", "dtype", "tol"),
    [(1, 1, 3, 64, 50, 37, torch.bfloat16, 4e-3),  # decode, K not a multiple of 64
     (2, 3, 20, 48, 90, 130, torch.bfloat16, 4e-3),  # H > 16, D not a power of two
     (1, 2, 4, 64, 40, 70, torch.float32, 1e-5)],
)  # fmt: skip
def test_sparse_attn_matches_reference(b, m, h, d, n, k, dtype, tol, device):
    from dsv4.kernels.sparse_attn_triton import sparse_attn_triton

    q = torch.randn(b, m, h, d).to(dtype)
    kv = torch.randn(b, n, d).to(dtype)
    sink = torch.randn(h)
    idx = _indices(b, m, k, n)
    out = sparse_attn_triton(q.to(device), kv.to(device), sink.to(device), idx.to(device), d**-0.5)
    ref = sparse_attn_ref(q, kv, sink, idx, d**-0.5)
    assert out.dtype == dtype and out.shape == ref.shape
    if m > 1:
        assert torch.count_nonzero(out[0, -1].cpu()) == 0  # the all -1 row
    assert rel_l2(out.cpu(), ref) <= tol


def _fp8_cache(b: int, n: int):
    from dsv4.kernels.quant import act_quant_ref

    nope, s = act_quant_ref(torch.randn(b, n, 448) * 4, 64)
    return nope, s, torch.randn(b, n, 64).bfloat16()


def test_fp8kv_reference_equals_sparse_attn_on_simulated_cache():
    from dsv4.kernels.quant import act_quant_dequant_ref, act_quant_ref
    from dsv4.kernels.sparse_attn_triton import sparse_attn_fp8kv_ref

    raw = (torch.randn(1, 30, 448) * 4).bfloat16()
    rope = torch.randn(1, 30, 64).bfloat16()
    nope, s = act_quant_ref(raw, 64)
    q, sink, idx = torch.randn(1, 2, 4, 512).bfloat16(), torch.randn(4), _indices(1, 2, 20, 30)
    kv_sim = torch.cat([act_quant_dequant_ref(raw, 64), rope], dim=-1)
    ref = sparse_attn_ref(q, kv_sim, sink, idx, 512**-0.5)
    assert torch.equal(sparse_attn_fp8kv_ref(q, nope, s, rope, sink, idx, 512**-0.5), ref)


def test_sparse_attn_fp8kv_matches_reference(device):
    from dsv4.kernels.sparse_attn_triton import sparse_attn_fp8kv_ref, sparse_attn_fp8kv_triton

    nope, s, rope = _fp8_cache(1, 70)
    q, sink, idx = torch.randn(1, 2, 5, 512).bfloat16(), torch.randn(5), _indices(1, 2, 90, 70)
    args = (q, nope, s, rope, sink, idx)
    out = sparse_attn_fp8kv_triton(*(a.to(device) for a in args), 512**-0.5)
    ref = sparse_attn_fp8kv_ref(*args, 512**-0.5)
    assert rel_l2(out.cpu(), ref) <= 4e-3  # same bound as the bf16 case above


def test_sparse_attn_rejects_wrong_index_shape(device):
    from dsv4.kernels.sparse_attn_triton import sparse_attn_triton
    from dsv4.kernels.triton_util import KernelArgumentError

    q, kv = torch.randn(1, 2, 4, 64, device=device), torch.randn(1, 9, 64, device=device)
    idx = torch.zeros(1, 3, 5, dtype=torch.int32, device=device)
    with pytest.raises(KernelArgumentError, match="topk_idxs"):
        sparse_attn_triton(q, kv, torch.zeros(4, device=device), idx, 0.125)
