"""Lightning indexer of the CSA layers (SPEC §4.6): picks the top-k compressed entries each
query attends to.

q_I = wq_b(qr) [S, ih, ihd] with RoPE on the last dims; its own ratio-4 compressor makes one
128-dim key per 4 tokens; with quant_sim both go through a Hadamard rotation and the FP4
round trip (the rotation is orthogonal: it only matters because of the FP4 rounding).
score[t, j] = Σ_h w[t, h]·relu(q_I[t, h]·k_j) with w = weights_proj(x)·(ihd·ih)^-½, all in
the act dtype; the top-k entries with j < (t+1)//4 are kept (ties: lower index). Scoring
and selection run as one tiled call, so memory stays bounded at long context.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from dsv4.kernels import quant_native
from dsv4.kernels.dispatch import native_lib
from dsv4.kernels.indexer import index_score_topk
from dsv4.kernels.quant import fp4_act_quant_dequant

from .compressor import Compressor
from .numerics import Numerics
from .rope import Rope, apply_rope
from .state import LayerState
from .weights import FP8Linear, Getter, linear_act


@functools.lru_cache(maxsize=4)
def _hadamard(n: int, device: str) -> torch.Tensor:
    """Sylvester Walsh–Hadamard matrix of ±1, fp32 [n, n] (symmetric: x·H = H·x)."""
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h.to(device)


def rotate(x: torch.Tensor) -> torch.Tensor:
    """Hadamard rotation H·x/√n of the last dim in fp32 (the ±1 sums first, then the scale,
    as the fast transform does), returned in x's dtype. On CPU a fast transform in C
    (`quant_native.hadamard_fp4`: the same sums in butterfly order)."""
    if x.dtype in quant_native.ACT and (lib := native_lib("quant", x)) is not None:
        return quant_native.hadamard_fp4(lib, x, fp4=False)
    n = x.shape[-1]
    return ((x.float() @ _hadamard(n, str(x.device))) * n**-0.5).to(x.dtype)


@dataclass
class Indexer:
    wq_b: FP8Linear  # [ih·ihd, q_lora_rank]
    weights_proj: torch.Tensor  # bf16 [ih, D]
    compressor: Compressor  # ratio 4, d = ihd
    n_heads: int
    head_dim: int
    topk: int

    @classmethod
    def load(cls, get: Getter, prefix: str, args) -> Indexer:
        comp = Compressor.load(get, f"{prefix}.compressor", 4, args.index_head_dim, args.norm_eps)
        return cls(FP8Linear.load(get, f"{prefix}.wq_b"), get(f"{prefix}.weights_proj.weight"),
                   comp, args.index_n_heads, args.index_head_dim, args.index_topk)  # fmt: skip

    def _simulate(self, t: torch.Tensor, nx: Numerics) -> torch.Tensor:
        """REF's Hadamard rotation then FP4 round trip of q or k (one C call on CPU)."""
        if not nx.quant_sim:
            return t
        if t.dtype in quant_native.ACT and (lib := native_lib("quant", t)) is not None:
            return quant_native.hadamard_fp4(lib, t, fp4=True, block=32)
        return fp4_act_quant_dequant(rotate(t), 32)

    def __call__(
        self,
        x: torch.Tensor,
        qr: torch.Tensor,
        start: int,
        state: LayerState,
        rope: Rope,
        nx: Numerics,
        tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x act [S, D], qr act [S, q_lora_rank] -> entry indices int32 [S, min(topk, n)]
        (−1: none visible). `tables`: (positions, cos, sin) of the chunk when the caller has
        them already (the attention of the same layer uses the same RoPE)."""
        seq = x.shape[0]
        if tables is None:
            pos = torch.arange(start, start + seq, device=x.device)
            tables = (pos, *rope.tables(pos))
        pos, cos, sin = tables
        q = self.wq_b(qr, nx).view(seq, self.n_heads, self.head_dim)
        q = self._simulate(apply_rope(q, cos, sin), nx)
        keys, state.index_compressor = self.compressor(x, start, state.index_compressor, rope)
        if keys.shape[0]:  # a new key every 4 tokens
            state.index_keys.append(self._simulate(keys, nx))
        w = linear_act(x, self.weights_proj) * (self.head_dim**-0.5 * self.n_heads**-0.5)
        # Tiled on the torch path: the [S, ih, n] product is never materialized whole.
        entries = state.index_keys.valid()[None]
        return index_score_topk(q[None], entries, w[None], pos, 4, self.topk)[0]
