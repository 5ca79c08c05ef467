"""One transformer block with manifold-constrained hyper-connections (SPEC §4.2):
`h → hc_pre → attn_norm → attention → hc_post → hc_pre → ffn_norm → MoE → hc_post`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dsv4.kernels.mhc import hc_post, hc_pre

from .attention import Attention
from .attention_step import thread_step
from .block_step import BlockStep
from .config import ModelArgs
from .moe import MoE
from .numerics import Numerics
from .state import LayerState
from .weights import Getter, rms_norm


@dataclass
class HyperConnection:
    """The mixing parameters of one hc_pre/hc_post pair (fp32)."""

    fn: torch.Tensor  # [(2+hc)·hc, hc·D]
    base: torch.Tensor  # [(2+hc)·hc]
    scale: torch.Tensor  # [3]

    @classmethod
    def load(cls, get: Getter, prefix: str) -> HyperConnection:
        return cls(get(f"{prefix}_fn").float(), get(f"{prefix}_base").float(),
                   get(f"{prefix}_scale").float())  # fmt: skip


@dataclass
class Block:
    attn: Attention
    ffn: MoE
    attn_norm: torch.Tensor  # fp32 [D]
    ffn_norm: torch.Tensor  # fp32 [D]
    hc_attn: HyperConnection
    hc_ffn: HyperConnection
    args: ModelArgs
    # one step per thread: a step's scratch rows are written by each call
    _steps: dict[int, BlockStep | None] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, get: Getter, prefix: str, args: ModelArgs, layer_id: int, device) -> Block:
        ratio = args.compress_ratios[layer_id]
        return cls(Attention.load(get, f"{prefix}.attn", args, ratio, device),
                   MoE.load(get, f"{prefix}.ffn", args, args.is_hash_layer(layer_id)),
                   get(f"{prefix}.attn_norm.weight").float(),
                   get(f"{prefix}.ffn_norm.weight").float(),
                   HyperConnection.load(get, f"{prefix}.hc_attn"),
                   HyperConnection.load(get, f"{prefix}.hc_ffn"), args)  # fmt: skip

    def _step_for(self, h: torch.Tensor, nx: Numerics) -> BlockStep | None:
        return thread_step(self._steps, BlockStep, self, h, nx)

    def _mix(self, h: torch.Tensor, hc: HyperConnection):
        a = self.args
        return hc_pre(
            h, hc.fn, hc.scale, hc.base, a.hc_mult, a.hc_sinkhorn_iters, a.norm_eps, a.hc_eps
        )

    def __call__(self, h: torch.Tensor, ids: torch.Tensor, start: int, state: LayerState,
                 nx: Numerics) -> torch.Tensor:  # fmt: skip
        """h act [S, hc, D] (the residual streams) -> act [S, hc, D]."""
        if h.shape[0] == 1 and (step := self._step_for(h, nx)) is not None:
            return step(h, ids, start, state, nx)  # the same C calls, bound once
        eps = self.args.norm_eps
        x, post, comb = self._mix(h, self.hc_attn)
        x = self.attn(rms_norm(x, self.attn_norm, eps), start, state, nx)
        h = hc_post(x, h, post, comb)
        x, post, comb = self._mix(h, self.hc_ffn)
        x = self.ffn(rms_norm(x, self.ffn_norm, eps), ids, nx)
        return hc_post(x, h, post, comb)
