"""moe_triton vs moe_ref: routed FP4 experts, grouped by expert, fp32 scatter-add.

Tolerance: the grouped kernel sums the same exact products in another order (fp32), and
with bf16 activations the reference rounds g, u, the SwiGLU output and each expert output to
bf16, so an order-level difference can flip a bf16 rounding and propagate through w2.
Relative L2 <= 2e-3 with bf16 (a few bf16 ulps of 2^-8 over a sum of k expert outputs),
1e-5 in fp32 without quantization simulation (summation order only).
"""

from __future__ import annotations

import pytest
import torch

from dsv4.kernels.formats import quantize_fp4_weight
from dsv4.kernels.moe import moe_ref

from .conftest import rel_l2


def _experts(e: int, rows: int, cols: int):
    ws = [quantize_fp4_weight(torch.randn(rows, cols) * 0.5) for _ in range(e)]
    return torch.stack([w for w, _ in ws]), torch.stack([s for _, s in ws])


def _case(t: int, d: int, i: int, e: int, k: int, dtype: torch.dtype):
    x = (torch.randn(t, d) * 2).to(dtype)
    # Expert e-1 is never chosen (an empty expert); token 0 lists expert 0 twice.
    ids = torch.randint(0, e - 1, (t, k))
    ids[0, :2] = 0
    weights = torch.rand(t, k)
    w1, w1_s = _experts(e, i, d)
    w3, w3_s = _experts(e, i, d)
    w2, w2_s = _experts(e, d, i)
    return x, ids, weights, w1, w1_s, w3, w3_s, w2, w2_s


@pytest.mark.parametrize(
    ("t", "dtype", "quant_sim", "tol"),
    [(1, torch.bfloat16, True, 2e-3), (19, torch.bfloat16, True, 2e-3),
     (7, torch.float32, False, 1e-5), (5, torch.bfloat16, False, 2e-3)],
)  # fmt: skip
def test_moe_matches_reference(t, dtype, quant_sim, tol, device):
    from dsv4.kernels.moe_triton import moe_triton

    args = _case(t, 128, 256, 5, 3, dtype)
    # Limit 10 bites: the unclamped w1/w3 outputs here reach ~30.
    out = moe_triton(*(a.to(device) for a in args), 10.0, quant_sim)
    ref = moe_ref(*args, 10.0, quant_sim)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert rel_l2(out.cpu(), ref) <= tol


def test_sort_by_expert_groups_and_pads(device):
    from dsv4.kernels.moe_triton import sort_by_expert

    ids = torch.tensor([[2, 0], [2, 2], [0, 3]], device=device)
    r = sort_by_expert(ids, n_experts=4, block_m=4)
    pairs, experts = r.pair_ids.cpu(), r.block_expert.cpu()
    # Flat ids [2, 0, 2, 2, 0, 3]: expert 0 -> pairs 1, 4; expert 2 -> 0, 2, 3; expert 3 -> 5.
    assert pairs[:12].tolist() == [1, 4, -1, -1, 0, 2, 3, -1, 5, -1, -1, -1]
    assert experts[:3].tolist() == [0, 2, 3] and (experts[3:] == -1).all()


def test_moe_rejects_misaligned_dims(device):
    from dsv4.kernels.moe_triton import moe_triton
    from dsv4.kernels.triton_util import KernelArgumentError

    args = list(_case(2, 128, 256, 2, 2, torch.bfloat16))
    args[0] = args[0][:, :64]
    with pytest.raises(KernelArgumentError, match="multiples of 128"):
        moe_triton(*(a.to(device) for a in args), 10.0, True)
