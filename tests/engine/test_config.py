"""engine/config.py: the real configs parse completely; bad configs fail naming the key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dsv4.engine.config import from_hf_config, load_config
from dsv4.engine.errors import ConfigError

DATA = Path(__file__).resolve().parents[1] / "data"


def real(name: str) -> dict:
    return json.loads((DATA / "configs" / f"DeepSeek-V4-{name}.config.json").read_text())


def test_flash_every_key_parsed():
    cfg = real("Flash")
    a = from_hf_config(cfg)
    assert (a.dim, a.n_layers, a.n_heads, a.q_lora_rank, a.o_groups) == (4096, 43, 64, 1024, 8)
    assert (a.moe_inter_dim, a.n_routed_experts, a.route_scale, a.index_topk) == (
        2048,
        256,
        1.5,
        512,
    )
    assert (a.n_hash_layers, a.n_mtp_layers, a.n_activated_experts, a.n_shared_experts) == (
        3,
        1,
        6,
        1,
    )
    assert (a.head_dim, a.rope_head_dim, a.index_head_dim, a.index_n_heads) == (512, 64, 128, 64)
    assert (a.o_lora_rank, a.window_size, a.swiglu_limit, a.hc_mult) == (1024, 128, 10.0, 4)
    assert (a.hc_sinkhorn_iters, a.hc_eps, a.norm_eps) == (20, 1e-6, 1e-6)
    assert (a.rope_theta, a.compress_rope_theta, a.rope_factor) == (10000, 160000, 16)
    assert (a.beta_fast, a.beta_slow, a.original_seq_len) == (32, 1, 65536)
    assert (a.vocab_size, a.bos_token_id, a.eos_token_id) == (129280, 0, 1)
    assert (a.max_position_embeddings, a.expert_dtype, a.scale_fmt) == (1048576, "fp4", "ue8m0")
    assert a.compress_ratios == tuple(cfg["compress_ratios"])
    # every key is mapped, checked or deliberately ignored: nothing left over
    assert set(a.extra) == {"_source"}


def test_flash_layer_kinds():
    a = from_hf_config(real("Flash"))
    kinds = a.layer_kinds
    assert len(kinds) == 43 and a.mtp_ratios == (0,)
    assert kinds[:2] == ("swa", "swa")
    assert [kinds.count(k) for k in ("swa", "csa", "hca")] == [2, 21, 20]
    assert all(kinds[i] == "csa" for i in range(2, 43, 2))
    assert [a.is_hash_layer(i) for i in (0, 2, 3, 43)] == [True, True, False, False]


def test_pro_layer_kinds():
    a = from_hf_config(real("Pro"))
    assert (a.dim, a.n_layers, a.n_heads, a.o_groups, a.n_routed_experts) == (
        7168,
        61,
        128,
        16,
        384,
    )
    assert [a.layer_kinds.count(k) for k in ("swa", "csa", "hca")] == [0, 30, 31]
    assert a.layer_kinds[:2] == ("hca", "hca")


def test_fingerprint_stable_and_distinct():
    flash, pro = from_hf_config(real("Flash")), from_hf_config(real("Pro"))
    assert flash.fingerprint() == from_hf_config(real("Flash")).fingerprint()
    assert flash.fingerprint() != pro.fingerprint()


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        ({"model_type": "deepseek_v3"}, "model_type"),
        ({"compress_ratios": [0, 4]}, "compress_ratios"),
        ({"compress_ratios": [0, 0] + [4, 64] * 20 + [4, 0]}, "compress_ratios"),
        ({"o_groups": 7}, "o_groups"),
        ({"num_experts_per_tok": 300}, "num_experts_per_tok"),
        ({"num_hash_layers": 50}, "num_hash_layers"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_key_value_heads": 8}, "num_key_value_heads"),
        ({"scoring_func": "softmax"}, "scoring_func"),
        ({"expert_dtype": "fp8"}, "expert_dtype"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"index_head_dim": 96}, "index_head_dim"),
        ({"qk_rope_head_dim": 63}, "qk_rope_head_dim"),
    ],
)
def test_bad_values_name_the_key(edit, key):
    cfg = real("Flash") | edit
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        from_hf_config(cfg, source="cfg.json")


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        (("quantization_config", "fmt"), "e5m2", "quantization_config.fmt"),
        (
            ("quantization_config", "weight_block_size"),
            [64, 64],
            "quantization_config.weight_block_size",
        ),
        (("rope_scaling", "type"), "linear", "rope_scaling.type"),
        (("rope_scaling", "factor"), None, "rope_scaling.factor"),
    ],
)
def test_bad_nested_values_name_the_key(path, value, key):
    cfg = real("Flash")
    if value is None:
        del cfg[path[0]][path[1]]
    else:
        cfg[path[0]][path[1]] = value
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        from_hf_config(cfg)


@pytest.mark.parametrize("key", ["compress_ratios", "quantization_config", "rope_scaling"])
def test_missing_required_key(key):
    cfg = real("Flash")
    del cfg[key]
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        from_hf_config(cfg)


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ConfigError, match=r"config\.json: not valid JSON"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("compress_ratios", ["x"] * 44, "'compress_ratios': entry 0 is 'x'"),
        ("rope_scaling", "yarn", "'rope_scaling': must be an object"),
        ("quantization_config", "fp8", "'quantization_config': must be an object"),
        ("hidden_size", "4096", "'hidden_size': must be a positive integer"),
        ("swiglu_limit", "ten", "'swiglu_limit': must be a positive number"),
        ("sliding_window", 0, "'sliding_window': must be a positive integer"),
    ],
)
def test_bad_value_types_name_the_hf_key(key: str, value: object, message: str) -> None:
    cfg = json.loads((DATA / "configs" / "DeepSeek-V4-Flash.config.json").read_text())
    cfg[key] = value
    with pytest.raises(ConfigError, match=re.escape(message)):
        from_hf_config(cfg)
