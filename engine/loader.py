"""`load_model`: a checked checkpoint, loaded tensor by tensor onto the target device."""

from __future__ import annotations

import os

import torch

from dsv4.kernels import native
from dsv4.kernels.dispatch import kernels_mode

from .checkpoint import open_checkpoint
from .model import Model
from .numerics import Numerics


def load_model(
    path_or_hf_id: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    quant_sim: bool = True,
) -> Model:
    """Load a DeepSeek-V4 checkpoint (folder or local Hugging Face cache id; never downloads).

    The checkpoint is verified first (`CheckpointError` lists every problem), so a broken one
    never yields a half-loaded model. Weights keep their stored format (FP8/FP4 + scales, bf16)
    and are dequantized on the fly. `dtype` is the activation dtype (bf16 or fp32);
    `quant_sim=False` switches REF's quantization simulation off.
    """
    numerics = Numerics(dtype, quant_sim)
    device = torch.device(device)
    if device.type == "cpu" and kernels_mode() in ("auto", "native"):
        native.prebuild()  # a fresh install compiles its C kernels here, in parallel
    with open_checkpoint(path_or_hf_id) as ckpt:
        ckpt.check()

        def get(name: str) -> torch.Tensor:
            return ckpt.get(name, device)

        return Model.load(get, ckpt.args, numerics, device)
