"""Activation quantization (SPEC §6, §8): FP8 e4m3 with ue8m0 block scales, and FP4 e2m1.

Torch references `*_ref` carry REF's exact numerics; the dispatchers of the same name without
the suffix call the Triton twins (`quant_triton.py`) when `use_triton` says so, and the C
twins (`quant_native.py`, the same values bit for bit) for CPU tensors when `native_lib` does.

* `act_quant`: per row and block of 128, `amax = max(|x|, 1e-4)`, `s = pow2_ceil(amax/448)`
  (smallest power of two, ue8m0), `q = e4m3(clamp(x/s, ±448))`. Inputs of FP8/FP4 GEMMs.
* `act_quant_dequant`: the same with blocks of 64, written back as `e4m3(...)·s` in the
  input dtype: the FP8 simulation of the KV nope dims (REF current revision rounds through
  FP8 here).
* `fp4_act_quant_dequant`: blocks of 32, `amax = max(|x|, 6·2^-126)`, `s = pow2_ceil(amax/6)`,
  value `e2m1(clamp(x/s, ±6))·s`: the indexer's FP4 simulation.
"""

from __future__ import annotations

import numpy as np
import torch

from . import quant_native
from .dispatch import native_lib, use_triton
from .formats import FP4_MAX, FP8_MAX, e2m1_round, e4m3_to_fp32_div256, pow2_ceil

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


def act_quant_values_ref(x: torch.Tensor, block: int = 128) -> torch.Tensor:
    """x act [..., N] -> fp32 [..., N]: the values `e4m3(clamp(x/s))·s` of `act_quant_ref`'s
    output pair, dequantized (exact: a power-of-two scale times an e4m3 value).

    For torch GEMMs that multiply the dequantized activation anyway: one pass instead of
    quantizing and then decoding the e4m3 bytes again.
    """
    if x.device.type == "cpu" and x.numel() <= _NUMPY_MAX:
        return _act_quant_values_numpy(x, block)
    xb = _blocks(x, block)
    s = _fp8_scales(xb)
    q = (xb / s).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return _e4m3_values(q).mul_(s).flatten(-2)


# Up to this many elements (a few decode rows), `act_quant_values_ref` runs in numpy: the same
# IEEE operations, each dispatched several times faster than a torch op on tiny arrays.
_NUMPY_MAX = 1 << 14
_E4M3_MIN_SPACING = np.float32(2.0**-9)  # e4m3 subnormals are multiples of 2^-9


def _act_quant_values_numpy(x: torch.Tensor, block: int) -> torch.Tensor:
    """`act_quant_values_ref` for small CPU tensors, bit for bit: the scale is `_fp8_scales`'
    (exact max, floor, fp32 product, power-of-two ceiling from the bits), and the e4m3
    rounding of v = clamp(x/s, ±448) is done on the grid: spacing = 2^(⌊log2|v|⌋ − 3), at least
    2^-9, and v / spacing rounded half to even (e4m3's round-to-nearest-even), times it."""
    xb = _numpy_blocks(x, block)
    amax = np.maximum(np.abs(xb).max(axis=1, keepdims=True), np.float32(_FP8_AMAX_FLOOR))
    s = _pow2_ceil_numpy(amax * np.float32(_INV_FP8_MAX))
    v = np.minimum(np.maximum(xb / s, np.float32(-FP8_MAX)), np.float32(FP8_MAX))
    spacing = (v.view(np.int32) & np.int32(0x7F800000)).view(np.float32)  # 2^⌊log2|v|⌋, or 0
    spacing = np.maximum(spacing * np.float32(0.125), _E4M3_MIN_SPACING)
    q = np.rint(v / spacing) * spacing
    return torch.from_numpy((q * s).reshape(x.shape))


