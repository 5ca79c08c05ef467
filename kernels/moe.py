"""Routed experts of the MoE layer (SPEC §4.7): FP4 SwiGLU experts, fp32 accumulation.

Per expert e and each (token, slot) routed to it: g = w1(x), u = w3(x);
u = clamp(u, ±L); g = clamp(g, max=L); a = silu(g)·u·weight (fp32, the routing weight is
applied BEFORE w2); out = w2(a in the act dtype), accumulated into an fp32 [T, D] buffer.
A token that lists the same expert twice gets both contributions (REF sums duplicates).
With `quant_sim` the linears are REF's FP4 GEMMs with FP8 activation quantization (outputs
in the act dtype); without it the weights are dequantized exactly and the products are fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import native_lib, use_triton
from .gemm import BF16_MIN_ROWS, bf16_products, dequantize_fp4
from .moe_native import moe_native, native_supported
from .quant import act_quant_dequant

_GROUP_BYTES = 1 << 26  # dequantized fp32 weights of the experts processed together


def _linear_input(x: torch.Tensor, quant_sim: bool) -> torch.Tensor:
    """The fp32 values an FP4 GEMM multiplies: x's FP8 round trip (1×128 blocks, power-of-two
    scales, exact in x's dtype) with quant_sim, else x itself."""
    return (act_quant_dequant(x, 128) if quant_sim else x).float()


