"""Triton twins of `gemm.py`: block-scaled FP8 x FP8 and FP8 x FP4 GEMMs, bf16 output.

fp8_gemm: each 128-wide K block goes to a fresh fp32 tensor-core accumulator (e4m3 x e4m3
on sm_89+, exact bf16 upcasts before that), is scaled by a_s[m, kb] * b_s[n // 128, kb]
(both powers of two, so the scaling is exact) and added to the running fp32 sum - the
reference's double accumulation, which also bounds the FP8 MMA's reduced-precision
accumulation to 128 products.
fp4_gemm: 128-wide K steps over e2m1 codes decoded and multiplied by their per-32 scales
(exact), one bf16 dot per step (see `fp4_gemm_tile`). The FP4 tile also serves the fused
MoE (`moe_triton.py`): rows gathered through an index list, one expert per row block.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_util import (
    KernelArgumentError,
    check_same_device,
    check_tensor,
    decode_e2m1,
    dot_bf16_exact,
    dot_fp8,
    e8m0_to_fp32,
    fp8_dot_supported,
    round_bf16,
)

_OUT_DTYPES = (torch.bfloat16, torch.float32)


def gemm_tiles(m: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) by the number of rows: decode (few rows) is bound by
    the weight stream, so narrow N tiles give every SM a share of it; prefill uses
    128x128 tiles for tensor-core reuse."""
    if m <= 16:
        return 16, 32, 4
    if m <= 64:
        return 64, 64, 4
    return 128, 128, 8


