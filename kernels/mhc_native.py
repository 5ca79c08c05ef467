"""Native CPU twins of `mhc.py` (`csrc/mhc.c`): split + Sinkhorn, hc_pre and hc_post.

Each wrapper is one C call for all tokens (the torch references dispatch ~60 small ops per
hc_pre). Same signatures and results as the references: fp32 mixing arithmetic, bf16
outputs rounded once. Only the mixes GEMV and the RMS sum of squares sum in another order,
and expf is libm's where torch's vectorized path uses Sleef (the two can differ by an ulp).
"""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

import torch

from . import native

_F32 = torch.float32
_ACT = (torch.bfloat16, _F32)
_KERNELS: dict[ctypes.CDLL, SimpleNamespace] = {}


class NativeArgumentError(ValueError):
    """A native mHC wrapper was called with a tensor of the wrong shape or dtype."""


def _kernels() -> SimpleNamespace:
    """The three C entry points of `csrc/mhc.c`, declared once per loaded library."""
    lib = native.load("mhc")
    if (k := _KERNELS.get(lib)) is None:
        P, I64, F32 = native.P, native.I64, native.F32
        k = _KERNELS[lib] = SimpleNamespace(
            split=native.declare(lib, "mhc_split", P, P, P, P, P, P, I64, I64, I64, F32),
            pre=native.declare(
                lib, "mhc_pre", P, P, P, P, P, P, P, I64, I64, I64, I64, F32, F32, I64
            ),
            post=native.declare(lib, "mhc_post", P, P, P, P, P, I64, I64, I64, I64),
            head=native.declare(lib, "mhc_head", P, P, P, P, P, I64, I64, I64, F32, F32, I64),
        )
    return k


def _explain(**checks: tuple[torch.Tensor, tuple[torch.dtype, ...], tuple | None]) -> None:
    """Raise NativeArgumentError naming the first tensor whose dtype, shape or device is off."""
    for name, (t, dtypes, shape) in checks.items():
        where = f"argument `{name}`"
        if t.dtype not in dtypes:
            raise NativeArgumentError(f"{where}: dtype {t.dtype}, expected one of {dtypes}")
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise NativeArgumentError(f"{where}: shape {tuple(t.shape)}, expected {tuple(shape)}")
        if not t.is_cpu:
            raise NativeArgumentError(
                f"{where}: on {t.device}, the native kernels take CPU tensors"
            )


def _check_split(scale: torch.Tensor, base: torch.Tensor, hc: int, iters: int) -> None:
    if hc < 1 or iters < 1:
        raise NativeArgumentError(f"arguments `hc`, `iters`: {hc}, {iters}; expected >= 1")
    nmix = (2 + hc) * hc
    if not (scale.dtype == _F32 and base.dtype == _F32 and scale.shape == (3,)
            and base.shape == (nmix,) and scale.is_cpu and base.is_cpu):  # fmt: skip
        _explain(scale=(scale, (_F32,), (3,)), base=(base, (_F32,), (nmix,)))


