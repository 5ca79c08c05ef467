"""Random DeepSeek-V4 checkpoints in exactly the real layout, for tests, benchmarks and demos.

`write_tiny_checkpoint` writes `config.json` (every key of the real configs),
`generation_config.json`, a few `model-0000i-of-0000n.safetensors` shards and
`model.safetensors.index.json`. Tensor names, dtypes and packing follow SPEC §3.2–3.3: FP8
e4m3 linears with 128x128 e8m0 block scales, FP4 routed experts (low nibble first) with one
e8m0 scale per 32, `tid2eid` I64, F32 `hc_*` / `attn_sink` / `ape` / `gate.bias`, BF16 rest.

Values are random (the model's output is noise), scaled like the golden tiny checkpoint so
activations stay well conditioned through the layers: most linears ~ N(0, 1/fan_in), large
expert gate/up weights (so the SwiGLU clamp matters) with small down projections, norm
weights ~ 1 + N(0, 0.1^2). Each tensor has its own generator seeded from (seed, name), so a
checkpoint is a pure function of (preset, seed) and is written one tensor at a time.

The folder appears complete or not at all: the files are written into a hidden sibling folder
that is renamed into place at the end, and removed if anything fails (Ctrl-C included).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from dsv4.engine.config import ModelArgs, from_hf_config
from dsv4.engine.errors import EngineError
from dsv4.engine.inventory import ST_DTYPE_NAMES, TensorSpec, expected_tensors
from dsv4.kernels.formats import quantize_fp4_weight, quantize_fp8_weight

Preset = Literal["small", "medium"]
# Called after each tensor is written: (bytes written so far, bytes in all shards).
Progress = Callable[[int, int], None]


class TinyTargetError(EngineError, ValueError):
    """The output folder for a tiny checkpoint cannot be used (a file, or not empty)."""


# The golden tiny checkpoint's dimensions (vocab, RoPE and quantization settings are real).
_SMALL: dict[str, Any] = {
    "hidden_size": 128, "num_hidden_layers": 4, "compress_ratios": [0, 4, 128, 4, 0],
    "num_hash_layers": 2, "num_attention_heads": 4, "q_lora_rank": 128, "o_groups": 2,
    "o_lora_rank": 128, "n_routed_experts": 8, "num_experts_per_tok": 2,
    "moe_intermediate_size": 128, "index_n_heads": 32, "index_topk": 16, "sliding_window": 16,
}  # fmt: skip
# ~177 M parameters (+7 M MTP), three quarters of them in embed + head (the real vocabulary);
# every layer kind, 8 heads per output group as in the real models, 16 experts top-4.
_MEDIUM: dict[str, Any] = {
    "hidden_size": 512, "num_hidden_layers": 6, "compress_ratios": [0, 4, 128, 4, 128, 4, 0],
    "num_hash_layers": 2, "num_attention_heads": 8, "q_lora_rank": 256, "o_groups": 1,
    "o_lora_rank": 256, "n_routed_experts": 16, "num_experts_per_tok": 4,
    "moe_intermediate_size": 128, "index_n_heads": 16, "index_topk": 64, "sliding_window": 128,
}  # fmt: skip
PRESETS: dict[str, dict[str, Any]] = {"small": _SMALL, "medium": _MEDIUM}
_SHARDS = {"small": 3, "medium": 4}

GENERATION_CONFIG = {"_from_model_config": True, "bos_token_id": 0, "eos_token_id": 1,
                     "do_sample": True, "temperature": 1.0, "top_p": 1.0,
                     "transformers_version": "4.46.3"}  # fmt: skip


def hf_config(preset: Preset) -> dict[str, Any]:
    """The `config.json` of a preset: the real Flash keys and settings, with tiny dimensions."""
    if preset not in PRESETS:
        raise ValueError(f"unknown tiny preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg: dict[str, Any] = {
        "architectures": ["DeepseekV4ForCausalLM"], "attention_bias": False,
        "attention_dropout": 0.0, "bos_token_id": 0, "eos_token_id": 1, "expert_dtype": "fp4",
        "hc_eps": 1e-06, "hc_mult": 4, "hc_sinkhorn_iters": 20, "head_dim": 512,
        "hidden_act": "silu", "index_head_dim": 128, "initializer_range": 0.02,
        "max_position_embeddings": 1048576, "model_type": "deepseek_v4",
        "n_shared_experts": 1, "norm_topk_prob": True, "num_key_value_heads": 1,
        "num_nextn_predict_layers": 1, "qk_rope_head_dim": 64,
        "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
                                "quant_method": "fp8", "scale_fmt": "ue8m0",
                                "weight_block_size": [128, 128]},
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 16,
                         "original_max_position_embeddings": 65536, "type": "yarn"},
        "rope_theta": 10000, "routed_scaling_factor": 1.5, "scoring_func": "sqrtsoftplus",
        "swiglu_limit": 10.0, "tie_word_embeddings": False, "topk_method": "noaux_tc",
        "torch_dtype": "bfloat16", "transformers_version": "4.57.1", "use_cache": True,
        "vocab_size": 129280, "compress_rope_theta": 160000,
    }  # fmt: skip
    cfg.update(PRESETS[preset])
    return cfg


def preset_args(preset: Preset) -> ModelArgs:
    return from_hf_config(hf_config(preset), source=f"tiny preset {preset!r}")


# -- values ----------------------------------------------------------------------------------

# Standard deviation times sqrt(fan_in) for each linear, read off the golden checkpoint.
_GAIN = {"wo_a": 1.6, "wo_b": 0.3, "wgate": 1.5, "head": 1.8, "shared_experts.w1": 3.0,
         "shared_experts.w3": 3.0, "shared_experts.w2": 0.012, "experts.w1": 4.6,
         "experts.w3": 4.6, "experts.w2": 0.016}  # fmt: skip


def _generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def _gain(module: str) -> float:
    parts = module.split(".")
    if "experts" in parts:  # routed: `...experts.<e>.w1` -> experts.w1
        key = "experts." + parts[-1]
    else:
        key = ".".join(parts[-2:]) if parts[-2:-1] == ["shared_experts"] else parts[-1]
    return _GAIN.get(key, 1.0)


def _normal(g: torch.Generator, shape: tuple[int, ...], std: float) -> torch.Tensor:
    # truncated at 3 sigma, like the golden weights (in place: embed/head are the bulk)
    return torch.randn(shape, generator=g).mul_(std).clamp_(-3 * std, 3 * std)


def _dense(module: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """An fp32 weight [out, in] for a linear named `module`."""
    return _normal(g, shape, _gain(module) / math.sqrt(shape[-1]))


def _plain(name: str, spec: TensorSpec, a: ModelArgs, g: torch.Generator) -> torch.Tensor:
    """A BF16 / F32 / I64 tensor (no scale companion)."""
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("norm.weight"):
        return 1 + 0.1 * torch.randn(spec.shape, generator=g)
    if name == "embed.weight":
        return torch.randn(spec.shape, generator=g)
    if leaf == "tid2eid":  # distinct experts per token: duplicates are a REF/HF-TF corner case
        return torch.rand(spec.shape[0], a.n_routed_experts, generator=g).argsort(-1)[
            :, : spec.shape[1]
        ]
    if leaf == "attn_sink":
        return torch.randn(spec.shape, generator=g) - 0.5
    if leaf == "ape":
        return 0.7 * torch.randn(spec.shape, generator=g)
    if leaf == "bias":  # gate.bias: selection only
        return 0.05 * torch.randn(spec.shape, generator=g)
    if leaf.endswith("_base"):
        return 0.4 * torch.randn(spec.shape, generator=g)
    if leaf.endswith("_scale"):  # hc_*_scale
        return 0.5 + torch.rand(spec.shape, generator=g)
    if leaf.endswith("_fn"):  # hc_*_fn [mix, hc*D]
        return _normal(g, spec.shape, 1 / math.sqrt(spec.shape[-1]))
    return _dense(name.removesuffix(".weight"), spec.shape, g)


def _tensor_pairs(name: str, spec: TensorSpec, a: ModelArgs, seed: int) -> dict[str, torch.Tensor]:
    """The stored tensor(s) for `name`: a quantized weight comes with its `.scale`."""
    g = _generator(seed, name)
    module = name.removesuffix(".weight")
    if spec.dtype in (torch.float8_e4m3fn, torch.int8):
        w = _dense(module, (spec.shape[0], _in(spec)), g)
        quant = quantize_fp8_weight if spec.dtype == torch.float8_e4m3fn else quantize_fp4_weight
        q, s = quant(w)
        return {name: q, f"{module}.scale": s}
    return {name: _plain(name, spec, a, g).to(spec.dtype)}


def _in(spec: TensorSpec) -> int:
    return spec.shape[1] * (2 if spec.dtype == torch.int8 else 1)


# -- writing ---------------------------------------------------------------------------------


def _shard_plan(specs: dict[str, TensorSpec], n_shards: int) -> list[list[str]]:
    """Split the tensors, in inventory order, into `n_shards` runs of about equal bytes."""
    total = sum(s.nbytes for s in specs.values())
    plan: list[list[str]] = [[] for _ in range(n_shards)]
    done = 0
    for name, spec in specs.items():
        i = min(n_shards - 1, done * n_shards // total)
        plan[i].append(name)
        done += spec.nbytes
    return [names for names in plan if names]


def _write_shard(path: Path, names: list[str], specs: dict[str, TensorSpec],
                 make: Callable[[str], torch.Tensor],
                 on_written: Callable[[int], None]) -> None:  # fmt: skip
    """Write one safetensors file, generating each tensor only when its bytes are due."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        spec = specs[name]
        header[name] = {"dtype": ST_DTYPE_NAMES[spec.dtype], "shape": list(spec.shape),
                        "data_offsets": [offset, offset + spec.nbytes]}  # fmt: skip
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in names:
            t = make(name).contiguous()
            if tuple(t.shape) != specs[name].shape or t.dtype != specs[name].dtype:
                raise AssertionError(f"tiny: {name} came out {t.dtype} {list(t.shape)}")
            f.write(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            on_written(specs[name].nbytes)


def write_tiny_checkpoint(
    out_dir: str | Path, preset: Preset = "small", seed: int = 0, progress: Progress | None = None
) -> Path:
    """Write a random checkpoint of `preset` into `out_dir` and return the folder.

    `out_dir` must not exist or be an empty folder (`TinyTargetError` otherwise); its parents
    are created. Nothing is left at `out_dir` when writing fails or is interrupted.
    """
    out = Path(out_dir)
    _check_target(out)
    hf_config(preset)  # an unknown preset fails before anything is created
    if out.is_dir():  # empty (checked); perhaps the working directory: fill it in place
        partial = out / f".partial-{uuid.uuid4().hex[:8]}"
    else:  # a sibling, so the final rename stays on one file system (and is atomic)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    try:
        _write_files(partial, preset, seed, progress)
        _move_into_place(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def _move_into_place(partial: Path, out: Path) -> None:
    if partial.parent != out:
        os.replace(partial, out)
        return
    # Into an existing folder file by file, `config.json` last: until every shard is in
    # place the folder does not look like a checkpoint.
    for file in sorted(partial.iterdir(), key=lambda f: (f.name == "config.json", f.name)):
        os.replace(file, out / file.name)
    partial.rmdir()


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise TinyTargetError(f"{out} is a file; give a new folder for the checkpoint")
    if out.is_dir() and any(out.iterdir()):
        raise TinyTargetError(f"{out} exists and is not empty; choose a new folder")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise TinyTargetError(f"{out}: {parent} is a file, not a folder")


def _write_files(out: Path, preset: Preset, seed: int, progress: Progress | None) -> None:
    """Shards, index, config and generation config of one checkpoint, into `out`."""
    cfg = hf_config(preset)
    args = preset_args(preset)
    specs = expected_tensors(args)
    pending: dict[str, torch.Tensor] = {}  # a weight's scale, made together with it

    def make(name: str) -> torch.Tensor:
        if name not in pending:
            base = name.removesuffix(".scale") + ".weight" if name.endswith(".scale") else name
            pending.update(_tensor_pairs(base, specs[base], args, seed))
        return pending.pop(name)

    total = sum(s.nbytes for s in specs.values())
    done = 0

    def written(nbytes: int) -> None:
        nonlocal done
        done += nbytes
        if progress is not None:
            progress(done, total)

    plan = _shard_plan(specs, _SHARDS[preset])
    weight_map: dict[str, str] = {}
    for i, names in enumerate(plan, 1):
        file = f"model-{i:05d}-of-{len(plan):05d}.safetensors"
        _write_shard(out / file, names, specs, make, written)
        weight_map.update(dict.fromkeys(names, file))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
