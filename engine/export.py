"""Export a checkpoint with every weight dequantized exactly (FP8/FP4 values times their
scales), under the same tensor names: the form other frameworks (e.g. transformers'
`DeepseekV4ForCausalLM` without an FP8 backend) load directly. Used by the oracle test and
the CPU benchmark's baseline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from dsv4.kernels.formats import dequantize_fp4_weight, dequantize_fp8_weight

from .checkpoint import open_checkpoint


def export_dequantized(
    src: str | os.PathLike[str], out: str | os.PathLike[str], dtype: torch.dtype = torch.float32
) -> Path:
    """Write `out`/model.safetensors (floats in `dtype`, tid2eid kept int64) and a config.json
    without `quantization_config`; returns `out`."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    with open_checkpoint(src) as ckpt:
        for name in ckpt.names():
            t = ckpt.get(name)
            if t.dtype == torch.float8_e8m0fnu:
                continue  # folded into its weight below
            scale = name.removesuffix("weight") + "scale"
            if t.dtype == torch.float8_e4m3fn:
                t = dequantize_fp8_weight(t, ckpt.get(scale))
            elif t.dtype == torch.int8:
                t = dequantize_fp4_weight(t, ckpt.get(scale))
            if t.is_floating_point():
                t = t.to(dtype)
            tensors[name] = t.contiguous()
        cfg = json.loads((ckpt.path / "config.json").read_text())
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg.pop("quantization_config", None)
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out