def _fp4_round_trip_numpy(x: torch.Tensor, block: int) -> torch.Tensor:
    """`fp4_act_quant_dequant_ref` in fp32 for small CPU tensors, bit for bit: the same
    scale steps, and `formats.e2m1_round`'s grid rounding of clamp(x/s, ±6)."""
    xb = _numpy_blocks(x, block)
    amax = np.maximum(np.abs(xb).max(axis=1, keepdims=True), np.float32(_FP4_AMAX_FLOOR))
    s = _pow2_ceil_numpy(amax / np.float32(FP4_MAX))
    v = np.minimum(np.maximum(xb / s, np.float32(-FP4_MAX)), np.float32(FP4_MAX))
    spacing = (v.view(np.int32) & np.int32(0x7F800000)).view(np.float32)  # 2^⌊log2|v|⌋, or 0
    spacing = np.maximum(spacing * np.float32(0.5), np.float32(0.5))
    q = np.rint(v / spacing) * spacing
    return torch.from_numpy((q * s).reshape(x.shape))


def _numpy_blocks(x: torch.Tensor, block: int) -> np.ndarray:
    """fp32 numpy view [rows, block] of x's blocks; N must be a multiple of block."""
    n = x.shape[-1]
    if n % block:
        raise ValueError(f"last dim {n} is not a multiple of the quantization block {block}")
    return x.detach().float().numpy().reshape(-1, block)


def _pow2_ceil_numpy(x: np.ndarray) -> np.ndarray:
    """`formats.pow2_ceil` on a positive fp32 numpy array (the same integer steps)."""
    bits = (x.view(np.int32) + np.int32(0x7FFFFF)) & np.int32(~0x7FFFFF)
    return np.minimum(np.maximum(bits, np.int32(0x00800000)), np.int32(0x7F000000)).view(np.float32)


# Up to this many elements torch's own float8 -> fp32 cast is the cheaper one (fewer ops);
# beyond it the element-by-element cast loses to the vectorized bit trick.
_E4M3_CAST_MAX = 1 << 14


def _e4m3_values(q: torch.Tensor) -> torch.Tensor:
    """float8_e4m3fn -> its exact values in fp32, by whichever of two casts is faster."""
    if q.numel() <= _E4M3_CAST_MAX:
        return q.float()
    return e4m3_to_fp32_div256(q).mul_(2.0**8)


def act_quant_dequant_ref(x: torch.Tensor, block: int = 64) -> torch.Tensor:
    """x act [..., N] -> act [..., N]: `(e4m3(clamp(x/s)).float() * s).to(x.dtype)`."""
    return act_quant_values_ref(x, block).to(x.dtype)


def fp4_act_quant_dequant_ref(x: torch.Tensor, block: int = 32) -> torch.Tensor:
    """x act [..., N] -> act [..., N]: the FP4 e2m1 round trip with power-of-two scales."""
    if x.device.type == "cpu" and x.numel() <= _NUMPY_MAX:
        return _fp4_round_trip_numpy(x, block).to(x.dtype)
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


def act_quant_values(x: torch.Tensor, block: int = 128) -> torch.Tensor:
    """`act_quant_values_ref`: x act [..., N] -> fp32 [..., N], in C for CPU tensors."""
    if (lib := native_lib("quant", x)) is not None and quant_native.supports(x, block):
        return quant_native.act_quant_values(lib, x, block)
    return act_quant_values_ref(x, block)


def act_quant_dequant(x: torch.Tensor, block: int = 64) -> torch.Tensor:
    if use_triton(x):
        from .quant_triton import act_quant_dequant_triton

        return act_quant_dequant_triton(x, block)
    if (lib := native_lib("quant", x)) is not None and quant_native.supports(x, block):
        return quant_native.act_quant_dequant(lib, x, block)
    return act_quant_dequant_ref(x, block)


def fp4_act_quant_dequant(x: torch.Tensor, block: int = 32) -> torch.Tensor:
    if use_triton(x):
        from .quant_triton import fp4_act_quant_dequant_triton

        return fp4_act_quant_dequant_triton(x, block)
    if (lib := native_lib("quant", x)) is not None and quant_native.supports(x, block):
        return quant_native.fp4_act_quant_dequant(lib, x, block)
    return fp4_act_quant_dequant_ref(x, block)