def hc_split_sinkhorn_native(
    mixes: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, hc: int, iters: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mixes fp32 [..., (2+hc)*hc] -> pre [..., hc], post [..., hc], comb [..., hc, hc]."""
    _check_split(scale, base, hc, iters)
    if mixes.dim() == 0 or mixes.shape[-1] != (2 + hc) * hc or not mixes.is_cpu:
        raise NativeArgumentError(f"argument `mixes`: shape {tuple(mixes.shape)} on "
                                  f"{mixes.device}, expected [..., (2+hc)*hc = {(2 + hc) * hc}] "
                                  f"on the CPU")  # fmt: skip
    lead = mixes.shape[:-1]
    m = mixes.float().contiguous()
    pre = torch.empty((*lead, hc))
    post, comb = torch.empty((*lead, hc)), torch.empty((*lead, hc, hc))
    if t := pre.numel() // hc:
        _kernels().split(m.data_ptr(), scale.contiguous().data_ptr(),
                         base.contiguous().data_ptr(), pre.data_ptr(), post.data_ptr(),
                         comb.data_ptr(), t, hc, iters, eps)  # fmt: skip
    return pre, post, comb


def hc_pre_native(
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
    if h.dim() < 2 or h.shape[-2] != hc:
        raise NativeArgumentError(f"argument `h`: shape {tuple(h.shape)}, expected [..., {hc}, D]")
    lead, d = h.shape[:-2], h.shape[-1]
    fn_shape = ((2 + hc) * hc, hc * d)
    if not (h.dtype in _ACT and fn.dtype == _F32 and fn.shape == fn_shape and h.is_cpu
            and fn.is_cpu):  # fmt: skip
        _explain(h=(h, _ACT, None), fn=(fn, (_F32,), fn_shape))
    h = h.contiguous()
    y = torch.empty((*lead, d), dtype=h.dtype)
    post, comb = torch.empty((*lead, hc)), torch.empty((*lead, hc, hc))
    if t := post.numel() // hc:
        _kernels().pre(h.data_ptr(), fn.contiguous().data_ptr(), scale.contiguous().data_ptr(),
                       base.contiguous().data_ptr(), y.data_ptr(), post.data_ptr(),
                       comb.data_ptr(), t, hc, d, iters, norm_eps, hc_eps,
                       h.dtype == torch.bfloat16)  # fmt: skip
    return y, post, comb


def hc_post_native(
    out: torch.Tensor, h: torch.Tensor, post: torch.Tensor, comb: torch.Tensor
) -> torch.Tensor:
    """out act [..., D], h act [..., hc, D], post fp32 [..., hc], comb fp32 [..., hc, hc]
    -> act [..., hc, D]: h_new[k] = post[k]·out + Σ_j comb[j,k]·h[j]."""
    if h.dim() < 2:
        raise NativeArgumentError(f"argument `h`: shape {tuple(h.shape)}, expected [..., hc, D]")
    hc, d, lead = h.shape[-2], h.shape[-1], h.shape[:-2]
    if not (h.dtype in _ACT and out.dtype == h.dtype and post.dtype == _F32
            and comb.dtype == _F32 and out.shape == (*lead, d) and post.shape == (*lead, hc)
            and comb.shape == (*lead, hc, hc) and h.is_cpu and out.is_cpu and post.is_cpu
            and comb.is_cpu):  # fmt: skip
        _explain(
            h=(h, _ACT, None),
            out=(out, (h.dtype,), (*lead, d)),
            post=(post, (_F32,), (*lead, hc)),
            comb=(comb, (_F32,), (*lead, hc, hc)),
        )
    h = h.contiguous()
    y = torch.empty_like(h)
    if (t := post.numel() // hc if hc else 0) and d:
        _kernels().post(out.contiguous().data_ptr(), h.data_ptr(),
                        post.contiguous().data_ptr(), comb.contiguous().data_ptr(),
                        y.data_ptr(), t, hc, d, h.dtype == torch.bfloat16)  # fmt: skip
    return y


def hc_head_native(
    h: torch.Tensor,
    fn: torch.Tensor,
    scale: torch.Tensor,
    base: torch.Tensor,
    norm_eps: float,
    hc_eps: float,
) -> torch.Tensor:
    """The head's mix (`engine.model.HeadMix`): h act [..., hc, D] -> act [..., D] with
    pre = sigmoid(mixes·scale + base) + hc_eps (no Sinkhorn), fn fp32 [hc, hc·D], scale
    fp32 [1], base fp32 [hc]."""
    if h.dim() < 2:
        raise NativeArgumentError(f"argument `h`: shape {tuple(h.shape)}, expected [..., hc, D]")
    (hc, d), lead = h.shape[-2:], h.shape[:-2]
    _explain(h=(h, _ACT, None), fn=(fn, (_F32,), (hc, hc * d)), scale=(scale, (_F32,), (1,)),
             base=(base, (_F32,), (hc,)))  # fmt: skip
    h = h.contiguous()
    y = torch.empty((*lead, d), dtype=h.dtype)
    if t := y.numel() // max(d, 1):
        _kernels().head(h.data_ptr(), fn.contiguous().data_ptr(), scale.data_ptr(),
                        base.data_ptr(), y.data_ptr(), t, hc, d, norm_eps, hc_eps,
                        h.dtype == torch.bfloat16)  # fmt: skip
    return y
