"""quant_triton vs quant: the codes and scales are compared bit for bit (the kernels round
with exact integer arithmetic, so no tolerance is needed even under the interpreter)."""

from __future__ import annotations

import pytest
import torch

from dsv4.kernels.quant import act_quant_dequant_ref, act_quant_ref, fp4_act_quant_dequant_ref


def _inputs(rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # Magnitudes from 1e-7 to 1e4 so rows hit the amax floor, e4m3 subnormals and clamping.
    x = torch.randn(rows, cols) * torch.logspace(-7, 4, rows).unsqueeze(1)
    if rows > 3:
        x[1] = 0.0  # amax floor
        x[2, :64] = 448.0 * 2.0**-3  # amax/448 an exact power of two
        x[3, 5] = -0.0
    return x.to(dtype).to(device)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.cpu().view(torch.uint8), b.cpu().view(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 128), (37, 256), (2, 3, 384)])
def test_act_quant_codes_and_scales_exact(shape, dtype, device):
    from dsv4.kernels.quant_triton import act_quant_triton

    x = _inputs(shape[0] * (shape[1] if len(shape) == 3 else 1), shape[-1], dtype, device)
    x = x.view(shape)
    q, s = act_quant_triton(x)
    q_ref, s_ref = act_quant_ref(x.cpu())
    assert q.shape == q_ref.shape and s.shape == s_ref.shape
    assert _same_bits(q, q_ref)
    assert torch.equal(s.cpu(), s_ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_act_quant_dequant_exact(dtype, device):
    from dsv4.kernels.quant_triton import act_quant_dequant_triton

    x = _inputs(19, 448, dtype, device)  # the KV nope width: 7 blocks of 64
    y = act_quant_dequant_triton(x, 64)
    assert y.dtype == dtype
    assert torch.equal(y.cpu(), act_quant_dequant_ref(x.cpu(), 64))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fp4_act_quant_dequant_exact(dtype, device):
    from dsv4.kernels.quant_triton import fp4_act_quant_dequant_triton

    x = _inputs(21, 128, dtype, device)
    x[0, :32] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -5.0] * 4)  # e2m1 ties
    y = fp4_act_quant_dequant_triton(x, 32)
    assert torch.equal(y.cpu(), fp4_act_quant_dequant_ref(x.cpu(), 32))


def test_rejects_bad_block(device):
    from dsv4.kernels.quant_triton import act_quant_triton
    from dsv4.kernels.triton_util import KernelArgumentError

    with pytest.raises(KernelArgumentError, match="multiple of block=128"):
        act_quant_triton(torch.randn(2, 100, device=device))
    with pytest.raises(KernelArgumentError, match="dtype"):
        act_quant_triton(torch.randn(2, 128, device=device).half())


def test_empty_input(device):
    from dsv4.kernels.quant_triton import act_quant_triton

    q, s = act_quant_triton(torch.randn(0, 256, device=device))
    assert q.shape == (0, 256) and s.shape == (0, 2)
