"""Manifold-constrained hyper-connections (mHC, SPEC §4.2): split + Sinkhorn, hc_pre, hc_post.

The residual stream holds `hc` copies of the hidden state. `hc_pre` mixes them into one
layer input with weights computed from the stream itself; `hc_post` writes the layer output
back, mixing the old copies through a (nearly) doubly stochastic `comb` matrix. All mixing
arithmetic is fp32, as in REF.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .dispatch import native_lib, use_triton


def hc_split_sinkhorn_ref(
    mixes: torch.Tensor,
    scale: torch.Tensor,
    base: torch.Tensor,
    hc: int,
    iters: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mixes fp32 [..., (2+hc)*hc] -> pre [..., hc], post [..., hc], comb [..., hc, hc].

    pre = σ(m·s0 + b) + eps; post = 2σ(m·s1 + b); comb = softmax over each row of the
    row-major hc×hc logits, + eps, then column-normalized, then `iters - 1` rounds of row and
    column normalization (each divisor + eps). comb[j, k] feeds stream j into stream k.
    """
    m = mixes.float()
    pre = torch.sigmoid(m[..., :hc] * scale[0] + base[:hc]) + eps
    post = 2 * torch.sigmoid(m[..., hc : 2 * hc] * scale[1] + base[hc : 2 * hc])
    logits = (m[..., 2 * hc :] * scale[2] + base[2 * hc :]).unflatten(-1, (hc, hc))
    comb = torch.softmax(logits, dim=-1) + eps
    comb = comb / (comb.sum(-2, keepdim=True) + eps)
    return pre, post, _sinkhorn_rounds(comb, iters - 1, eps)


# Up to this many hc×hc matrices, the rounds run in numpy: each round is six tiny ops and
# numpy dispatches them several times faster than torch (decode: 12 calls per token). Only
# for hc ≤ 4, where both libraries sum the hc terms left to right (checked bit for bit);
# numpy's pairwise summation regroups longer rows.
_NUMPY_MAX_ROWS = 16
_NUMPY_MAX_HC = 4


def _sinkhorn_rounds(comb: torch.Tensor, rounds: int, eps: float) -> torch.Tensor:
    """`rounds` row-then-column normalizations of fp32 comb [..., hc, hc], each divisor + eps.

    Both paths keep REF's operation order (sum of hc terms, + eps, divide), so the result is
    bit-identical to the plain torch loop; only the dispatch cost differs.
    """
    small = comb[..., 0, 0].numel() <= _NUMPY_MAX_ROWS and comb.shape[-1] <= _NUMPY_MAX_HC
    if comb.device.type == "cpu" and small:
        c, e, total = comb.numpy(), np.float32(eps), np.add.reduce
        for _ in range(rounds):
            c = c / (total(c, axis=-1, keepdims=True) + e)
            c = c / (total(c, axis=-2, keepdims=True) + e)
        return torch.from_numpy(c)
    rows = comb.new_empty(comb.shape[:-1] + (1,))
    cols = comb.new_empty(comb.shape[:-2] + (1, comb.shape[-1]))
    for _ in range(rounds):  # in place: no allocation per round
        comb.div_(torch.sum(comb, -1, keepdim=True, out=rows).add_(eps))
        comb.div_(torch.sum(comb, -2, keepdim=True, out=cols).add_(eps))
    return comb


def hc_pre_ref(
    h: torch.Tensor,
    fn: torch.Tensor,
    scale: torch.Tensor,
    base: torch.Tensor,
    hc: int,
    iters: int,
    norm_eps: float,
    hc_eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """h act [..., hc, D] -> (y act [..., D], post fp32 [..., hc], comb fp32 [..., hc, hc]).

    mixes = (flat(h) @ fnᵀ) · rsqrt(mean(flat(h)²) + norm_eps) on the raw fp32 stream
    (REF applies the linear first, then the RMS factor); y = Σ_j pre[j]·h[j] in fp32.
    """
    hf = h.float()
    flat = hf.flatten(-2)
    rsqrt = torch.rsqrt(flat.square().mean(-1, keepdim=True) + norm_eps)
    mixes = F.linear(flat, fn.float()) * rsqrt
    pre, post, comb = hc_split_sinkhorn(mixes, scale, base, hc, iters, hc_eps)
    y = (pre.unsqueeze(-1) * hf).sum(dim=-2)
    return y.to(h.dtype), post, comb


def hc_post_ref(
    out: torch.Tensor, h: torch.Tensor, post: torch.Tensor, comb: torch.Tensor
) -> torch.Tensor:
    """out act [..., D], h act [..., hc, D] -> act [..., hc, D].

    h_new[k] = post[k]·out + Σ_j comb[j, k]·h[j] (sum over the FIRST index), fp32, cast once.
    """
    mixed = (comb.unsqueeze(-1) * h.float().unsqueeze(-2)).sum(dim=-3)
    y = post.unsqueeze(-1) * out.float().unsqueeze(-2) + mixed
    return y.to(h.dtype)


def hc_split_sinkhorn(mixes, scale, base, hc: int, iters: int, eps: float):
    if use_triton(mixes, scale, base):
        from .mhc_triton import hc_split_sinkhorn_triton

        return hc_split_sinkhorn_triton(mixes, scale, base, hc, iters, eps)
    if native_lib("mhc", mixes, scale, base):
        from .mhc_native import hc_split_sinkhorn_native

        return hc_split_sinkhorn_native(mixes, scale, base, hc, iters, eps)
    return hc_split_sinkhorn_ref(mixes, scale, base, hc, iters, eps)


def hc_pre(h, fn, scale, base, hc: int, iters: int, norm_eps: float, hc_eps: float):
    if use_triton(h, fn, scale, base):
        from .mhc_triton import hc_pre_triton

        return hc_pre_triton(h, fn, scale, base, hc, iters, norm_eps, hc_eps)
    if native_lib("mhc", h, fn, scale, base):
        from .mhc_native import hc_pre_native

        return hc_pre_native(h, fn, scale, base, hc, iters, norm_eps, hc_eps)
    return hc_pre_ref(h, fn, scale, base, hc, iters, norm_eps, hc_eps)


def hc_post(out, h, post, comb):
    if use_triton(out, h, post, comb):
        from .mhc_triton import hc_post_triton

        return hc_post_triton(out, h, post, comb)
    if native_lib("mhc", out, h, post, comb):
        from .mhc_native import hc_post_native

        return hc_post_native(out, h, post, comb)
    return hc_post_ref(out, h, post, comb)


def hc_head_ref(h, fn, scale, base, norm_eps: float, hc_eps: float) -> torch.Tensor:
    """The head's mix: h act [..., hc, D] -> act [..., D], pre = sigmoid(mixes·scale + base)
    + hc_eps (no Sinkhorn) over hc_pre's mixes (linear, then × rsqrt(mean(x²) + eps))."""
    hf = h.float()
    flat = hf.flatten(-2)
    mixes = F.linear(flat, fn) * torch.rsqrt(flat.square().mean(-1, keepdim=True) + norm_eps)
    pre = torch.sigmoid(mixes * scale + base) + hc_eps
    return (pre.unsqueeze(-1) * hf).sum(dim=-2).to(h.dtype)


def hc_head(h, fn, scale, base, norm_eps: float, hc_eps: float) -> torch.Tensor:
    if native_lib("mhc", h, fn, scale, base):
        from .mhc_native import hc_head_native

        return hc_head_native(h, fn, scale, base, norm_eps, hc_eps)
    return hc_head_ref(h, fn, scale, base, norm_eps, hc_eps)
