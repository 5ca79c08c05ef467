"""Triton twin of `indexer.py`: Lightning-indexer scores Σ_h w[t,h]·relu(q[t,h]·k[j]) and
causal top-k selection, separately and fused.

Scores: one program per (query block, key block, batch) loops over the heads, so the [H, N]
score tensor of the reference is never materialized. Precision follows the reference in bf16
mode: each q·k dot (fp32 accumulation) is rounded to bf16, relu, the product with w is
rounded to bf16, the head sum accumulates in fp32 and is rounded once.

Top-k: each (score, entry j) becomes one int64 key, the score's order-preserving integer in
the high word and `2^32-1-j` in the low word, so descending key order is the reference's
stable descending sort (ties go to the LOWER index) and every key is distinct. A program
keeps the best KP keys of BLOCK_M queries sorted in registers and folds in KP-wide tiles of
keys: sort the tile ascending, take the element-wise max with the running list (a bitonic
half-cleaner: exactly the top KP of both), sort that descending. Tiles past the last visible
entry of the block are skipped (causal). The fused kernel computes each score tile in
registers instead of loading it, so the [M, N] scores never reach memory either.

Decode has one query block per sequence, which would leave all but one SM idle, so the entry
scan can be split: each of S programs keeps the top KP of its slice and writes the sorted
keys out, and a second pass merges the S lists per query (keys are unique, so the merge
order cannot change the result).
"""

from __future__ import annotations

from dataclasses import dataclass

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
_POS = (torch.int64, torch.int32)
_BLOCK_M, _BLOCK_N = 16, 64


@triton.jit
def _score_tile(q_ptr, w_ptr, k, b, rm, m_ok, M, H, cols, d_ok,
                D: tl.constexpr, BLOCK_M: tl.constexpr, BF16: tl.constexpr):  # fmt: skip
    """Scores of queries rm against the loaded key tile k [BLOCK_N, DP], as the reference
    stores them (rounded to bf16 in bf16 mode), in fp32 [BLOCK_M, BLOCK_N]."""
    acc = tl.zeros((BLOCK_M, k.shape[0]), tl.float32)
    for h in range(H):
        qh = (b * M + rm) * H + h
        q = tl.load(q_ptr + qh[:, None] * D + cols[None, :],
                    mask=m_ok[:, None] & d_ok[None, :], other=0.0)  # fmt: skip
        w = tl.load(w_ptr + qh, mask=m_ok, other=0.0).to(tl.float32)
        if BF16:
            s = round_bf16(dot_bf16_exact(q, tl.trans(k)))
            acc += round_bf16(tl.maximum(s, 0.0) * w[:, None])
        else:
            s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
            acc += tl.maximum(s, 0.0) * w[:, None]
    if BF16:
        acc = round_bf16(acc)
    return acc


@triton.jit
def _load_keys(k_ptr, b, rn, n_ok, cols, d_ok, N, D: tl.constexpr):
    return tl.load(k_ptr + (b * N + rn)[:, None] * D + cols[None, :],
                   mask=n_ok[:, None] & d_ok[None, :], other=0.0)  # fmt: skip


