"""Triton twin of `moe.py`: fused routed-expert MoE over FP4 expert weights.

Steps: (1) the (token, slot) pairs are sorted by expert and each expert's run is padded to
BLOCK_M rows, so every row block belongs to one expert (done with torch ops on the device,
no host sync: the buffer is sized for the worst case and unused blocks carry expert -1);
(2) one grouped launch computes w1 and w3 for every block, with the SwiGLU clamp and the
routing weight in the epilogue; (3) the SwiGLU output is FP8-quantized per 128 (when
simulating quantization); (4) one grouped launch computes w2 and scatter-adds each row into
the fp32 [T, D] output with atomics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .gemm_triton import fp4_gemm_tile
from .quant_triton import act_quant_triton
from .triton_util import (
    KernelArgumentError,
    check_same_device,
    check_tensor,
    round_bf16,
)

_BLOCK_M = 16
_ACT = (torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class Routing:
    """Pairs sorted by expert: `pair_ids[r]` = t*k + slot for row r (-1 = padding) and
    `block_expert[b]` = the expert of row block b (-1 = unused block)."""

    pair_ids: torch.Tensor  # int32 [n_blocks * BLOCK_M]
    block_expert: torch.Tensor  # int32 [n_blocks]


def sort_by_expert(topk_ids: torch.Tensor, n_experts: int, block_m: int = _BLOCK_M) -> Routing:
    """Group the (token, slot) pairs of topk_ids [T, k] by expert, each run padded to block_m."""
    flat = topk_ids.reshape(-1).long()
    dev = flat.device
    order = torch.argsort(flat, stable=True)
    experts = flat[order]
    counts = torch.bincount(flat, minlength=n_experts)
    padded = (counts + block_m - 1) // block_m * block_m
    rank = torch.arange(flat.numel(), device=dev) - (torch.cumsum(counts, 0) - counts)[experts]
    dest = (torch.cumsum(padded, 0) - padded)[experts] + rank
    # Worst case: every expert's run wastes block_m - 1 rows.
    n_blocks = triton.cdiv(flat.numel() + n_experts * (block_m - 1), block_m)
    pair_ids = torch.full((n_blocks * block_m,), -1, dtype=torch.int32, device=dev)
    pair_ids[dest] = order.to(torch.int32)
    block_expert = torch.full((n_blocks,), -1, dtype=torch.int32, device=dev)
    block_expert[dest // block_m] = experts.to(torch.int32)
    return Routing(pair_ids, block_expert)


@triton.jit
def _block_rows(pair_ptr, exp_ptr, BLOCK_M: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    pairs = tl.load(pair_ptr + rows)
    return rows, pairs, pairs >= 0, tl.load(exp_ptr + tl.program_id(0))


@triton.jit
def _moe_up_kernel(
    x_ptr, xs_ptr, w1_ptr, w1s_ptr, w3_ptr, w3s_ptr, wt_ptr, pair_ptr, exp_ptr, a_ptr,
    D, I, TOPK, limit,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, A_FP8: tl.constexpr, ACT_BF16: tl.constexpr,
):  # fmt: skip
    rows, pairs, ok, e = _block_rows(pair_ptr, exp_ptr, BLOCK_M)
    if e >= 0:
        tokens = tl.where(ok, pairs // TOPK, 0)
        rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < I
        w_off = e.to(tl.int64) * I * (D // 2)
        s_off = e.to(tl.int64) * I * (D // 32)
        g = fp4_gemm_tile(x_ptr, xs_ptr, tokens, ok, w1_ptr + w_off, w1s_ptr + s_off, rn, n_ok,
                          D, BLOCK_M, BLOCK_N, A_FP8)  # fmt: skip
        u = fp4_gemm_tile(x_ptr, xs_ptr, tokens, ok, w3_ptr + w_off, w3s_ptr + s_off, rn, n_ok,
                          D, BLOCK_M, BLOCK_N, A_FP8)  # fmt: skip
        if A_FP8 and ACT_BF16:  # the quantized linears return the activation dtype
            g = round_bf16(g)
            u = round_bf16(u)
        u = tl.clamp(u, -limit, limit)
        g = tl.minimum(g, limit)
        wt = tl.load(wt_ptr + tl.where(ok, pairs, 0), mask=ok, other=0.0)
        a = tl.div_rn(g, 1.0 + tl.exp(-g)) * u * wt[:, None]  # silu; IEEE divide
        if ACT_BF16:
            a = round_bf16(a)
        out = a_ptr + rows.to(tl.int64)[:, None] * I + rn[None, :]
        tl.store(out, a.to(a_ptr.dtype.element_ty), mask=ok[:, None] & n_ok[None, :])


@triton.jit
def _moe_down_kernel(
    a_ptr, as_ptr, w2_ptr, w2s_ptr, pair_ptr, exp_ptr, out_ptr, D, I, TOPK,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, A_FP8: tl.constexpr, ACT_BF16: tl.constexpr,
):  # fmt: skip
    rows, pairs, ok, e = _block_rows(pair_ptr, exp_ptr, BLOCK_M)
    if e >= 0:
        rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < D
        w_off = e.to(tl.int64) * D * (I // 2)
        s_off = e.to(tl.int64) * D * (I // 32)
        y = fp4_gemm_tile(a_ptr, as_ptr, rows, ok, w2_ptr + w_off, w2s_ptr + s_off, rn, n_ok,
                          I, BLOCK_M, BLOCK_N, A_FP8)  # fmt: skip
        if A_FP8 and ACT_BF16:
            y = round_bf16(y)
        tokens = tl.where(ok, pairs // TOPK, 0).to(tl.int64)
        dst = out_ptr + tokens[:, None] * D + rn[None, :]
        tl.atomic_add(dst, y, mask=ok[:, None] & n_ok[None, :])


def _check_moe_args(x, topk_ids, topk_weights, w1, w1_s, w3, w3_s, w2, w2_s) -> None:
    check_tensor("x", x, _ACT, ndim=2)
    t, d = x.shape
    check_tensor("topk_ids", topk_ids, (torch.int64, torch.int32), ndim=2)
    k = topk_ids.shape[1]
    check_tensor("topk_weights", topk_weights, (torch.float32,), shape=(t, k))
    check_tensor("w1", w1, (torch.int8, torch.uint8), ndim=3)
    e, i = w1.shape[0], w1.shape[1]
    if d % 128 or i % 128:
        raise KernelArgumentError(f"MoE dims D={d}, I={i} must be multiples of 128")
    for name, w, s, shape in (("w1", w1, w1_s, (e, i, d)), ("w3", w3, w3_s, (e, i, d)),
                              ("w2", w2, w2_s, (e, d, i))):  # fmt: skip
        check_tensor(name, w, (torch.int8, torch.uint8), shape=(shape[0], shape[1], shape[2] // 2))
        check_tensor(f"{name}_s", s, (torch.float8_e8m0fnu,),
                     shape=(shape[0], shape[1], shape[2] // 32))  # fmt: skip
    check_same_device(x=x, topk_ids=topk_ids, topk_weights=topk_weights, w1=w1, w2=w2, w3=w3)


def moe_triton(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    w1: torch.Tensor,
    w1_s: torch.Tensor,
    w3: torch.Tensor,
    w3_s: torch.Tensor,
    w2: torch.Tensor,
    w2_s: torch.Tensor,
    swiglu_limit: float,
    quant_sim: bool,
) -> torch.Tensor:
    """Routed experts: x act [T,D], topk_ids [T,k] -> fp32 [T,D] (see `moe.moe_ref`)."""
    _check_moe_args(x, topk_ids, topk_weights, w1, w1_s, w3, w3_s, w2, w2_s)
    t, d = x.shape
    e, i = w1.shape[0], w1.shape[1]
    out = torch.zeros((t, d), dtype=torch.float32, device=x.device)
    if t == 0 or topk_ids.shape[1] == 0:
        return out
    r = sort_by_expert(topk_ids, e)
    # The reference clamps only for a positive limit.
    limit = float(swiglu_limit) if swiglu_limit > 0 else float("inf")
    bf16 = x.dtype == torch.bfloat16
    x = x.contiguous()
    xa, xs = act_quant_triton(x) if quant_sim else (x, x)  # xs unused without quant_sim
    a = torch.zeros((r.pair_ids.numel(), i), dtype=x.dtype, device=x.device)
    n_blocks = r.block_expert.numel()
    wt = topk_weights.contiguous()
    u8 = [s.contiguous().view(torch.uint8) for s in (w1_s, w3_s, w2_s)]
    _moe_up_kernel[(n_blocks, triton.cdiv(i, 64))](
        xa, xs, w1.contiguous(), u8[0], w3.contiguous(), u8[1], wt, r.pair_ids, r.block_expert,
        a, d, i, topk_ids.shape[1], limit, _BLOCK_M, 64, quant_sim, bf16,
    )  # fmt: skip
    aa, a_s = act_quant_triton(a) if quant_sim else (a, a)
    _moe_down_kernel[(n_blocks, triton.cdiv(d, 64))](
        aa, a_s, w2.contiguous(), u8[2], r.pair_ids, r.block_expert, out, d, i,
        topk_ids.shape[1], _BLOCK_M, 64, quant_sim, bf16,
    )  # fmt: skip
    return out
