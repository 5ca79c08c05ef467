"""Mixture of experts of one layer (SPEC §4.7): gate, routed FP4 experts, clamped shared expert.

Gate: fp32 logits, s = sqrt(softplus(logits)). Hash layers take their experts from
`tid2eid[token_id]`; the others take the top-k of s + bias (the bias only selects). Routing
weights are s[idx] / Σ s[idx] · route_scale. Routed outputs accumulate in fp32, the shared
expert (FP8, with the same SwiGLU clamp) is added, and the sum is cast to the act dtype once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dsv4.kernels import gemm_native, route_native
from dsv4.kernels.dispatch import native_lib
from dsv4.kernels.moe import moe

from .config import ModelArgs
from .numerics import Numerics
from .weights import (
    NATIVE_MAX_ROWS,
    ExpertBank,
    FP8Linear,
    Getter,
    fp8_linears,
    linear_bf16_valued,
    native_gemm,
    stack_dense,
)


@dataclass
class SharedExpert:
    w1: FP8Linear
    w2: FP8Linear
    w3: FP8Linear
    limit: float
    w13: torch.Tensor | None = None  # w1's and w3's kept dense weights, stacked (a view each)

    def __post_init__(self) -> None:
        if self.w13 is None:
            self.w13 = stack_dense((self.w1, self.w3))

    def __call__(self, x: torch.Tensor, nx: Numerics) -> torch.Tensor:
        """x act [S, D] -> act [S, D]; SwiGLU in fp32 with REF's clamps."""
        if (lib := native_gemm(x, self.w1.weight)) is not None:  # decode: one C call
            w1, w3, w2 = ((w.weight, w.scale_fp32) for w in (self.w1, self.w3, self.w2))
            return gemm_native.fp8_swiglu(lib, x, w1, w3, w2, self.limit, nx.quant_sim)
        g, u = (y.float() for y in fp8_linears(x, (self.w1, self.w3), nx, self.w13))
        if self.limit > 0:
            u = u.clamp(-self.limit, self.limit)
            g = g.clamp(max=self.limit)
        return self.w2((F.silu(g) * u).to(x.dtype), nx)


@dataclass
class MoE:
    gate: torch.Tensor  # fp32 [E, D] (bf16 in the file; REF multiplies in fp32)
    bias: torch.Tensor | None  # fp32 [E] (non-hash layers)
    tid2eid: torch.Tensor | None  # int64 [vocab, k] (hash layers)
    experts: ExpertBank
    shared: SharedExpert
    topk: int
    route_scale: float
    limit: float

    @classmethod
    def load(cls, get: Getter, prefix: str, args: ModelArgs, hashed: bool) -> MoE:
        g = f"{prefix}.gate"
        shared = SharedExpert(*(FP8Linear.load(get, f"{prefix}.shared_experts.{w}")
                                for w in ("w1", "w2", "w3")), args.swiglu_limit)  # fmt: skip
        return cls(get(f"{g}.weight").float(), None if hashed else get(f"{g}.bias").float(),
                   get(f"{g}.tid2eid").long() if hashed else None,
                   ExpertBank.load(get, f"{prefix}.experts", args.n_routed_experts), shared,
                   args.n_activated_experts, args.route_scale, args.swiglu_limit)  # fmt: skip

    def route(self, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x act [S, D], ids [S] -> (expert ids int64 [S, k], weights fp32 [S, k])."""
        if x.shape[0] <= NATIVE_MAX_ROWS and (lib := native_lib("route", x, ids)) is not None:
            return route_native.route(lib, x, self.gate, self.bias, self.tid2eid, ids,
                                      self.topk, self.route_scale)  # fmt: skip
        scores = F.softplus(linear_bf16_valued(x, self.gate)).sqrt()
        if self.tid2eid is not None:
            idx = self.tid2eid[ids]
        else:
            idx = (scores + self.bias).topk(self.topk, dim=-1).indices
        w = scores.gather(1, idx)
        return idx, w / w.sum(-1, keepdim=True) * self.route_scale

    def __call__(self, x: torch.Tensor, ids: torch.Tensor, nx: Numerics) -> torch.Tensor:
        idx, w = self.route(x, ids)
        e = self.experts
        y = moe(x, idx, w, e.w1, e.w1_s, e.w3, e.w3_s, e.w2, e.w2_s, self.limit, nx.quant_sim)
        return (y + self.shared(x, nx).float()).to(x.dtype)
