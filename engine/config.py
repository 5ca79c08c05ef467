"""DeepSeek-V4 model configuration: the Hugging Face `config.json` mapped to `ModelArgs`.

`ModelArgs` keeps the reference implementation's field names (SPEC §2.4) so that code, spec
and checkpoint grep alike. `from_hf_config` is the one place that maps HF keys to fields;
`__post_init__` validates and derives the per-layer kinds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from dsv4.engine.errors import ConfigError

LayerKind = Literal["swa", "csa", "hca"]
_KIND_OF_RATIO: dict[int, LayerKind] = {0: "swa", 4: "csa", 128: "hca"}


@dataclass(frozen=True)
class ModelArgs:
    """Architecture hyper-parameters (reference names; HF names in comments)."""

    vocab_size: int = 129280
    dim: int = 4096  # hidden_size
    moe_inter_dim: int = 2048  # moe_intermediate_size (routed and shared experts)
    n_layers: int = 43  # num_hidden_layers (main layers, MTP excluded)
    n_hash_layers: int = 3  # num_hash_layers: layers < this route through tid2eid
    n_mtp_layers: int = 1  # num_nextn_predict_layers
    n_heads: int = 64  # num_attention_heads
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    n_activated_experts: int = 6  # num_experts_per_tok
    score_func: Literal["sqrtsoftplus"] = "sqrtsoftplus"  # scoring_func
    route_scale: float = 1.5  # routed_scaling_factor
    swiglu_limit: float = 10.0
    q_lora_rank: int = 1024
    head_dim: int = 512  # one shared 512-dim KV head; K = V
    rope_head_dim: int = 64  # qk_rope_head_dim: the last 64 dims carry RoPE
    norm_eps: float = 1e-6  # rms_norm_eps (also the hc_pre RMS eps)
    o_groups: int = 8
    o_lora_rank: int = 1024
    window_size: int = 128  # sliding_window
    original_seq_len: int = 65536  # rope_scaling.original_max_position_embeddings
    rope_theta: float = 10000.0  # sliding-only layers: no YaRN
    rope_factor: float = 16.0  # rope_scaling.factor (compressed layers, YaRN)
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    compress_rope_theta: float = 160000.0
    compress_ratios: tuple[int, ...] = ()  # one per main layer, then one per MTP layer
    index_n_heads: int = 64
    index_head_dim: int = 128
    index_topk: int = 512
    hc_mult: int = 4  # hyper-connection streams
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1e-6
    dtype: Literal["fp8"] = "fp8"  # quantization_config.fmt e4m3
    scale_fmt: Literal["ue8m0"] = "ue8m0"
    expert_dtype: Literal["fp4"] = "fp4"
    bos_token_id: int = 0
    eos_token_id: int = 1
    max_position_embeddings: int = 1048576
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        _validate(self)

    # -- derived -----------------------------------------------------------------------
    @property
    def layer_ratios(self) -> tuple[int, ...]:
        """Compression ratio of each main layer."""
        return self.compress_ratios[: self.n_layers]

    @property
    def mtp_ratios(self) -> tuple[int, ...]:
        return self.compress_ratios[self.n_layers :]

    @property
    def layer_kinds(self) -> tuple[LayerKind, ...]:
        """`swa` (ratio 0), `csa` (ratio 4, with indexer) or `hca` (ratio 128) per main layer."""
        return tuple(_KIND_OF_RATIO[r] for r in self.layer_ratios)

    @property
    def nope_head_dim(self) -> int:
        return self.head_dim - self.rope_head_dim

    def is_hash_layer(self, layer_id: int) -> bool:
        """Hash-routed (tid2eid) layers; the MTP layer (id >= n_layers) never is."""
        return layer_id < min(self.n_hash_layers, self.n_layers)

    def fingerprint(self) -> str:
        """A short stable hash of the architecture (for saved session states)."""
        data = {k: v for k, v in asdict(self).items() if k != "extra"}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _fail(key: str, problem: str, source: str) -> ConfigError:
    """An error naming the config.json key (fields are mapped back to their HF names)."""
    return ConfigError(f"{source}: key {_HF_NAME.get(key, key)!r}: {problem}")


def _validate(a: ModelArgs, source: str = "config") -> None:
    src = a.extra.get("_source", source)
    positive = (
        "vocab_size",
        "dim",
        "moe_inter_dim",
        "n_layers",
        "n_heads",
        "n_routed_experts",
        "n_activated_experts",
        "q_lora_rank",
        "head_dim",
        "rope_head_dim",
        "o_groups",
        "o_lora_rank",
        "window_size",
        "index_n_heads",
        "index_head_dim",
        "index_topk",
        "hc_mult",
        "hc_sinkhorn_iters",
    )
    for name in positive:
        value = getattr(a, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise _fail(name, f"must be a positive integer, got {value!r}", src)
    reals = (
        "route_scale",
        "swiglu_limit",
        "norm_eps",
        "rope_theta",
        "rope_factor",
        "beta_fast",
        "beta_slow",
        "compress_rope_theta",
        "hc_eps",
    )
    for name in reals:
        value = getattr(a, name)
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise _fail(name, f"must be a positive number, got {value!r}", src)
    n_total = a.n_layers + a.n_mtp_layers
    if len(a.compress_ratios) != n_total:
        raise _fail(
            "compress_ratios",
            f"has {len(a.compress_ratios)} entries; expected "
            f"num_hidden_layers + num_nextn_predict_layers = {n_total}",
            src,
        )
    for i, r in enumerate(a.compress_ratios):
        if r not in _KIND_OF_RATIO:
            raise _fail(
                "compress_ratios", f"entry {i} is {r!r}; supported ratios are 0, 4, 128", src
            )
    if a.rope_head_dim % 2 or a.rope_head_dim >= a.head_dim:
        raise _fail("qk_rope_head_dim", f"{a.rope_head_dim} must be even and < head_dim", src)
    if a.n_heads % a.o_groups:
        raise _fail(
            "o_groups", f"{a.o_groups} does not divide num_attention_heads {a.n_heads}", src
        )
    if a.n_activated_experts > a.n_routed_experts:
        raise _fail(
            "num_experts_per_tok",
            f"{a.n_activated_experts} > n_routed_experts {a.n_routed_experts}",
            src,
        )
    if not 0 <= a.n_hash_layers <= a.n_layers:
        raise _fail("num_hash_layers", f"{a.n_hash_layers} outside 0..{a.n_layers}", src)
    if a.index_head_dim < a.rope_head_dim:
        raise _fail("index_head_dim", f"{a.index_head_dim} < qk_rope_head_dim", src)
    if a.index_head_dim & (a.index_head_dim - 1):
        raise _fail("index_head_dim", f"{a.index_head_dim} is not a power of two (Hadamard)", src)


# -- Hugging Face config.json ----------------------------------------------------------------

_RENAMES = {  # HF key -> ModelArgs field (SPEC §2.4)
    "hidden_size": "dim",
    "moe_intermediate_size": "moe_inter_dim",
    "num_hidden_layers": "n_layers",
    "num_hash_layers": "n_hash_layers",
    "num_nextn_predict_layers": "n_mtp_layers",
    "num_attention_heads": "n_heads",
    "num_experts_per_tok": "n_activated_experts",
    "scoring_func": "score_func",
    "routed_scaling_factor": "route_scale",
    "qk_rope_head_dim": "rope_head_dim",
    "sliding_window": "window_size",
    "rms_norm_eps": "norm_eps",
}
_HF_NAME = {field: key for key, field in _RENAMES.items()} | {
    "rope_factor": "rope_scaling.factor",
    "beta_fast": "rope_scaling.beta_fast",
    "beta_slow": "rope_scaling.beta_slow",
    "original_seq_len": "rope_scaling.original_max_position_embeddings",
}
_SAME = (
    "vocab_size",
    "n_routed_experts",
    "n_shared_experts",
    "swiglu_limit",
    "q_lora_rank",
    "head_dim",
    "o_groups",
    "o_lora_rank",
    "rope_theta",
    "compress_rope_theta",
    "compress_ratios",
    "index_n_heads",
    "index_head_dim",
    "index_topk",
    "hc_mult",
    "hc_sinkhorn_iters",
    "hc_eps",
    "expert_dtype",
    "bos_token_id",
    "eos_token_id",
    "max_position_embeddings",
)
# Keys the engine reads only to check that they hold the one supported value.
_FIXED: dict[str, Any] = {
    "num_key_value_heads": 1,
    "hidden_act": "silu",
    "topk_method": "noaux_tc",
    "norm_topk_prob": True,
    "attention_bias": False,
}
_IGNORED = (
    "architectures",
    "attention_dropout",
    "initializer_range",
    "tie_word_embeddings",
    "torch_dtype",
    "dtype",
    "transformers_version",
    "use_cache",
    "model_type",
    "quantization_config",
    "rope_scaling",
)
_INT_FIELDS = {"compress_ratios"}


def from_hf_config(cfg: dict[str, Any], source: str = "config.json") -> ModelArgs:
    """Map a Hugging Face DeepSeek-V4 `config.json` dict to `ModelArgs`, validating it."""
    if cfg.get("model_type") != "deepseek_v4":
        raise _fail("model_type", f"{cfg.get('model_type')!r} is not 'deepseek_v4'", source)
    kw: dict[str, Any] = {}
    for hf_key, name in _RENAMES.items():
        if hf_key in cfg:
            kw[name] = cfg[hf_key]
    for name in _SAME:
        if name in cfg:
            kw[name] = cfg[name]
    for key, want in _FIXED.items():
        if key in cfg and cfg[key] != want:
            raise _fail(key, f"{cfg[key]!r} is not supported (only {want!r})", source)
    if "compress_ratios" not in cfg:
        raise _fail("compress_ratios", "missing (one entry per layer, MTP last)", source)
    ratios = cfg["compress_ratios"]
    if not isinstance(ratios, list):
        raise _fail("compress_ratios", f"must be a list of integers, got {ratios!r}", source)
    for i, r in enumerate(ratios):
        if not isinstance(r, int) or isinstance(r, bool):
            raise _fail("compress_ratios", f"entry {i} is {r!r}, not an integer", source)
    kw["compress_ratios"] = tuple(ratios)
    kw.update(_quantization(cfg, source))
    kw.update(_rope_scaling(cfg, source))
    if kw.get("score_func", "sqrtsoftplus") != "sqrtsoftplus":
        raise _fail("scoring_func", f"{kw['score_func']!r} is not supported", source)
    if kw.get("expert_dtype", "fp4") != "fp4":
        raise _fail(
            "expert_dtype",
            f"{kw['expert_dtype']!r} is not supported (instruct checkpoints use 'fp4')",
            source,
        )
    known = set(_RENAMES) | set(_SAME) | set(_FIXED) | set(_IGNORED) | {"compress_ratios"}
    extra = {k: v for k, v in cfg.items() if k not in known}
    extra["_source"] = source
    try:
        return ModelArgs(**kw, extra=extra)
    except TypeError as exc:  # wrong value types surface here
        raise ConfigError(f"{source}: {exc}") from exc


def _quantization(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    q = cfg.get("quantization_config")
    if q is None:
        raise _fail("quantization_config", "missing (FP8 e4m3 checkpoints expected)", source)
    if not isinstance(q, dict):
        raise _fail("quantization_config", f"must be an object, got {q!r}", source)
    want = {"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": "ue8m0"}
    for key, value in want.items():
        if q.get(key) != value:
            raise _fail(f"quantization_config.{key}", f"{q.get(key)!r} is not {value!r}", source)
    if list(q.get("weight_block_size", [])) != [128, 128]:
        raise _fail(
            "quantization_config.weight_block_size",
            f"{q.get('weight_block_size')!r} is not [128, 128]",
            source,
        )
    return {"dtype": "fp8", "scale_fmt": "ue8m0"}


def _rope_scaling(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    rs = cfg.get("rope_scaling")
    if rs is None:
        raise _fail("rope_scaling", "missing (YaRN settings of the compressed layers)", source)
    if not isinstance(rs, dict):
        raise _fail("rope_scaling", f"must be an object, got {rs!r}", source)
    kind = rs.get("type", rs.get("rope_type"))
    if kind != "yarn":
        raise _fail("rope_scaling.type", f"{kind!r} is not 'yarn'", source)
    out = {}
    for key, name in (
        ("factor", "rope_factor"),
        ("beta_fast", "beta_fast"),
        ("beta_slow", "beta_slow"),
        ("original_max_position_embeddings", "original_seq_len"),
    ):
        if key not in rs:
            raise _fail(f"rope_scaling.{key}", "missing", source)
        out[name] = rs[key]
    if not isinstance(out["original_seq_len"], int):
        raise _fail("rope_scaling.original_max_position_embeddings", "must be an integer", source)
    return out


def load_config(path: str | Path) -> ModelArgs:
    """Read `config.json` (a file, or a checkpoint folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no config.json (is this a DeepSeek-V4 checkpoint?)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return from_hf_config(cfg, source=str(path))
