"""How the engine computes: the activation dtype and whether REF's quantization is simulated."""

from __future__ import annotations

from dataclasses import dataclass

import torch

_ACT_DTYPES = (torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class Numerics:
    """Per-model numeric mode (SPEC §4.0, §6).

    dtype: activation dtype; bf16 is REF as shipped, fp32 turns every bf16 activation into
        fp32 (weights keep their stored values).
    quant_sim: reproduce REF's simulations (FP8 act-quant in FP8/FP4 linears, the KV nope-dim
        FP8 round trip, Hadamard + FP4 in the indexer). Off: weights are dequantized exactly
        and those steps are identities; everything else is unchanged.
    """

    dtype: torch.dtype = torch.bfloat16
    quant_sim: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in _ACT_DTYPES:
            raise ValueError(f"dtype={self.dtype}: supported activation dtypes are "
                             "torch.bfloat16 and torch.float32")  # fmt: skip
