"""Triton twins of `mhc.py`: split + Sinkhorn, and the fused per-token hc_pre / hc_post mixes.

All arithmetic is fp32 like the reference; bf16 outputs are rounded once at the end. `hc`
(4 in both models) must be a power of two so the hc x hc matrix is a Triton block.
hc_pre runs in one launch: the mixes GEMV over the flattened stream and its RMS factor,
the Sinkhorn split on those mixes (through a small fp32 scratch row, made visible to the
whole program with a barrier), then y = Σ_j pre[j]·h[j].
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_util import KernelArgumentError, check_same_device, check_tensor, next_pow2, round_bf16

_ACT = (torch.bfloat16, torch.float32)
_BLOCK_T = 16


@triton.jit
def _sinkhorn(m_ptr, sc_ptr, base_ptr, rows, r_ok, stride, iters, eps, HC: tl.constexpr):
    """mixes rows (row stride `stride`) -> pre [BT, HC], post [BT, HC], comb [BT, HC, HC]."""
    j = tl.arange(0, HC)
    row = m_ptr + rows.to(tl.int64)[:, None] * stride
    s0, s1, s2 = tl.load(sc_ptr), tl.load(sc_ptr + 1), tl.load(sc_ptr + 2)
    pre_l = tl.load(row + j[None, :], mask=r_ok[:, None], other=0.0) * s0 + tl.load(base_ptr + j)
    post_l = tl.load(row + HC + j[None, :], mask=r_ok[:, None], other=0.0) * s1
    post_l += tl.load(base_ptr + HC + j)
    cj = (2 * HC + j[:, None] * HC + j[None, :])[None, :, :]  # [1, HC(j), HC(k)]
    c = tl.load(row[:, :, None] + cj, mask=r_ok[:, None, None], other=0.0) * s2
    c += tl.load(base_ptr + cj)
    pre = tl.sigmoid(pre_l) + eps
    post = 2.0 * tl.sigmoid(post_l)
    c = tl.exp(c - tl.max(c, axis=2)[:, :, None])
    # div_rn: IEEE divisions like torch's (a GPU `/` is only within 2 ulp).
    c = tl.div_rn(c, tl.sum(c, axis=2)[:, :, None]) + eps
    c = tl.div_rn(c, tl.sum(c, axis=1)[:, None, :] + eps)
    for _ in range(iters - 1):
        c = tl.div_rn(c, tl.sum(c, axis=2)[:, :, None] + eps)
        c = tl.div_rn(c, tl.sum(c, axis=1)[:, None, :] + eps)
    return pre, post, c


@triton.jit
def _store_split(post_ptr, comb_ptr, rows, r_ok, post, comb, HC: tl.constexpr):
    j = tl.arange(0, HC)
    r = rows.to(tl.int64)
    tl.store(post_ptr + r[:, None] * HC + j[None, :], post, mask=r_ok[:, None])
    cj = (j[:, None] * HC + j[None, :])[None, :, :]
    tl.store(comb_ptr + r[:, None, None] * (HC * HC) + cj, comb, mask=r_ok[:, None, None])


@triton.jit
def _split_kernel(m_ptr, sc_ptr, base_ptr, pre_ptr, post_ptr, comb_ptr, T, iters, eps,
                  HC: tl.constexpr, BLOCK_T: tl.constexpr):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    r_ok = rows < T
    pre, post, comb = _sinkhorn(m_ptr, sc_ptr, base_ptr, rows, r_ok, (2 + HC) * HC, iters, eps, HC)
    j = tl.arange(0, HC)
    tl.store(pre_ptr + rows.to(tl.int64)[:, None] * HC + j[None, :], pre, mask=r_ok[:, None])
    _store_split(post_ptr, comb_ptr, rows, r_ok, post, comb, HC)


def _check_split(scale: torch.Tensor, base: torch.Tensor, hc: int, iters: int) -> None:
    if hc < 1 or hc & (hc - 1):
        raise KernelArgumentError(f"argument `hc`: {hc} is not a power of two")
    if iters < 1:
        raise KernelArgumentError(f"argument `iters`: {iters}, expected >= 1")
    check_tensor("scale", scale, (torch.float32,), shape=(3,))
    check_tensor("base", base, (torch.float32,), shape=((2 + hc) * hc,))


def hc_split_sinkhorn_triton(
    mixes: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, hc: int, iters: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mixes fp32 [..., (2+hc)*hc] -> pre [..., hc], post [..., hc], comb [..., hc, hc]."""
    _check_split(scale, base, hc, iters)
    check_tensor("mixes", mixes, (torch.float32,))
    if mixes.dim() == 0 or mixes.shape[-1] != (2 + hc) * hc:
        raise KernelArgumentError(f"argument `mixes`: shape {tuple(mixes.shape)}, last dim "
                                  f"must be (2+hc)*hc = {(2 + hc) * hc}")  # fmt: skip
    lead = mixes.shape[:-1]
    m2 = mixes.reshape(-1, mixes.shape[-1]).contiguous()
    t = m2.shape[0]
    pre = torch.empty((*lead, hc), dtype=torch.float32, device=mixes.device)
    post, comb = torch.empty_like(pre), pre.new_empty((*lead, hc, hc))
    if t:
        _split_kernel[(triton.cdiv(t, _BLOCK_T),)](
            m2, scale, base, pre, post, comb, t, iters, float(eps), hc, _BLOCK_T
        )
    return pre, post, comb


