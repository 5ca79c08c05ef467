"""Block-scaled FP8 and FP4 GEMMs (SPEC §8): `C = A·Bᵀ` with FP8 activations.

REF's kernels multiply FP8 (or FP4 promoted to FP8) tiles on tensor cores, scale each K
block's fp32 partial sum by `a_s·b_s` and add it to an fp32 accumulator. Every operand value
times its power-of-two scale is exact in fp32, so the references below dequantize both
operands exactly and run one fp32 matmul: the result differs from REF's blockwise sum only in
the summation order (a few fp32 ulps), which tensor cores do not fix either.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .dispatch import use_triton
from .formats import FP4_BLOCK, FP8_BLOCK, dequantize_fp8_weight, e8m0_to_fp32

_ACT_BLOCK = 128  # activation scales: one per 128 inputs
_SLAB_BYTES = 1 << 21  # fp32 slab size: cache-resident, few Python steps per weight
_E4M3_AS_F16 = 2.0**8  # an e4m3 byte shifted into fp16 bits is its value times 2^-8
_E2M1_AS_F16 = 2.0**14  # an e2m1 code shifted into fp16 bits is its value times 2^-14


def _e4m3_to_fp32(b: torch.Tensor) -> torch.Tensor:
    """e4m3 values as fp32, divided by 2^8 (exact; NaN bytes are not expected in weights).

    The byte shifted left by 7 inside an int16 is an fp16 number with the same sign, mantissa
    and exponent (bias 15 instead of 7, subnormals included): sign-extending the byte and
    clearing bit 14 puts the sign in bit 15. fp16 -> fp32 is a fast vectorized cast, where
    torch's own float8 cast runs element by element on CPUs.
    """
    bits = (b.view(torch.int8).to(torch.int16) << 7) & ~0x4000
    return bits.view(torch.float16).float()


def _e2m1_to_fp32(b: torch.Tensor) -> torch.Tensor:
    """Packed FP4 int8 [..., n/2] -> values / 2^14 as fp32 [..., n] (low nibble = even element).

    A code's 3 magnitude bits shifted left by 9 form the fp16 number value·2^-14 (code 1 is
    the subnormal 0.5·2^-14); bit 3 is the sign.
    """
    u = b.view(torch.uint8)
    codes = torch.stack((u & 0xF, u >> 4), dim=-1).flatten(-2).to(torch.int16)
    bits = ((codes & 8) << 12) | ((codes & 7) << 9)
    return bits.view(torch.float16).float()


def dequantize_fp8(b: torch.Tensor, b_s: torch.Tensor) -> torch.Tensor:
    """FP8 weight [N, K] with e8m0 [⌈N/128⌉, ⌈K/128⌉] block scales -> exact fp32 [N, K]
    (the values of `formats.dequantize_fp8_weight`, computed faster)."""
    return fp8_rows(b, b_s, 0, b.shape[0])


def fp8_rows(b: torch.Tensor, b_s: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Rows lo:hi of an FP8 weight [N, K] (lo a multiple of 128), dequantized exactly to fp32."""
    k, n = b.shape[1], hi - lo
    if k % FP8_BLOCK or lo % FP8_BLOCK:
        return dequantize_fp8_weight(b, b_s)[lo:hi]
    blocks = -(-n // FP8_BLOCK)
    scale = e8m0_to_fp32(b_s[lo // FP8_BLOCK : lo // FP8_BLOCK + blocks]) * _E4M3_AS_F16
    vals = _e4m3_to_fp32(b[lo:hi])
    if n % FP8_BLOCK:  # a ragged last block: expand its scales row by row
        rows = torch.arange(n, device=b.device) // FP8_BLOCK
        return (vals.view(n, -1, FP8_BLOCK) * scale[rows].unsqueeze(-1)).view(n, k)
    vals = vals.view(blocks, FP8_BLOCK, k // FP8_BLOCK, FP8_BLOCK)
    return (vals * scale[:, None, :, None]).view(n, k)


def dequantize_fp4(b: torch.Tensor, b_s: torch.Tensor) -> torch.Tensor:
    """Packed FP4 [..., N, K/2] (low nibble = even element) with e8m0 [..., N, K/32]
    -> exact fp32 [..., N, K]."""
    k = 2 * b.shape[-1]
    s = (e8m0_to_fp32(b_s) * _E2M1_AS_F16).unsqueeze(-1)  # [..., N, K/32, 1]
    vals = _e2m1_to_fp32(b).view(*b.shape[:-1], k // FP4_BLOCK, FP4_BLOCK)
    return (vals * s).view(*b.shape[:-1], k)


def slab_matmul(
    a: torch.Tensor, n: int, rows: Callable[[int, int], torch.Tensor], align: int = FP8_BLOCK
) -> torch.Tensor:
    """a fp32 [M, K] @ Wᵀ -> fp32 [M, N], where `rows(lo, hi)` gives W[lo:hi] in fp32.

    The weight is dequantized one small slab of rows at a time, so the fp32 copy stays in
    cache instead of going through memory (decode is bound by weight traffic, and this keeps
    it at the stored size).
    """
    k = a.shape[-1]
    step = max(align, (_SLAB_BYTES // (4 * k)) // align * align)
    if step >= n:
        return a @ rows(0, n).T
    out = a.new_empty(a.shape[0], n)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        torch.matmul(a, rows(lo, hi).T, out=out[:, lo:hi])
    return out


def _dequantize_act(a: torch.Tensor, a_s: torch.Tensor) -> torch.Tensor:
    """float8_e4m3fn [M, K] with fp32 [M, K//128] scales -> fp32 [M, K] (exact)."""
    m, k = a.shape
    if a_s.shape != (m, k // _ACT_BLOCK):
        raise ValueError(f"activation scales {tuple(a_s.shape)}, expected {(m, k // _ACT_BLOCK)}")
    vals = _e4m3_to_fp32(a).view(m, -1, _ACT_BLOCK)
    return (vals * (a_s.float() * _E4M3_AS_F16).unsqueeze(-1)).view(m, k)


def fp8_gemm_ref(
    a: torch.Tensor,
    a_s: torch.Tensor,
    b: torch.Tensor,
    b_s: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """a e4m3 [M,K], a_s fp32 [M,K//128], b e4m3 [N,K], b_s e8m0 [ceil(N/128), K//128] -> [M,N]."""
    n, k = b.shape
    want = (-(-n // FP8_BLOCK), -(-k // FP8_BLOCK))
    if tuple(b_s.shape) != want:
        raise ValueError(f"weight scales {tuple(b_s.shape)}, expected {want}")
    out = slab_matmul(_dequantize_act(a, a_s), n, lambda lo, hi: fp8_rows(b, b_s, lo, hi))
    return out.to(out_dtype)


def fp4_gemm_ref(
    a: torch.Tensor,
    a_s: torch.Tensor,
    b: torch.Tensor,
    b_s: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """a e4m3 [M,K], a_s fp32 [M,K//128], b int8 [N,K//2] (FP4 pairs), b_s e8m0 [N,K//32]
    -> [M,N] in out_dtype."""
    n, half = b.shape
    if tuple(b_s.shape) != (n, 2 * half // FP4_BLOCK):
        raise ValueError(f"weight scales {tuple(b_s.shape)}, expected {(n, 2 * half // FP4_BLOCK)}")
    out = slab_matmul(
        _dequantize_act(a, a_s), n, lambda lo, hi: dequantize_fp4(b[lo:hi], b_s[lo:hi])
    )
    return out.to(out_dtype)


def fp8_gemm(a, a_s, b, b_s, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    if use_triton(a, a_s, b, b_s):
        from .gemm_triton import fp8_gemm_triton

        return fp8_gemm_triton(a, a_s, b, b_s, out_dtype)
    return fp8_gemm_ref(a, a_s, b, b_s, out_dtype)


def fp4_gemm(a, a_s, b, b_s, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    if use_triton(a, a_s, b, b_s):
        from .gemm_triton import fp4_gemm_triton

        return fp4_gemm_triton(a, a_s, b, b_s, out_dtype)
    return fp4_gemm_ref(a, a_s, b, b_s, out_dtype)
