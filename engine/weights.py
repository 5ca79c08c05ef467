"""Weight holders that keep the checkpoint's storage format and dequantize on the fly.

FP8 linears stay `float8_e4m3fn` + ue8m0 128×128 block scales, routed experts stay packed FP4
+ ue8m0 per-32 scales (stacked `[E, ...]` per layer, the layout the `moe` kernel takes), and
bf16 tensors stay bf16, so a model never needs its full bf16 size in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dsv4.kernels.gemm import (
    bf16_matmul_fp32,
    block_scales_fp32,
    dequantize_fp8,
    fp8_gemm_kept,
    fp8_matmul,
    slab_matmul,
)
from dsv4.kernels.quant import act_quant

from .numerics import Numerics

Getter = Callable[[str], torch.Tensor]  # tensor name -> stored tensor on the target device


@dataclass
class FP8Linear:
    """`y = x·Wᵀ` for an FP8 weight [out, in] with e8m0 block scales [⌈out/128⌉, ⌈in/128⌉].

    `scale_fp32` holds the same scales decoded once at load: the torch GEMMs would otherwise
    decode them on every call (dozens of calls per token), and they are 1/4096 of the weight's
    size. The e8m0 bytes stay for the Triton kernels.
    """

    weight: torch.Tensor
    scale: torch.Tensor
    scale_fp32: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.scale_fp32 is None:
            self.scale_fp32 = block_scales_fp32(self.scale)

    @classmethod
    def load(cls, get: Getter, prefix: str) -> FP8Linear:
        return cls(get(f"{prefix}.weight"), get(f"{prefix}.scale"))

    def dequantized(self) -> torch.Tensor:
        """Exact fp32 [out, in]."""
        return dequantize_fp8(self.weight, self.scale_fp32)

    def __call__(self, x: torch.Tensor, nx: Numerics) -> torch.Tensor:
        """x act [..., in] -> act [..., out]. With quant_sim: REF's FP8 act-quant + FP8 GEMM."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if nx.quant_sim:
            q, s = act_quant(x2, 128)
            y = fp8_gemm_kept(q, s, self.weight, self.scale, self.scale_fp32, x.dtype)
        else:
            exact = x.dtype == torch.bfloat16
            y = fp8_matmul(x2.float(), self.weight, self.scale_fp32, bf16_exact=exact)
            y = y.to(x.dtype)
        return y.view(*lead, -1)


def linear_act(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A plain linear in the activation dtype (bf16 weights such as `weights_proj`)."""
    return F.linear(x, weight.to(x.dtype))


def linear_fp32(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A linear with fp32 input and weight (REF upcasts gate, compressor and head weights).
    bf16 weights are upcast slab by slab, never as a whole fp32 copy."""
    lead, x2 = x.shape[:-1], x.reshape(-1, x.shape[-1])
    if weight.dtype == torch.float32:
        return F.linear(x2.float(), weight).view(*lead, -1)
    if x2.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16:
        return bf16_matmul_fp32(x2, weight).view(*lead, -1)
    y = slab_matmul(x2.float(), weight.shape[0], lambda lo, hi: weight[lo:hi].float())
    return y.view(*lead, -1)


@dataclass
class ExpertBank:
    """The routed experts of one layer, FP4-packed and stacked: w1/w3 int8 [E, I, D/2],
    w2 int8 [E, D, I/2], each with e8m0 scales [E, out, in/32]."""

    w1: torch.Tensor
    w1_s: torch.Tensor
    w3: torch.Tensor
    w3_s: torch.Tensor
    w2: torch.Tensor
    w2_s: torch.Tensor

    @classmethod
    def load(cls, get: Getter, prefix: str, n_experts: int) -> ExpertBank:
        parts = {}
        for w in ("w1", "w3", "w2"):
            for suffix, key in (("weight", w), ("scale", f"{w}_s")):
                parts[key] = _stack([f"{prefix}.{e}.{w}.{suffix}" for e in range(n_experts)], get)
        return cls(**parts)


def _stack(names: list[str], get: Getter) -> torch.Tensor:
    """Load tensors one at a time into a preallocated [n, ...] buffer (no transient copy)."""
    first = get(names[0])
    out = torch.empty((len(names), *first.shape), dtype=first.dtype, device=first.device)
    out[0] = first
    del first
    for i, name in enumerate(names[1:], start=1):
        out[i] = get(name)
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """REF's RMSNorm: fp32 statistics and fp32 weight, result cast back to x's dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    return (weight * xf).to(x.dtype)