@triton.jit
def _hc_pre_kernel(
    h_ptr, fn_ptr, sc_ptr, base_ptr, mix_ptr, y_ptr, post_ptr, comb_ptr, T, D, iters,
    norm_eps, hc_eps,
    HC: tl.constexpr, NMIX: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr, BF16: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    r_ok = rows < T
    r64 = rows.to(tl.int64)
    outs = tl.arange(0, NMIX)
    n_mix = (2 + HC) * HC
    width = HC * D
    # 1. mixes = flat(h) @ fn^T and the sum of squares, over the flattened stream.
    acc = tl.zeros((BLOCK_T, NMIX), tl.float32)
    sq = tl.zeros((BLOCK_T,), tl.float32)
    for k0 in range(0, width, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(
            h_ptr + r64[:, None] * width + ks[None, :],
            mask=r_ok[:, None] & (ks < width)[None, :],
            other=0.0,
        ).to(tl.float32)
        f = tl.load(
            fn_ptr + outs[:, None] * width + ks[None, :],
            mask=(outs < n_mix)[:, None] & (ks < width)[None, :],
            other=0.0,
        )
        acc += tl.dot(x, tl.trans(f), input_precision="ieee")
        sq += tl.sum(x * x, axis=1)
    # rsqrt as the reference computes it: 1 / sqrt, each IEEE-rounded.
    acc = acc * tl.div_rn(1.0, tl.sqrt_rn(tl.div_rn(sq, width * 1.0) + norm_eps))[:, None]
    tl.store(mix_ptr + r64[:, None] * n_mix + outs[None, :], acc,
             mask=r_ok[:, None] & (outs < n_mix)[None, :])  # fmt: skip
    tl.debug_barrier()  # the split below reads the scratch rows other threads wrote
    # 2. Sinkhorn split.
    pre, post, comb = _sinkhorn(mix_ptr, sc_ptr, base_ptr, rows, r_ok, n_mix, iters, hc_eps, HC)
    _store_split(post_ptr, comb_ptr, rows, r_ok, post, comb, HC)
    # 3. y = Σ_j pre[j]·h[j].
    j = tl.arange(0, HC)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        ok = r_ok[:, None] & (ds < D)[None, :]
        hp = h_ptr + r64[:, None, None] * width + j[None, :, None] * D + ds[None, None, :]
        h = tl.load(hp, mask=ok[:, None, :], other=0.0).to(tl.float32)
        y = tl.sum(pre[:, :, None] * h, axis=1)
        if BF16:
            y = round_bf16(y)
        tl.store(y_ptr + r64[:, None] * D + ds[None, :], y.to(y_ptr.dtype.element_ty), mask=ok)


def hc_pre_triton(
    h: torch.Tensor,
    fn: torch.Tensor,
    scale: torch.Tensor,
    base: torch.Tensor,
    hc: int,
    iters: int,
    norm_eps: float,
    hc_eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """h act [..., hc, D] -> (y act [..., D], post fp32 [..., hc], comb fp32 [..., hc, hc])."""
    _check_split(scale, base, hc, iters)
    check_tensor("h", h, _ACT)
    if h.dim() < 2 or h.shape[-2] != hc:
        raise KernelArgumentError(f"argument `h`: shape {tuple(h.shape)}, expected [..., {hc}, D]")
    d = h.shape[-1]
    n_mix = (2 + hc) * hc
    check_tensor("fn", fn, (torch.float32,), shape=(n_mix, hc * d))
    check_same_device(h=h, fn=fn, scale=scale, base=base)
    lead = h.shape[:-2]
    h2 = h.reshape(-1, hc * d).contiguous()
    t = h2.shape[0]
    y = torch.empty((*lead, d), dtype=h.dtype, device=h.device)
    post = torch.empty((*lead, hc), dtype=torch.float32, device=h.device)
    comb = post.new_empty((*lead, hc, hc))
    if t:
        scratch = torch.empty((t, n_mix), dtype=torch.float32, device=h.device)
        _hc_pre_kernel[(triton.cdiv(t, _BLOCK_T),)](
            h2, fn.contiguous(), scale, base, scratch, y, post, comb, t, d, iters,
            float(norm_eps), float(hc_eps), hc, next_pow2(n_mix), _BLOCK_T, 128,
            min(next_pow2(d), 256), h.dtype == torch.bfloat16,
        )  # fmt: skip
    return y, post, comb


@triton.jit
def _hc_post_kernel(o_ptr, h_ptr, post_ptr, comb_ptr, y_ptr, T, D,
                    HC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                    BF16: tl.constexpr):  # fmt: skip
    rows = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    kk = tl.arange(0, HC)
    ok = (rows < T)[:, None] & (ds < D)[None, :]
    out = tl.load(o_ptr + rows[:, None] * D + ds[None, :], mask=ok, other=0.0).to(tl.float32)
    mixed = tl.zeros((BLOCK_T, HC, BLOCK_D), tl.float32)
    for j in tl.static_range(HC):
        cj = tl.load(comb_ptr + rows[:, None] * (HC * HC) + j * HC + kk[None, :],
                     mask=(rows < T)[:, None], other=0.0)  # fmt: skip
        hj = tl.load(h_ptr + (rows * HC + j)[:, None] * D + ds[None, :], mask=ok, other=0.0)
        mixed += cj[:, :, None] * hj.to(tl.float32)[:, None, :]
    post = tl.load(post_ptr + rows[:, None] * HC + kk[None, :], mask=(rows < T)[:, None], other=0.0)
    y = post[:, :, None] * out[:, None, :] + mixed
    if BF16:
        y = round_bf16(y)
    yp = y_ptr + (rows[:, None, None] * HC + kk[None, :, None]) * D + ds[None, None, :]
    tl.store(yp, y.to(y_ptr.dtype.element_ty), mask=ok[:, None, :])


def hc_post_triton(
    out: torch.Tensor, h: torch.Tensor, post: torch.Tensor, comb: torch.Tensor
) -> torch.Tensor:
    """out act [..., D], h act [..., hc, D], post fp32 [..., hc], comb fp32 [..., hc, hc]
    -> act [..., hc, D]: h_new[k] = post[k]·out + Σ_j comb[j,k]·h[j]."""
    check_tensor("h", h, _ACT)
    if h.dim() < 2:
        raise KernelArgumentError(f"argument `h`: shape {tuple(h.shape)}, expected [..., hc, D]")
    hc, d = h.shape[-2], h.shape[-1]
    lead = tuple(h.shape[:-2])
    if hc & (hc - 1):
        raise KernelArgumentError(f"argument `h`: hc={hc} is not a power of two")
    check_tensor("out", out, (h.dtype,), shape=(*lead, d))
    check_tensor("post", post, (torch.float32,), shape=(*lead, hc))
    check_tensor("comb", comb, (torch.float32,), shape=(*lead, hc, hc))
    check_same_device(out=out, h=h, post=post, comb=comb)
    y = torch.empty_like(h, memory_format=torch.contiguous_format)
    t = y.numel() // max(hc * d, 1)
    if t and d:
        block_d = min(next_pow2(d), 128)
        _hc_post_kernel[(triton.cdiv(t, _BLOCK_T), triton.cdiv(d, block_d))](
            out.contiguous(), h.contiguous(), post.contiguous(), comb.contiguous(), y, t, d,
            hc, _BLOCK_T, block_d, h.dtype == torch.bfloat16,
        )  # fmt: skip
    return y
