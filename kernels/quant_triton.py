"""Triton twins of `quant.py`: FP8 (e4m3, ue8m0 scales) and FP4 (e2m1) activation quantization.

Each program handles a [BLOCK_M rows x one scale block] tile, so the per-block amax is a
single row reduction. Rounding goes through `triton_util` so codes are bit-exact on GPUs
and under the interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_util import (
    KernelArgumentError,
    check_tensor,
    pow2_ceil,
    pow2_recip,
    round_bf16,
    round_e2m1,
    round_e4m3,
)

_ACT_DTYPES = (torch.bfloat16, torch.float32)
# Rows per program: enough work per program on a GPU, few programs for the interpreter.
_BLOCK_M = 32


@triton.jit
def _load_tile(x_ptr, rows, n_rows, n_cols, col0, BLOCK: tl.constexpr, BLOCK_M: tl.constexpr):
    cols = col0 + tl.arange(0, BLOCK)
    mask = (rows < n_rows)[:, None]
    offs = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
    return tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32), offs, mask


@triton.jit
def _fp8_scale(x):
    # Spec: s = pow2ceil(max(amax, 1e-4) * fp32(1/448)), per row of the tile.
    amax = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-4)
    return pow2_ceil(amax * (1.0 / 448.0))


@triton.jit
def _act_quant_kernel(
    x_ptr, q_ptr, s_ptr, n_rows, n_cols, BLOCK: tl.constexpr, BLOCK_M: tl.constexpr
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    kb = tl.program_id(1)
    x, offs, mask = _load_tile(x_ptr, rows, n_rows, n_cols, kb * BLOCK, BLOCK, BLOCK_M)
    s = _fp8_scale(x)
    # x / s with s a power of two is exact: a multiply by the exact reciprocal gives it.
    q = round_e4m3(tl.clamp(x * pow2_recip(s)[:, None], -448.0, 448.0))
    tl.store(q_ptr + offs, q.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(s_ptr + rows.to(tl.int64) * (n_cols // BLOCK) + kb, s, mask=rows < n_rows)


@triton.jit
def _act_quant_dequant_kernel(
    x_ptr, y_ptr, n_rows, n_cols, BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, OUT_BF16: tl.constexpr
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    x, offs, mask = _load_tile(
        x_ptr, rows, n_rows, n_cols, tl.program_id(1) * BLOCK, BLOCK, BLOCK_M
    )
    s = _fp8_scale(x)
    y = round_e4m3(tl.clamp(x * pow2_recip(s)[:, None], -448.0, 448.0)) * s[:, None]
    if OUT_BF16:
        y = round_bf16(y)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fp4_act_quant_dequant_kernel(
    x_ptr, y_ptr, n_rows, n_cols, BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, OUT_BF16: tl.constexpr
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    x, offs, mask = _load_tile(
        x_ptr, rows, n_rows, n_cols, tl.program_id(1) * BLOCK, BLOCK, BLOCK_M
    )
    # Spec §6.3: amax floor 6 * 2^-126, s = pow2ceil(amax / 6).
    amax = tl.maximum(tl.max(tl.abs(x), axis=1), 6.0 * 1.1754943508222875e-38)
    # IEEE division (GPU `/` is within 2 ulp): amax/6 landing one ulp above a power of two
    # would double the scale.
    s = pow2_ceil(tl.div_rn(amax, 6.0))
    y = round_e2m1(tl.clamp(x * pow2_recip(s)[:, None], -6.0, 6.0)) * s[:, None]
    if OUT_BF16:
        y = round_bf16(y)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def _rows_view(x: torch.Tensor, block: int, name: str = "x") -> torch.Tensor:
    check_tensor(name, x, _ACT_DTYPES)
    if x.dim() == 0 or x.shape[-1] % block != 0:
        raise KernelArgumentError(
            f"argument `{name}`: last dim of {tuple(x.shape)} must be a multiple of block={block}"
        )
    if block & (block - 1) or block < 16:
        raise KernelArgumentError(f"argument `block`: {block} is not a power of two >= 16")
    return x.reshape(-1, x.shape[-1]).contiguous()


def _grid(x2: torch.Tensor, block: int) -> tuple[int, int]:
    return (triton.cdiv(x2.shape[0], _BLOCK_M), x2.shape[1] // block)


def act_quant_triton(x: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """x act [..., N] -> (q float8_e4m3fn [..., N], s fp32 [..., N // block]), pow2 scales."""
    x2 = _rows_view(x, block)
    q = torch.empty(x2.shape, dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty((x2.shape[0], x2.shape[1] // block), dtype=torch.float32, device=x.device)
    if x2.numel():
        _act_quant_kernel[_grid(x2, block)](x2, q, s, x2.shape[0], x2.shape[1], block, _BLOCK_M)
    return q.view(x.shape), s.view(*x.shape[:-1], x.shape[-1] // block)


def act_quant_dequant_triton(x: torch.Tensor, block: int = 64) -> torch.Tensor:
    """The KV FP8 round trip: `(e4m3(clamp(x / s)) * s).to(x.dtype)`, per `block` columns."""
    x2 = _rows_view(x, block)
    y = torch.empty_like(x2)
    if x2.numel():
        _act_quant_dequant_kernel[_grid(x2, block)](
            x2, y, x2.shape[0], x2.shape[1], block, _BLOCK_M, x.dtype == torch.bfloat16
        )
    return y.view(x.shape)


def fp4_act_quant_dequant_triton(x: torch.Tensor, block: int = 32) -> torch.Tensor:
    """The indexer FP4 simulation: `(e2m1(clamp(x / s, ±6)) * s).to(x.dtype)` per block."""
    x2 = _rows_view(x, block)
    y = torch.empty_like(x2)
    if x2.numel():
        _fp4_act_quant_dequant_kernel[_grid(x2, block)](
            x2, y, x2.shape[0], x2.shape[1], block, _BLOCK_M, x.dtype == torch.bfloat16
        )
    return y.view(x.shape)