def _expert_groups(active: list[int], per_expert_bytes: int) -> list[list[int]]:
    size = max(1, _GROUP_BYTES // per_expert_bytes)
    return [active[i : i + size] for i in range(0, len(active), size)]


def moe_ref(
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
    """x act [T,D], topk_ids int64 [T,k], topk_weights fp32 [T,k], experts stacked [E, ...]
    -> fp32 [T,D]."""
    y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    xin = _linear_input(x, quant_sim)  # the same rounded input feeds every expert's w1 and w3
    weights = (w1, w1_s, w3, w3_s, w2, w2_s)
    per_expert = 4 * (w1.shape[1] * 2 * w1.shape[2] * 2 + w2.shape[1] * w2.shape[2] * 2)
    opts = (x.dtype, swiglu_limit, quant_sim)
    pairs = topk_ids.numel()
    if pairs < BF16_MIN_ROWS and pairs * per_expert <= _GROUP_BYTES:
        return _by_pair(y, xin, topk_ids, topk_weights, weights, opts)
    return _by_expert(y, xin, topk_ids, topk_weights, weights, opts, per_expert)


def _by_pair(y, xin, topk_ids, topk_weights, weights, opts) -> torch.Tensor:
    """Few (token, slot) pairs (decode): one batch over the pairs, each pair with its own
    expert's weights dequantized."""
    w1, w1_s, w3, w3_s, w2, w2_s = weights
    flat_ids = topk_ids.reshape(-1)
    tok = torch.arange(flat_ids.numel(), device=xin.device) // topk_ids.shape[1]
    w13 = _stacked_w13(w1, w1_s, w3, w3_s, flat_ids)
    w2p = dequantize_fp4(w2.index_select(0, flat_ids), w2_s.index_select(0, flat_ids))
    out = _experts_batched(xin.index_select(0, tok), w13, w2p, topk_weights.reshape(-1), *opts)
    return y.index_add_(0, tok, out)


def _by_expert(y, xin, topk_ids, topk_weights, weights, opts, per_expert: int) -> torch.Tensor:
    """Many pairs (prefill): the pairs of each expert together, experts dequantized in groups."""
    w1, w1_s, w3, w3_s, w2, w2_s = weights
    dtype, k, quant_sim = opts[0], topk_ids.shape[1], opts[2]
    flat_ids, flat_w = topk_ids.reshape(-1), topk_weights.reshape(-1)
    order = torch.argsort(flat_ids, stable=True)  # (token, slot) pairs grouped by expert
    counts = torch.bincount(flat_ids, minlength=w1.shape[0]).tolist()
    starts = [0]
    for c in counts:
        starts.append(starts[-1] + c)
    # FP4 values times power-of-two scales are bf16 values, and so are the GEMM inputs when
    # they went through the FP8 round trip or are bf16 activations: bf16 products are exact.
    exact = quant_sim or dtype == torch.bfloat16
    for group in _expert_groups([e for e, c in enumerate(counts) if c], per_expert):
        ids = torch.tensor(group, device=xin.device)
        w13 = _stacked_w13(w1, w1_s, w3, w3_s, ids)
        w2g = dequantize_fp4(w2.index_select(0, ids), w2_s.index_select(0, ids))
        for j, e in enumerate(group):
            pairs = order[starts[e] : starts[e + 1]]
            with bf16_products(exact and pairs.numel() >= BF16_MIN_ROWS):
                a = _swiglu(xin[pairs // k] @ w13[j].T, flat_w[pairs], *opts)
                out = _round_out(_linear_input(a.to(dtype), quant_sim) @ w2g[j].T, dtype, quant_sim)
            y.index_add_(0, pairs // k, out)
    return y


def _stacked_w13(w1, w1_s, w3, w3_s, ids: torch.Tensor) -> torch.Tensor:
    """Experts `ids` with w1 over w3, fp32 [len(ids), 2I, D]: one GEMM gives both (each output
    is its own dot product, so only the number of calls changes)."""

    def pick(t: torch.Tensor) -> torch.Tensor:
        return t.index_select(0, ids)  # several times faster than t[ids] on CPUs

    packed = torch.cat((pick(w1), pick(w3)), 1)
    return dequantize_fp4(packed, torch.cat((pick(w1_s), pick(w3_s)), 1))


def _experts_batched(xin, w13, w2, weights, dtype, swiglu_limit, quant_sim) -> torch.Tensor:
    """Pair p through its own expert: xin fp32 [P, D], w13 [P, 2I, D], w2 [P, D, I],
    weights [P] -> fp32 [P, D]."""
    gu = torch.bmm(xin.unsqueeze(1), w13.transpose(1, 2)).squeeze(1)
    a = _linear_input(_swiglu(gu, weights, dtype, swiglu_limit, quant_sim).to(dtype), quant_sim)
    out = torch.bmm(a.unsqueeze(1), w2.transpose(1, 2)).squeeze(1)
    return _round_out(out, dtype, quant_sim)


def _swiglu(gu, weights, dtype, swiglu_limit, quant_sim) -> torch.Tensor:
    """w1|w3 outputs fp32 [P, 2I] and routing weights [P] -> silu(g)·u·weight fp32 [P, I]."""
    if quant_sim:  # REF's FP4 GEMM writes its output in the act dtype
        gu = gu.to(dtype).float()
    g, u = gu.chunk(2, dim=-1)
    if swiglu_limit > 0:
        u = u.clamp(-swiglu_limit, swiglu_limit)
        g = g.clamp(max=swiglu_limit)
    return F.silu(g) * u * weights.unsqueeze(-1).float()


def _round_out(out, dtype, quant_sim) -> torch.Tensor:
    """w2's fp32 output, rounded to the act dtype as REF's FP4 GEMM writes it (quant_sim)."""
    return out.to(dtype).float() if quant_sim else out


def moe(x, topk_ids, topk_weights, w1, w1_s, w3, w3_s, w2, w2_s, swiglu_limit, quant_sim):
    args = (x, topk_ids, topk_weights, w1, w1_s, w3, w3_s, w2, w2_s)
    if use_triton(*args):
        from .moe_triton import moe_triton

        return moe_triton(*args, swiglu_limit, quant_sim)
    lib = native_lib("moe", *args)
    if lib is not None and native_supported(*args, quant_sim):
        return moe_native(lib, *args, swiglu_limit, quant_sim)
    return moe_ref(*args, swiglu_limit, quant_sim)
