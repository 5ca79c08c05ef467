"""Triton twin of `sparse_attn.py`, and the variant that reads an FP8 KV cache directly.

One program per (query, batch) handles all heads (padded to 16 for tl.dot), walking the
query's index list in blocks of 64: gather the rows (K = V), fp32 scores, online softmax
(running max, exp), P rounded to the activation dtype before P.V (the reference casts P to
bf16 in bf16 mode), fp32 accumulation, and the per-head sink added to the denominator only.
An index of -1 loads zeros and scores -inf; a row of only -1 yields zeros.

FP8 cache layout (`sparse_attn_fp8kv_*`): nope dims e4m3 [B,N,448] with fp32 power-of-two
scales per 64 dims [B,N,7], rope dims bf16 [B,N,64]. Dequantizing e4m3 * 2^k is exact in
bf16, so this equals `sparse_attn_ref` on the KV-simulated cache.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_util import (
    KernelArgumentError,
    check_same_device,
    check_tensor,
    dot_bf16_exact,
    next_pow2,
    round_bf16,
)

_ACT = (torch.bfloat16, torch.float32)
_BLOCK_K = 64
_NOPE, _ROPE, _QBLOCK = 448, 64, 64


@triton.jit
def _gather_kv(kv_ptr, nope_ptr, ks_ptr, rope_ptr, b, N, idx, valid, cols,
               D: tl.constexpr, FP8: tl.constexpr):  # fmt: skip
    """Rows idx of batch b as fp32 [BLOCK_K, DP] (zeros where not valid or cols >= D)."""
    row = b.to(tl.int64) * N + tl.where(valid, idx, 0).to(tl.int64)
    if FP8:
        nope_ok = valid[:, None] & (cols < 448)[None, :]
        q = tl.load(nope_ptr + row[:, None] * 448 + cols[None, :], mask=nope_ok, other=0.0)
        s = tl.load(ks_ptr + row[:, None] * 7 + cols[None, :] // 64, mask=nope_ok, other=0.0)
        rope_ok = valid[:, None] & ((cols >= 448) & (cols < 512))[None, :]
        r = tl.load(rope_ptr + row[:, None] * 64 + (cols - 448)[None, :], mask=rope_ok, other=0.0)
        return tl.where(nope_ok, q.to(tl.float32) * s, r.to(tl.float32))
    ok = valid[:, None] & (cols < D)[None, :]
    return tl.load(kv_ptr + row[:, None] * D + cols[None, :], mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _dot(a, b, BF16: tl.constexpr):
    # In bf16 mode both operands hold bf16 values exactly (loads, e4m3 * 2^k, rounded P), so
    # a bf16 tensor-core dot with fp32 accumulation gives the exact products; fp32 mode keeps
    # IEEE fp32 (no TF32).
    if BF16:
        return dot_bf16_exact(a, b)
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _sparse_attn_kernel(
    q_ptr, kv_ptr, nope_ptr, ks_ptr, rope_ptr, sink_ptr, idx_ptr, o_ptr,
    M, N, H, TOPK, scale,
    D: tl.constexpr, DP: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    FP8: tl.constexpr, ACT_BF16: tl.constexpr,
):  # fmt: skip
    m, b = tl.program_id(0), tl.program_id(1)
    heads = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, DP)
    h_ok = heads < H
    qm = (b.to(tl.int64) * M + m) * H
    q_off = (qm + heads)[:, None] * D + cols[None, :]
    # Operands stay in the activation dtype (half the registers of fp32 in bf16 mode): every
    # value is bf16-exact, so the bf16 dots below see exactly the reference's numbers.
    q = tl.load(q_ptr + q_off, mask=h_ok[:, None] & (cols < D)[None, :], other=0.0)
    run_max = tl.full((BLOCK_H,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_H,), tl.float32)
    acc = tl.zeros((BLOCK_H, DP), tl.float32)
    idx_row = idx_ptr + (b.to(tl.int64) * M + m) * TOPK
    for k0 in range(0, TOPK, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        idx = tl.load(idx_row + ks, mask=ks < TOPK, other=-1)
        valid = idx >= 0
        kv = _gather_kv(kv_ptr, nope_ptr, ks_ptr, rope_ptr, b, N, idx, valid, cols, D, FP8)
        kv = kv.to(q.dtype)  # exact: loaded values, or e4m3 x 2^k
        s = _dot(q, tl.trans(kv), ACT_BF16) * scale
        s = tl.where(valid[None, :], s, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(s, axis=1))
        # While every index so far is -1 the max is -inf; use 0 so exp() gives 0, not NaN.
        safe = tl.where(new_max == float("-inf"), 0.0, new_max)
        alpha = tl.exp(run_max - safe)
        p = tl.exp(s - safe[:, None])
        run_sum = run_sum * alpha + tl.sum(p, axis=1)
        if ACT_BF16:
            p = round_bf16(p)
        acc = acc * alpha[:, None] + _dot(p, kv, ACT_BF16)
        run_max = new_max
    safe = tl.where(run_max == float("-inf"), 0.0, run_max)
    sink = tl.load(sink_ptr + heads, mask=h_ok, other=0.0)
    o = tl.div_rn(acc, (run_sum + tl.exp(sink - safe))[:, None])  # IEEE, as torch divides
    if ACT_BF16:
        o = round_bf16(o)
    tl.store(o_ptr + q_off, o.to(o_ptr.dtype.element_ty), mask=h_ok[:, None] & (cols < D)[None, :])


def _check_common(q: torch.Tensor, attn_sink: torch.Tensor, topk_idxs: torch.Tensor) -> None:
    check_tensor("q", q, _ACT, ndim=4)
    b, m, h, _ = q.shape
    check_tensor("attn_sink", attn_sink, (torch.float32,), shape=(h,))
    check_tensor("topk_idxs", topk_idxs, (torch.int32, torch.int64), shape=(b, m, None))


def _launch(q, kv, fp8_parts, attn_sink, topk_idxs, scale, n_kv):
    b, m, h, d = q.shape
    o = torch.empty_like(q)
    if o.numel() == 0:
        return o
    nope, ks, rope = fp8_parts if fp8_parts else (kv, kv, kv)
    block_h = next_pow2(h)
    _sparse_attn_kernel[(m, b)](
        q.contiguous(), kv, nope, ks, rope, attn_sink.contiguous(),
        topk_idxs.contiguous().to(torch.int32), o, m, n_kv, h, topk_idxs.shape[2], float(scale),
        d, next_pow2(d), block_h, _BLOCK_K, fp8_parts is not None, q.dtype == torch.bfloat16,
        num_warps=8 if block_h * next_pow2(d) >= 8192 else 4,
    )  # fmt: skip
    return o


def sparse_attn_triton(
    q: torch.Tensor,
    kv: torch.Tensor,
    attn_sink: torch.Tensor,
    topk_idxs: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """q act [B,M,H,D], kv act [B,N,D], attn_sink fp32 [H], topk_idxs int32 [B,M,K] (-1 =
    skip) -> act [B,M,H,D]."""
    _check_common(q, attn_sink, topk_idxs)
    b, _, _, d = q.shape
    check_tensor("kv", kv, (q.dtype,), shape=(b, None, d))
    check_same_device(q=q, kv=kv, attn_sink=attn_sink, topk_idxs=topk_idxs)
    return _launch(q, kv.contiguous(), None, attn_sink, topk_idxs, scale, kv.shape[1])


def _check_fp8_cache(q: torch.Tensor, nope: torch.Tensor, scales: torch.Tensor, rope: torch.Tensor):
    b, _, _, d = q.shape
    if d != _NOPE + _ROPE:
        raise KernelArgumentError(f"argument `q`: head dim {d}, the FP8 cache needs 512")
    check_tensor("kv_nope", nope, (torch.float8_e4m3fn,), shape=(b, None, _NOPE))
    n = nope.shape[1]
    check_tensor("kv_scale", scales, (torch.float32,), shape=(b, n, _NOPE // _QBLOCK))
    check_tensor("kv_rope", rope, (torch.bfloat16, torch.float32), shape=(b, n, _ROPE))


def sparse_attn_fp8kv_ref(
    q: torch.Tensor,
    kv_nope: torch.Tensor,
    kv_scale: torch.Tensor,
    kv_rope: torch.Tensor,
    attn_sink: torch.Tensor,
    topk_idxs: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Reference for the FP8 cache: dequantize (exact in bf16) and run `sparse_attn_ref`."""
    from .sparse_attn import sparse_attn_ref

    _check_fp8_cache(q, kv_nope, kv_scale, kv_rope)
    nope = kv_nope.float().unflatten(-1, (-1, _QBLOCK)) * kv_scale.unsqueeze(-1)
    kv = torch.cat([nope.flatten(-2), kv_rope.float()], dim=-1).to(q.dtype)
    return sparse_attn_ref(q, kv, attn_sink, topk_idxs, scale)


def sparse_attn_fp8kv_triton(
    q: torch.Tensor,
    kv_nope: torch.Tensor,
    kv_scale: torch.Tensor,
    kv_rope: torch.Tensor,
    attn_sink: torch.Tensor,
    topk_idxs: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """q act [B,M,H,512] over an FP8 cache: kv_nope e4m3 [B,N,448], kv_scale fp32 [B,N,7],
    kv_rope [B,N,64] -> act [B,M,H,512]."""
    _check_common(q, attn_sink, topk_idxs)
    _check_fp8_cache(q, kv_nope, kv_scale, kv_rope)
    check_same_device(q=q, kv_nope=kv_nope, kv_scale=kv_scale, kv_rope=kv_rope)
    parts = (kv_nope.contiguous(), kv_scale.contiguous(), kv_rope.contiguous())
    return _launch(q, parts[0], parts, attn_sink, topk_idxs, scale, kv_nope.shape[1])