@triton.jit
def _store_tile(c_ptr, acc, rm, rn, m_ok, n_ok, N, OUT_BF16: tl.constexpr):
    """Write an fp32 accumulator tile to C [M, N] (rounded to bf16 first for bf16 output)."""
    if OUT_BF16:
        acc = round_bf16(acc)
    c = c_ptr + rm.to(tl.int64)[:, None] * N + rn[None, :]
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _fp8_gemm_kernel(
    a_ptr, as_ptr, b_ptr, bs_ptr, c_ptr, M, N, K,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, OUT_BF16: tl.constexpr,
    FP8_DOT: tl.constexpr,
):  # fmt: skip
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, 128)
    m_ok, n_ok = rm < M, rn < N
    n_kb = K // 128
    a_rows = a_ptr + rm.to(tl.int64)[:, None] * K + rk[None, :]
    b_rows = b_ptr + rn.to(tl.int64)[:, None] * K + rk[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(n_kb):
        a = tl.load(a_rows + kb * 128, mask=m_ok[:, None], other=0.0)
        b = tl.load(b_rows + kb * 128, mask=n_ok[:, None], other=0.0)
        blk = dot_fp8(a, tl.trans(b), FP8_DOT)
        sa = tl.load(as_ptr + rm * n_kb + kb, mask=m_ok, other=0.0)
        sb = e8m0_to_fp32(tl.load(bs_ptr + (rn // 128) * n_kb + kb, mask=n_ok, other=0))
        acc += blk * sa[:, None] * sb[None, :]
    _store_tile(c_ptr, acc, rm, rn, m_ok, n_ok, N, OUT_BF16)


def fp8_gemm_triton(
    a: torch.Tensor,
    a_s: torch.Tensor,
    b: torch.Tensor,
    b_s: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """a e4m3 [M,K] (scales a_s fp32 [M,K/128]) x b e4m3 [N,K] (b_s e8m0 [ceil(N/128),
    K/128]) -> [M,N] in out_dtype."""
    check_tensor("a", a, (torch.float8_e4m3fn,), ndim=2)
    m, k = a.shape
    if k % 128:
        raise KernelArgumentError(f"argument `a`: K={k} must be a multiple of 128")
    n = b.shape[0]
    check_tensor("a_s", a_s, (torch.float32,), shape=(m, k // 128))
    check_tensor("b", b, (torch.float8_e4m3fn,), shape=(n, k))
    check_tensor("b_s", b_s, (torch.float8_e8m0fnu,), shape=(triton.cdiv(n, 128), k // 128))
    _check_out(out_dtype)
    check_same_device(a=a, a_s=a_s, b=b, b_s=b_s)
    c = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if m == 0 or n == 0:
        return c
    bm, bn, warps = gemm_tiles(m)
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    _fp8_gemm_kernel[grid](
        a.contiguous(), a_s.contiguous(), b.contiguous(), b_s.contiguous().view(torch.uint8),
        c, m, n, k, bm, bn, out_dtype == torch.bfloat16, fp8_dot_supported(a.device),
        num_warps=warps, num_stages=3,
    )  # fmt: skip
    return c


def _check_out(out_dtype: torch.dtype) -> None:
    if out_dtype not in _OUT_DTYPES:
        raise KernelArgumentError(f"argument `out_dtype`: {out_dtype}, expected {_OUT_DTYPES}")


@triton.jit
def _fp4_weight_slice(b_ptr, bs_ptr, rn, n_ok, k0, K):
    """Rows rn, columns k0..k0+127 of a packed FP4 weight, dequantized: fp32 [BN, 128]. Each
    e2m1 value times its per-32 e8m0 scale is exact in fp32 and in bf16."""
    r64 = rn.to(tl.int64)[:, None]
    packed = tl.load(b_ptr + r64 * (K // 2) + k0 // 2 + tl.arange(0, 64)[None, :],
                     mask=n_ok[:, None], other=0).to(tl.uint8)  # fmt: skip
    lo = decode_e2m1(packed & 0xF)
    hi = decode_e2m1(packed >> 4)
    # Low nibble = even element: join puts lo/hi side by side, the reshape interleaves them.
    vals = tl.reshape(tl.join(lo, hi), (lo.shape[0], 4, 32))
    sb = tl.load(bs_ptr + r64 * (K // 32) + k0 // 32 + tl.arange(0, 4)[None, :],
                 mask=n_ok[:, None], other=0)  # fmt: skip
    return tl.reshape(vals * e8m0_to_fp32(sb)[:, :, None], (lo.shape[0], 128))


@triton.jit
def fp4_gemm_tile(
    a_ptr, as_ptr, a_rows, a_ok, b_ptr, bs_ptr, rn, n_ok, K,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, A_FP8: tl.constexpr,
):  # fmt: skip
    """acc[BLOCK_M, BLOCK_N] = A[a_rows] @ dequant(B[rn])^T over all of K, in fp32.

    A_FP8: A is e4m3 with fp32 scales per 128 (the reference's fp4_gemm). The weight's
    per-32 scales are folded into its values (exact), so each 128-wide K step is one bf16
    tensor-core dot (e4m3 and scaled e2m1 values are bf16-exact: the products are the
    reference's) scaled by the activation scale. bf16 MMAs accumulate in full fp32, where
    FP8 MMAs on Hopper keep fewer bits, and a 128-deep K step needs a quarter of the
    accumulator rescales that per-32 FP8 dots would. Otherwise A is an fp32/bf16
    activation (the MoE without quantization simulation): an IEEE fp32 dot."""
    rk = tl.arange(0, 128)
    a_rows = a_rows.to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    a_base = a_ptr + a_rows[:, None] * K + rk[None, :]
    for k0 in range(0, K, 128):
        w = _fp4_weight_slice(b_ptr, bs_ptr, rn, n_ok, k0, K)
        a = tl.load(a_base + k0, mask=a_ok[:, None], other=0.0).to(tl.float32)
        if A_FP8:
            sa = tl.load(as_ptr + a_rows * (K // 128) + k0 // 128, mask=a_ok, other=0.0)
            acc += dot_bf16_exact(a, tl.trans(w)) * sa[:, None]
        else:
            acc += tl.dot(a, tl.trans(w), input_precision="ieee")
    return acc


@triton.jit
def _fp4_gemm_kernel(
    a_ptr, as_ptr, b_ptr, bs_ptr, c_ptr, M, N, K,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, OUT_BF16: tl.constexpr,
):  # fmt: skip
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = rm < M, rn < N
    acc = fp4_gemm_tile(a_ptr, as_ptr, rm, m_ok, b_ptr, bs_ptr, rn, n_ok, K,
                        BLOCK_M, BLOCK_N, True)  # fmt: skip
    _store_tile(c_ptr, acc, rm, rn, m_ok, n_ok, N, OUT_BF16)


def fp4_gemm_triton(
    a: torch.Tensor,
    a_s: torch.Tensor,
    b: torch.Tensor,
    b_s: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """a e4m3 [M,K] (a_s fp32 [M,K/128]) x b packed e2m1 int8 [N,K/2] (b_s e8m0 [N,K/32])
    -> [M,N] in out_dtype."""
    check_tensor("a", a, (torch.float8_e4m3fn,), ndim=2)
    m, k = a.shape
    if k % 128:
        raise KernelArgumentError(f"argument `a`: K={k} must be a multiple of 128")
    n = b.shape[0]
    check_tensor("a_s", a_s, (torch.float32,), shape=(m, k // 128))
    check_tensor("b", b, (torch.int8, torch.uint8), shape=(n, k // 2))
    check_tensor("b_s", b_s, (torch.float8_e8m0fnu,), shape=(n, k // 32))
    _check_out(out_dtype)
    check_same_device(a=a, a_s=a_s, b=b, b_s=b_s)
    c = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if m == 0 or n == 0:
        return c
    bm, bn, warps = gemm_tiles(m)
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    _fp4_gemm_kernel[grid](
        a.contiguous(), a_s.contiguous(), b.contiguous(), b_s.contiguous().view(torch.uint8),
        c, m, n, k, bm, bn, out_dtype == torch.bfloat16, num_warps=warps, num_stages=3,
    )  # fmt: skip
    return c
