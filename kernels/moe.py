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

from .dispatch import use_triton
from .gemm import dequantize_fp4
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
    k = topk_ids.shape[1]
    flat_ids = topk_ids.reshape(-1)
    order = torch.argsort(flat_ids, stable=True)  # (token, slot) pairs grouped by expert
    counts = torch.bincount(flat_ids, minlength=w1.shape[0]).tolist()
    starts = [0]
    for c in counts:
        starts.append(starts[-1] + c)
    xin = _linear_input(x, quant_sim)  # the same rounded input feeds every expert's w1 and w3
    active = [e for e, c in enumerate(counts) if c]
    per_expert = 4 * (w1.shape[1] * 2 * w1.shape[2] * 2 + w2.shape[1] * w2.shape[2] * 2)
    for group in _expert_groups(active, per_expert):
        ids = torch.tensor(group, device=x.device)
        w1g, w3g = dequantize_fp4(w1[ids], w1_s[ids]), dequantize_fp4(w3[ids], w3_s[ids])
        w2g = dequantize_fp4(w2[ids], w2_s[ids])
        for j, e in enumerate(group):
            pairs = order[starts[e] : starts[e + 1]]
            tok = pairs // k
            g, u = xin[tok] @ w1g[j].T, xin[tok] @ w3g[j].T
            if quant_sim:  # REF's FP4 GEMM writes its output in the act dtype
                g, u = g.to(x.dtype).float(), u.to(x.dtype).float()
            if swiglu_limit > 0:
                u = u.clamp(-swiglu_limit, swiglu_limit)
                g = g.clamp(max=swiglu_limit)
            a = F.silu(g) * u * topk_weights.reshape(-1)[pairs].unsqueeze(-1).float()
            out = _linear_input(a.to(x.dtype), quant_sim) @ w2g[j].T
            y.index_add_(0, tok, out.to(x.dtype).float() if quant_sim else out)
    return y


def moe(x, topk_ids, topk_weights, w1, w1_s, w3, w3_s, w2, w2_s, swiglu_limit, quant_sim):
    args = (x, topk_ids, topk_weights, w1, w1_s, w3, w3_s, w2, w2_s)
    if use_triton(*args):
        from .moe_triton import moe_triton

        return moe_triton(*args, swiglu_limit, quant_sim)
    return moe_ref(*args, swiglu_limit, quant_sim)
