"""Block-scaled FP8 and FP4 GEMMs (SPEC §8): `C = A·Bᵀ` with FP8 activations.

REF's kernels multiply FP8 (or FP4 promoted to FP8) tiles on tensor cores, scale each K
block's fp32 partial sum by `a_s·b_s` and add it to an fp32 accumulator. Every operand value
times its power-of-two scale is exact in fp32, so the references below dequantize both
operands exactly and run one fp32 matmul: the result differs from REF's blockwise sum only in
the summation order (a few fp32 ulps), which tensor cores do not fix either.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from .dispatch import use_triton
from .formats import FP4_BLOCK, FP8_BLOCK, dequantize_fp8_weight, e2m1_decode, e8m0_to_fp32
from .formats import e4m3_to_fp32_div256 as _e4m3_to_fp32

_ACT_BLOCK = 128  # activation scales: one per 128 inputs
_SLAB_BYTES = 1 << 21  # fp32 slab size: cache-resident, few Python steps per weight
_WIDE_SLAB_BYTES = 1 << 23  # with many rows the GEMM itself dominates: fewer, larger calls
# bf16 -> fp32 head slabs for a few rows: the upcast dominates, and it runs fastest when the
# fp32 slab and its bf16 source both stay in L2 (1-row 129280 x 512 head, one thread:
# 1 MiB ~28 ms, 2 MiB ~34 ms, 16 MiB ~37 ms; fewer, larger slabs are slower, not faster).
_HEAD_SLAB_BYTES = 1 << 20
# From this many rows on, a GEMM with bf16 products beats the fp32 one (measured on AMX and
# AVX512-BF16 CPUs); below it the weight conversion dominates and fp32 is as fast.
BF16_MIN_ROWS = 16
_E4M3_AS_F16 = 2.0**8  # `_e4m3_to_fp32` gives an e4m3 byte's value times 2^-8


def _e2m1_to_fp32(b: torch.Tensor) -> torch.Tensor:
    """Packed FP4 int8 [..., n/2] -> exact values fp32 [..., n] (low nibble = even element):
    one lookup per byte in a table of its two fp32 values (a table of fp16 pairs would need a
    second pass to widen them, and torch's fp16 -> fp32 copy is slow on CPUs)."""
    idx = b.view(torch.uint8).reshape(-1).to(torch.int32)
    pairs = _e2m1_pair_table(b.device).index_select(0, idx)
    return pairs.view(torch.float32).view(*b.shape[:-1], 2 * b.shape[-1])


@functools.lru_cache(maxsize=8)
def _e2m1_pair_table(device: torch.device) -> torch.Tensor:
    """int64 [256]: the fp32 bits of a byte's two e2m1 values, the low nibble's first."""
    codes = torch.arange(256)
    pairs = torch.stack((e2m1_decode(codes & 0xF), e2m1_decode(codes >> 4)), dim=-1)
    return pairs.contiguous().view(torch.int64).reshape(256).to(device)


def block_scales_fp32(b_s: torch.Tensor) -> torch.Tensor:
    """Weight block scales as fp32: e8m0 bytes decoded, fp32 (already decoded) as they are.

    The torch references take either, so a caller that keeps the decoded scales from load
    skips the decode (a handful of ops) on every call; the values are the same.
    """
    return b_s if b_s.dtype == torch.float32 else e8m0_to_fp32(b_s)


def dequantize_fp8(b: torch.Tensor, b_s: torch.Tensor) -> torch.Tensor:
    """FP8 weight [N, K] with e8m0 [⌈N/128⌉, ⌈K/128⌉] block scales -> exact fp32 [N, K]
    (the values of `formats.dequantize_fp8_weight`, computed faster)."""
    return fp8_rows(b, b_s, 0, b.shape[0])


def fp8_rows(b: torch.Tensor, b_s: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Rows lo:hi of an FP8 weight [N, K] (lo a multiple of 128), dequantized exactly to fp32."""
    k, n = b.shape[1], hi - lo
    if k % FP8_BLOCK or lo % FP8_BLOCK:
        return _fp8_rows_any(b, b_s)[lo:hi]
    blocks = -(-n // FP8_BLOCK)
    scale = block_scales_fp32(b_s[lo // FP8_BLOCK : lo // FP8_BLOCK + blocks]) * _E4M3_AS_F16
    vals = _e4m3_to_fp32(b[lo:hi])
    if n % FP8_BLOCK:  # a ragged last block: expand its scales row by row
        rows = torch.arange(n, device=b.device) // FP8_BLOCK
        return (vals.view(n, -1, FP8_BLOCK) * scale[rows].unsqueeze(-1)).view(n, k)
    vals = vals.view(blocks, FP8_BLOCK, k // FP8_BLOCK, FP8_BLOCK)
    return (vals * scale[:, None, :, None]).view(n, k)


def _fp8_rows_any(b: torch.Tensor, b_s: torch.Tensor) -> torch.Tensor:
    """Any FP8 weight shape (ragged K): the plain dequantization, with e8m0 or fp32 scales."""
    if b_s.dtype != torch.float32:
        return dequantize_fp8_weight(b, b_s)
    n, k = b.shape
    scale = b_s.repeat_interleave(FP8_BLOCK, 0)[:n].repeat_interleave(FP8_BLOCK, 1)[:, :k]
    return b.float() * scale


def fp8_matmul(a: torch.Tensor, b: torch.Tensor, b_s: torch.Tensor, bf16_exact: bool = False):
    """a fp32 [M, K] @ Wᵀ -> fp32 [M, N] for the FP8 weight W = b [N, K] with e8m0 block
    scales b_s [⌈N/128⌉, ⌈K/128⌉]; `bf16_exact` as in `slab_matmul`.

    For a few rows (decode) the block scales go into the activation instead of the weight:
    row block r of the output is (a · s[r] per K block) @ e4m3(W[r])ᵀ, so the weight is never
    scaled, and each product is the same exact a·w·s (power-of-two scales).
    """
    (m, k), n = a.shape, b.shape[0]
    if m >= BF16_MIN_ROWS or n % FP8_BLOCK or k % FP8_BLOCK:
        return slab_matmul(a, n, lambda lo, hi: fp8_rows(b, b_s, lo, hi), bf16_exact=bf16_exact)
    nb, kb = n // FP8_BLOCK, k // FP8_BLOCK
    s = block_scales_fp32(b_s) * _E4M3_AS_F16  # [nb, kb]; never in place: b_s may be kept
    xs = (a.view(1, m, kb, FP8_BLOCK) * s.view(nb, 1, kb, 1)).view(nb, m, k)
    w = _e4m3_to_fp32(b).view(nb, FP8_BLOCK, k)
    return torch.bmm(xs, w.transpose(1, 2)).transpose(0, 1).reshape(m, n)


def dequantize_fp4(b: torch.Tensor, b_s: torch.Tensor) -> torch.Tensor:
    """Packed FP4 [..., N, K/2] (low nibble = even element) with e8m0 [..., N, K/32]
    -> exact fp32 [..., N, K]."""
    k = 2 * b.shape[-1]
    vals = _e2m1_to_fp32(b).view(*b.shape[:-1], k // FP4_BLOCK, FP4_BLOCK)
    return vals.mul_(block_scales_fp32(b_s).unsqueeze(-1)).view(*b.shape[:-1], k)


@contextmanager
def bf16_products(on: bool = True) -> Iterator[None]:
    """Within the block, CPU fp32 matmuls multiply in bf16 (oneDNN's bf16 math mode): each
    operand is rounded to bf16, products are exact and accumulate in fp32, output is fp32.

    Lossless, so the same arithmetic as an fp32 GEMM up to summation order, when every operand
    value is a bf16 value: bf16 activations and weights, FP8/FP4 values times power-of-two
    scales. Callers pass `on` only for such operands. The mode is a process-wide setting,
    restored on exit; the engine runs one forward pass at a time. Torch builds without the
    setting (before 2.9) keep plain fp32 GEMMs: the same results, slower.
    """
    knob = getattr(torch.backends.mkldnn, "matmul", None)
    if not on or knob is None or knob.fp32_precision == "bf16":
        yield
        return
    old, knob.fp32_precision = knob.fp32_precision, "bf16"
    try:
        yield
    finally:
        knob.fp32_precision = old


def slab_matmul(
    a: torch.Tensor,
    n: int,
    rows: Callable[[int, int], torch.Tensor],
    align: int = FP8_BLOCK,
    bf16_exact: bool = False,
) -> torch.Tensor:
    """a fp32 [M, K] @ Wᵀ -> fp32 [M, N], where `rows(lo, hi)` gives W[lo:hi] in fp32.

    The weight is dequantized one small slab of rows at a time, so the fp32 copy stays in
    cache instead of going through memory (decode is bound by weight traffic, and this keeps
    it at the stored size). `bf16_exact`: every value of `a` and W is a bf16 value, so
    from `BF16_MIN_ROWS` rows on the products run in bf16 (`bf16_products`).
    """
    m, k = a.shape
    wide = m >= BF16_MIN_ROWS
    slab = _WIDE_SLAB_BYTES if wide else _SLAB_BYTES
    step = max(align, (slab // (4 * k)) // align * align)
    with bf16_products(bf16_exact and wide):
        if step >= n:
            return a @ rows(0, n).T
        out = a.new_empty(m, n)
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            torch.matmul(a, rows(lo, hi).T, out=out[:, lo:hi])
    return out


def kept_matmul(a: torch.Tensor, w: torch.Tensor, bf16_exact: bool = False) -> torch.Tensor:
    """a fp32 [M, K] @ wᵀ -> fp32 [M, N] for a weight kept dequantized in fp32 [N, K].

    The same GEMM calls as `fp8_matmul` / `slab_matmul` on weights dequantized per call, minus
    the dequantization: the products and fp32 sums are those of the stored values (checked
    bit for bit in the tests). `bf16_exact` as in `slab_matmul`.
    """
    with bf16_products(bf16_exact and a.shape[0] >= BF16_MIN_ROWS):
        return a @ w.T


def bf16_matmul_fp32(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x bf16 [M, K] @ w bf16 [N, K]ᵀ -> fp32 [M, N]: exact products, fp32 accumulation.

    REF's fp32 GEMM of bf16 operands (its head). Torch's CPU bf16 GEMM rounds its output to
    bf16, so w is upcast slab by slab into one reused fp32 buffer (no allocation per slab)
    and multiplied there; many rows multiply in bf16, which is lossless for these operands.
    """
    m, k = x.shape
    n, wide = w.shape[0], m >= BF16_MIN_ROWS
    step = min(n, max(1, (_WIDE_SLAB_BYTES if wide else _HEAD_SLAB_BYTES) // (4 * k)))
    xf, buf = x.float(), x.new_empty(step, k, dtype=torch.float32)
    out = x.new_empty(m, n, dtype=torch.float32)
    # All slab views made up front (`split`): the loop then runs two ops per slab, which
    # matters for the 1-row head (250 slabs per token).
    slabs = {step: (buf, buf.T), n % step: (buf[: n % step], buf[: n % step].T)}
    with bf16_products(wide):
        for src, dst in zip(w.split(step), out.split(step, dim=1), strict=True):
            rows, cols = slabs[src.shape[0]]
            rows.copy_(src)
            torch.mm(xf, cols, out=dst)
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
    """a e4m3 [M,K], a_s fp32 [M,K//128], b e4m3 [N,K], b_s e8m0 [ceil(N/128), K//128] -> [M,N].

    b_s may also be the scales already decoded to fp32 (`block_scales_fp32`)."""
    n, k = b.shape
    want = (-(-n // FP8_BLOCK), -(-k // FP8_BLOCK))
    if tuple(b_s.shape) != want:
        raise ValueError(f"weight scales {tuple(b_s.shape)}, expected {want}")
    # e4m3 / e2m1 values times power-of-two scales are bf16 values: bf16 products are exact
    out = fp8_matmul(_dequantize_act(a, a_s), b, b_s, bf16_exact=True)
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
    rows = lambda lo, hi: dequantize_fp4(b[lo:hi], b_s[lo:hi])  # noqa: E731
    out = slab_matmul(_dequantize_act(a, a_s), n, rows, bf16_exact=True)
    return out.to(out_dtype)


def fp8_gemm(a, a_s, b, b_s, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    if use_triton(a, a_s, b, b_s):
        from .gemm_triton import fp8_gemm_triton

        return fp8_gemm_triton(a, a_s, b, b_s, out_dtype)
    return fp8_gemm_ref(a, a_s, b, b_s, out_dtype)


def fp8_gemm_kept(
    a: torch.Tensor,
    a_s: torch.Tensor,
    b: torch.Tensor,
    b_s: torch.Tensor,
    b_s_fp32: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """`fp8_gemm` for a weight whose scales were also decoded at load (`b_s_fp32`): the Triton
    kernel reads the e8m0 bytes, the torch reference the fp32 copy (no decode per call)."""
    if use_triton(a, a_s, b, b_s):
        from .gemm_triton import fp8_gemm_triton

        return fp8_gemm_triton(a, a_s, b, b_s, out_dtype)
    return fp8_gemm_ref(a, a_s, b, b_s_fp32, out_dtype)


def fp4_gemm(a, a_s, b, b_s, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    if use_triton(a, a_s, b, b_s):
        from .gemm_triton import fp4_gemm_triton

        return fp4_gemm_triton(a, a_s, b, b_s, out_dtype)
    return fp4_gemm_ref(a, a_s, b, b_s, out_dtype)