@triton.jit
def _index_scores_kernel(
    q_ptr, k_ptr, w_ptr, o_ptr, M, N, H,
    D: tl.constexpr, DP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BF16: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(2).to(tl.int64)
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, DP)
    m_ok, n_ok, d_ok = rm < M, rn < N, cols < D
    k = _load_keys(k_ptr, b, rn, n_ok, cols, d_ok, N, D)
    acc = _score_tile(q_ptr, w_ptr, k, b, rm, m_ok, M, H, cols, d_ok, D, BLOCK_M, BF16)
    out = o_ptr + (b * M + rm)[:, None] * N + rn[None, :]
    tl.store(out, acc.to(o_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _keys(vals, rn, n_ok, limit):
    """fp32 scores [BM, KP] of entries rn -> int64 keys ordered (score desc, index asc);
    entries not visible (rn >= limit) score -inf, padding columns get the empty key."""
    v = tl.where(rn[None, :] < limit[:, None], vals, float("-inf"))
    v = tl.where(v == 0.0, 0.0, v)  # -0.0 ties with +0.0, as in torch.sort
    i = v.to(tl.int32, bitcast=True)
    i = i ^ ((i >> 31) & 0x7FFFFFFF)  # IEEE order -> two's complement order
    low = 4294967295 - rn.to(tl.int64)
    key = (i.to(tl.int64) << 32) | low[None, :]
    return tl.where(n_ok[None, :], key, -9223372036854775808)


@triton.jit
def _merge(best, keys):
    """best [BM, KP] sorted descending + keys [BM, KP] -> the KP largest, sorted descending."""
    return tl.sort(tl.maximum(best, tl.sort(keys, dim=1)), dim=1, descending=True)


@triton.jit
def _block_limits(pos_ptr, rm, m_ok, N, ratio):
    """Visible entries per query (j < (pos+1)//ratio) and the block's scan end."""
    pos = tl.load(pos_ptr + rm, mask=m_ok, other=0).to(tl.int64)
    limit = tl.where(m_ok, (pos + 1) // ratio, 0)
    return limit, tl.minimum(tl.max(limit, axis=0), N)


@triton.jit
def _store_topk(o_ptr, best, b, rm, m_ok, limit, M, K_OUT, KP: tl.constexpr):
    j = 4294967295 - (best & 4294967295)
    idx = tl.where(j < limit[:, None], j, -1).to(tl.int32)
    slots = tl.arange(0, KP)
    out = o_ptr + (b * M + rm)[:, None] * K_OUT + slots[None, :]
    tl.store(out, idx, mask=m_ok[:, None] & (slots < K_OUT)[None, :])


@triton.jit
def _finish(o_ptr, cand_ptr, best, b, rm, m_ok, limit, M, K_OUT, S,
            KP: tl.constexpr, SPLIT: tl.constexpr):  # fmt: skip
    """Store the indices, or with a split scan this split's sorted candidate keys."""
    if SPLIT:
        slots = tl.arange(0, KP)
        row = ((b * M + rm) * S + tl.program_id(2))[:, None] * KP
        tl.store(cand_ptr + row + slots[None, :], best, mask=m_ok[:, None])
    else:
        _store_topk(o_ptr, best, b, rm, m_ok, limit, M, K_OUT, KP)


@triton.jit
def _index_topk_kernel(
    s_ptr, pos_ptr, o_ptr, cand_ptr, M, N, ratio, K_OUT, S, SPLIT_LEN,
    KP: tl.constexpr, BLOCK_M: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(1).to(tl.int64)
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = rm < M
    limit, n_end = _block_limits(pos_ptr, rm, m_ok, N, ratio)
    lo = tl.program_id(2) * SPLIT_LEN
    best = tl.full((BLOCK_M, KP), -9223372036854775808, tl.int64)
    for n0 in range(lo, tl.minimum(lo + SPLIT_LEN, n_end), KP):
        rn = n0 + tl.arange(0, KP)
        n_ok = rn < N
        vals = tl.load(s_ptr + (b * M + rm)[:, None] * N + rn[None, :],
                       mask=m_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)  # fmt: skip
        best = _merge(best, _keys(vals, rn, n_ok, limit))
    _finish(o_ptr, cand_ptr, best, b, rm, m_ok, limit, M, K_OUT, S, KP, SPLIT)


@triton.jit
def _index_score_topk_kernel(
    q_ptr, k_ptr, w_ptr, pos_ptr, o_ptr, cand_ptr, M, N, H, ratio, K_OUT, S, SPLIT_LEN,
    D: tl.constexpr, DP: tl.constexpr, KP: tl.constexpr, BLOCK_M: tl.constexpr,
    BF16: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(1).to(tl.int64)
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, DP)
    m_ok, d_ok = rm < M, cols < D
    limit, n_end = _block_limits(pos_ptr, rm, m_ok, N, ratio)
    lo = tl.program_id(2) * SPLIT_LEN
    best = tl.full((BLOCK_M, KP), -9223372036854775808, tl.int64)
    for n0 in range(lo, tl.minimum(lo + SPLIT_LEN, n_end), KP):
        rn = n0 + tl.arange(0, KP)
        n_ok = rn < N
        k = _load_keys(k_ptr, b, rn, n_ok, cols, d_ok, N, D)
        vals = _score_tile(q_ptr, w_ptr, k, b, rm, m_ok, M, H, cols, d_ok, D, BLOCK_M, BF16)
        best = _merge(best, _keys(vals, rn, n_ok, limit))
    _finish(o_ptr, cand_ptr, best, b, rm, m_ok, limit, M, K_OUT, S, KP, SPLIT)


@triton.jit
def _merge_splits_kernel(cand_ptr, pos_ptr, o_ptr, M, N, ratio, K_OUT, S,
                         KP: tl.constexpr, BLOCK_M: tl.constexpr):  # fmt: skip
    """Second pass of a split scan: merge each row's S candidate lists."""
    b = tl.program_id(1).to(tl.int64)
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = rm < M
    limit, _ = _block_limits(pos_ptr, rm, m_ok, N, ratio)
    slots = tl.arange(0, KP)
    best = tl.full((BLOCK_M, KP), -9223372036854775808, tl.int64)
    for s in range(S):
        row = ((b * M + rm) * S + s)[:, None] * KP
        keys = tl.load(cand_ptr + row + slots[None, :], mask=m_ok[:, None],
                       other=-9223372036854775808)  # fmt: skip
        best = _merge(best, keys)
    _store_topk(o_ptr, best, b, rm, m_ok, limit, M, K_OUT, KP)


def _check_scores_args(q: torch.Tensor, k: torch.Tensor, weights: torch.Tensor) -> None:
    check_tensor("q", q, _ACT, ndim=4)
    b, m, h, d = q.shape
    check_tensor("k", k, (q.dtype,), shape=(b, None, d))
    check_tensor("weights", weights, (q.dtype,), shape=(b, m, h))
    check_same_device(q=q, k=k, weights=weights)


def _check_selection(q_pos: torch.Tensor, m: int, ratio: int, topk: int) -> None:
    check_tensor("q_pos", q_pos, _POS, shape=(m,))
    if ratio < 1 or topk < 1:
        raise KernelArgumentError(f"arguments `ratio`={ratio}, `topk`={topk}: expected >= 1")


def index_scores_triton(q: torch.Tensor, k: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """q act [B,M,H,d], k act [B,N,d], weights act [B,M,H] -> act [B,M,N]."""
    _check_scores_args(q, k, weights)
    b, m, h, d = q.shape
    n = k.shape[1]
    out = torch.empty((b, m, n), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    grid = (triton.cdiv(m, _BLOCK_M), triton.cdiv(n, _BLOCK_N), b)
    _index_scores_kernel[grid](
        q.contiguous(), k.contiguous(), weights.contiguous(), out, m, n, h,
        d, next_pow2(d), _BLOCK_M, _BLOCK_N, q.dtype == torch.bfloat16,
    )  # fmt: skip
    return out


@dataclass(frozen=True)
class _Scan:
    """How a top-k launch covers the entries: KP-wide tiles, `splits` programs per query
    block, each scanning `split_len` entries (a multiple of KP)."""

    kp: int
    splits: int
    split_len: int
    warps: int


def _plan(k_out: int, n: int, programs: int, device: torch.device, splits: int | None) -> _Scan:
    """KP = the running list and tile width (a power of two >= k_out). Decode has a single
    query block per sequence, so the entry scan is split over the SMs and merged after."""
    kp = next_pow2(k_out)
    tiles = triton.cdiv(n, kp)
    if splits is None:
        on_gpu = device.type == "cuda"
        sms = torch.cuda.get_device_properties(device).multi_processor_count if on_gpu else 1
        splits = max(1, sms // max(programs, 1))
    per_split = triton.cdiv(tiles, max(1, min(splits, tiles)))
    return _Scan(kp, triton.cdiv(tiles, per_split), per_split * kp, 8 if kp >= 256 else 4)


def _candidates(out: torch.Tensor, plan: _Scan) -> torch.Tensor:
    """Scratch for the split scan's per-split lists (a dummy when the scan is not split)."""
    b, m, _ = out.shape
    shape = (b, m, plan.splits, plan.kp) if plan.splits > 1 else (1,)
    return torch.empty(shape, dtype=torch.int64, device=out.device)


def _merge_splits(cand, q_pos, out, n: int, ratio: int, plan: _Scan) -> None:
    b, m, k_out = out.shape
    if plan.splits > 1:
        _merge_splits_kernel[(triton.cdiv(m, _BLOCK_M), b)](
            cand, q_pos, out, m, n, ratio, k_out, plan.splits, plan.kp, _BLOCK_M,
            num_warps=plan.warps,
        )  # fmt: skip


def _selection_buffers(b: int, m: int, n: int, topk: int, device, splits: int | None):
    """The int32 output [B,M,min(topk,N)], the launch plan and its candidate buffer
    (plan and candidates are None when the output is empty)."""
    out = torch.empty((b, m, min(topk, n)), dtype=torch.int32, device=device)
    if out.numel() == 0:
        return out, None, None
    plan = _plan(out.shape[2], n, triton.cdiv(m, _BLOCK_M) * b, device, splits)
    return out, plan, _candidates(out, plan)


def index_topk_triton(
    scores: torch.Tensor, q_pos: torch.Tensor, ratio: int, topk: int, splits: int | None = None
) -> torch.Tensor:
    """scores act [B,M,N], q_pos int [M] -> int32 [B,M,min(topk,N)]: the best visible
    entries (j < (pos+1)//ratio) by descending score, ties to the lower j, then −1.
    `splits`: programs per query block (default: enough to fill the GPU)."""
    check_tensor("scores", scores, _ACT, ndim=3)
    b, m, n = scores.shape
    _check_selection(q_pos, m, ratio, topk)
    check_same_device(scores=scores, q_pos=q_pos)
    out, plan, cand = _selection_buffers(b, m, n, topk, scores.device, splits)
    if out.numel() == 0:
        return out
    pos = q_pos.contiguous()
    _index_topk_kernel[(triton.cdiv(m, _BLOCK_M), b, plan.splits)](
        scores.contiguous(), pos, out, cand, m, n, ratio, out.shape[2], plan.splits,
        plan.split_len, plan.kp, _BLOCK_M, plan.splits > 1, num_warps=plan.warps,
    )  # fmt: skip
    _merge_splits(cand, pos, out, n, ratio, plan)
    return out


def index_score_topk_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    weights: torch.Tensor,
    q_pos: torch.Tensor,
    ratio: int,
    topk: int,
    splits: int | None = None,
) -> torch.Tensor:
    """Fused `index_topk(index_scores(q, k, weights), q_pos, ratio, topk)`: q act [B,M,H,d],
    k act [B,N,d], weights act [B,M,H], q_pos int [M] -> int32 [B,M,min(topk,N)]."""
    _check_scores_args(q, k, weights)
    b, m, h, d = q.shape
    n = k.shape[1]
    _check_selection(q_pos, m, ratio, topk)
    check_same_device(q=q, q_pos=q_pos)
    out, plan, cand = _selection_buffers(b, m, n, topk, q.device, splits)
    if out.numel() == 0:
        return out
    pos = q_pos.contiguous()
    _index_score_topk_kernel[(triton.cdiv(m, _BLOCK_M), b, plan.splits)](
        q.contiguous(), k.contiguous(), weights.contiguous(), pos, out, cand,
        m, n, h, ratio, out.shape[2], plan.splits, plan.split_len,
        d, next_pow2(d), plan.kp, _BLOCK_M, q.dtype == torch.bfloat16, plan.splits > 1,
        num_warps=plan.warps,
    )  # fmt: skip
    _merge_splits(cand, pos, out, n, ratio, plan)
    return out
