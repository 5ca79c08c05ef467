"""Activation quantization (SPEC §6, §8): FP8 e4m3 with ue8m0 block scales, and FP4 e2m1.

Torch references `*_ref` carry REF's exact numerics; the dispatchers of the same name without
the suffix call the Triton twins (`quant_triton.py`) when `use_triton` says so.

* `act_quant`: per row and block of 128, `amax = max(|x|, 1e-4)`, `s = pow2_ceil(amax/448)`
  (smallest power of two, ue8m0), `q = e4m3(clamp(x/s, ±448))`. Inputs of FP8/FP4 GEMMs.
* `act_quant_dequant`: the same with blocks of 64, written back as `e4m3(...)·s` in the
  input dtype: the FP8 simulation of the KV nope dims (REF current revision rounds through
  FP8 here).
* `fp4_act_quant_dequant`: blocks of 32, `amax = max(|x|, 6·2^-126)`, `s = pow2_ceil(amax/6)`,
  value `e2m1(clamp(x/s, ±6))·s`: the indexer's FP4 simulation.
"""

from __future__ import annotations

import torch

from .dispatch import use_triton
from .formats import FP4_MAX, FP8_MAX, e2m1_round, pow2_ceil

_FP8_AMAX_FLOOR = 1e-4
_FP4_AMAX_FLOOR = 6.0 * 2.0**-126
# REF multiplies by the fp32 reciprocal of 448 (not a division) before rounding the scale up.
_INV_FP8_MAX = torch.tensor(1.0 / FP8_MAX, dtype=torch.float32).item()


def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """fp32 view [..., N/block, block] of x; N must be a multiple of block."""
    n = x.shape[-1]
    if n % block:
        raise ValueError(f"last dim {n} is not a multiple of the quantization block {block}")
    return x.float().unflatten(-1, (n // block, block))


def _fp8_scales(xb: torch.Tensor) -> torch.Tensor:
    """[..., nb, block] fp32 -> power-of-two scales [..., nb, 1]."""
    amax = xb.abs().amax(-1, keepdim=True).clamp_min(_FP8_AMAX_FLOOR)
    return pow2_ceil(amax * _INV_FP8_MAX)


def act_quant_ref(x: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """x act [..., N] -> (q float8_e4m3fn [..., N], s fp32 [..., N//block])."""
    xb = _blocks(x, block)
    s = _fp8_scales(xb)
    q = (xb / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.flatten(-2), s.squeeze(-1)


def act_quant_dequant_ref(x: torch.Tensor, block: int = 64) -> torch.Tensor:
    """x act [..., N] -> act [..., N]: `(e4m3(clamp(x/s)).float() * s).to(x.dtype)`."""
    xb = _blocks(x, block)
    s = _fp8_scales(xb)
    q = (xb / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return (q.float() * s).flatten(-2).to(x.dtype)


def fp4_act_quant_dequant_ref(x: torch.Tensor, block: int = 32) -> torch.Tensor:
    """x act [..., N] -> act [..., N]: the FP4 e2m1 round trip with power-of-two scales."""
    xb = _blocks(x, block)
    amax = xb.abs().amax(-1, keepdim=True).clamp_min(_FP4_AMAX_FLOOR)
    s = pow2_ceil(amax / FP4_MAX)
    q = e2m1_round((xb / s).clamp(-FP4_MAX, FP4_MAX))
    return (q * s).flatten(-2).to(x.dtype)


def act_quant(x: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    if use_triton(x):
        from .quant_triton import act_quant_triton

        return act_quant_triton(x, block)
    return act_quant_ref(x, block)


def act_quant_dequant(x: torch.Tensor, block: int = 64) -> torch.Tensor:
    if use_triton(x):
        from .quant_triton import act_quant_dequant_triton

        return act_quant_dequant_triton(x, block)
    return act_quant_dequant_ref(x, block)


def fp4_act_quant_dequant(x: torch.Tensor, block: int = 32) -> torch.Tensor:
    if use_triton(x):
        from .quant_triton import fp4_act_quant_dequant_triton

        return fp4_act_quant_dequant_triton(x, block)
    return fp4_act_quant_dequant_ref(x, block)
