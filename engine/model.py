"""The DeepSeek-V4 model (SPEC §4.1, §4.8, §4.9): embedding, hyper-connection streams,
blocks, hc_head, final norm and fp32 head; the MTP block is loaded and callable.

The model holds weights only; every per-sequence tensor lives in a `SequenceState`, so any
number of independent sessions can share one model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeVar

import torch

from dsv4.kernels.dispatch import pinned_mode
from dsv4.kernels.mhc import hc_head

from . import hugepages
from .block import Block
from .config import ModelArgs
from .numerics import Numerics
from .state import LayerState, SequenceState
from .weights import FP8Linear, Getter, linear_fp32, rms_norm

LogitRows = Literal["all", "last", "none"]
"""Which positions of a forward pass get logits."""

_B = TypeVar("_B")


@dataclass
class HeadMix:
    """hc_head: sigmoid-weighted sum of the streams (no Sinkhorn)."""

    fn: torch.Tensor  # fp32 [hc, hc·D]
    base: torch.Tensor  # fp32 [hc]
    scale: torch.Tensor  # fp32 [1]

    @classmethod
    def load(cls, get: Getter, prefix: str) -> HeadMix:
        return cls(get(f"{prefix}_fn").float(), get(f"{prefix}_base").float(),
                   get(f"{prefix}_scale").float())  # fmt: skip

    def __call__(self, h: torch.Tensor, norm_eps: float, hc_eps: float) -> torch.Tensor:
        """h act [S, hc, D] -> act [S, D] (`kernels.mhc.hc_head`: one C call on CPU)."""
        return hc_head(h, self.fn, self.scale, self.base, norm_eps, hc_eps)


@dataclass
class MTPBlock:
    """Multi-token prediction block `mtp.0`: a sliding-window, non-hash block fed with
    e_proj(enorm(embed(ids))) + h_proj(hnorm(h)) and its own hc_head and norm; it shares the
    main embedding and head."""

    block: Block
    e_proj: FP8Linear
    h_proj: FP8Linear
    enorm: torch.Tensor
    hnorm: torch.Tensor
    norm: torch.Tensor
    head_mix: HeadMix

    @classmethod
    def load(cls, get: Getter, prefix: str, args: ModelArgs, layer_id: int, device) -> MTPBlock:
        return cls(Block.load(get, prefix, args, layer_id, device),
                   FP8Linear.load(get, f"{prefix}.e_proj"), FP8Linear.load(get, f"{prefix}.h_proj"),
                   get(f"{prefix}.enorm.weight").float(), get(f"{prefix}.hnorm.weight").float(),
                   get(f"{prefix}.norm.weight").float(),
                   HeadMix.load(get, f"{prefix}.hc_head"))  # fmt: skip


@dataclass
class Model:
    args: ModelArgs
    numerics: Numerics
    embed: torch.Tensor  # bf16 [V, D]
    layers: list[Block]
    norm: torch.Tensor  # fp32 [D]
    head: torch.Tensor  # bf16 [V, D]; REF upcasts it to fp32, `linear_fp32` does so slab by slab
    head_mix: HeadMix
    mtp: list[MTPBlock] = field(default_factory=list)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def load(cls, get: Getter, args: ModelArgs, numerics: Numerics, device) -> Model:
        # Each block's small tensors go into one huge-page buffer as soon as it is built.
        layers = [_packed(Block.load(get, f"layers.{i}", args, i, device))
                  for i in range(args.n_layers)]  # fmt: skip
        mtp = [_packed(MTPBlock.load(get, f"mtp.{i}", args, args.n_layers + i, device))
               for i in range(args.n_mtp_layers)]  # fmt: skip
        return cls(args, numerics, get("embed.weight"), layers, get("norm.weight").float(),
                   get("head.weight"), HeadMix.load(get, "hc_head"), mtp,
                   torch.device(device))  # fmt: skip

    # -- state ---------------------------------------------------------------------------------
    def new_state(self) -> SequenceState:
        dt, dev = self.numerics.dtype, self.device
        return SequenceState(0, [b.attn.new_state(dt, dev) for b in self.layers],
                             [m.block.attn.new_state(dt, dev) for m in self.mtp])  # fmt: skip

    def new_session(self):
        """A fresh, independent sequence (see `Session`)."""
        from .session import Session

        return Session(self)

    # -- forward -------------------------------------------------------------------------------
    def logits(self, h: torch.Tensor, mix: HeadMix, norm: torch.Tensor) -> torch.Tensor:
        """Residual streams act [S, hc, D] -> fp32 logits [S, V] (every position)."""
        a = self.args
        y = rms_norm(mix(h, a.norm_eps, a.hc_eps), norm, a.norm_eps)
        return linear_fp32(y, self.head)

    @torch.inference_mode()
    def forward(
        self, ids: torch.Tensor, state: SequenceState, logits: LogitRows = "all"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ids int64 [S] at positions state.pos… -> (logits fp32 [S, V], pre-hc_head streams
        act [S, hc, D]); advances `state`. `logits`: "last" computes only the last row
        ([1, V]) and "none" none ([0, V]): the head over a long prompt's every position would
        cost more than the rest of the forward pass, and S x 129,280 fp32 values of memory."""
        with pinned_mode():
            return self._forward(ids, state, logits)

    def _forward(
        self, ids: torch.Tensor, state: SequenceState, logits: LogitRows
    ) -> tuple[torch.Tensor, torch.Tensor]:
        nx, start = self.numerics, state.pos
        h = self.embed[ids].to(nx.dtype)
        h = h.unsqueeze(1).expand(-1, self.args.hc_mult, -1).contiguous()
        for block, layer_state in zip(self.layers, state.layers, strict=True):
            h = block(h, ids, start, layer_state, nx)
        state.pos = start + ids.shape[0]
        if logits == "none":
            return torch.empty(0, self.args.vocab_size, dtype=torch.float32), h
        rows = h if logits == "all" else h[-1:]
        return self.logits(rows, self.head_mix, self.norm), h

    @torch.inference_mode()
    def mtp_forward(self, h: torch.Tensor, ids: torch.Tensor, start: int, state: LayerState,
                    depth: int = 0) -> torch.Tensor:  # fmt: skip
        """MTP block `depth`: main streams act [S, hc, D] (pre-hc_head) with the ids of the NEXT
        tokens [S] at positions start… -> fp32 logits [S, V] for the token after those."""
        with pinned_mode():
            return self._mtp_forward(h, ids, start, state, depth)

    def _mtp_forward(self, h, ids, start: int, state: LayerState, depth: int) -> torch.Tensor:
        m, nx, eps = self.mtp[depth], self.numerics, self.args.norm_eps
        e = rms_norm(self.embed[ids].to(nx.dtype), m.enorm, eps)
        x = m.e_proj(e, nx).unsqueeze(1) + m.h_proj(rms_norm(h, m.hnorm, eps), nx)
        x = m.block(x, ids, start, state, nx)
        return self.logits(x, m.head_mix, m.norm)


def _packed(block: _B) -> _B:
    hugepages.pack(block)
    return block
