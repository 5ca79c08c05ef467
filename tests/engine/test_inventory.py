"""engine/inventory.py: the tensor list and the costs derived from the real configs alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dsv4.engine.config import load_config
from dsv4.engine.inventory import (
    expected_tensors,
    kv_bytes,
    kv_bytes_per_token,
    kv_fixed_bytes,
    param_counts,
    totals,
)

DATA = Path(__file__).resolve().parents[1] / "data"
_REPO = Path(__file__).resolve().parents[2]
GIB = 2**30
ONE_M = 1_048_576


def real_config(name: str):
    return load_config(DATA / "configs" / f"DeepSeek-V4-{name}.config.json")


def golden_checkpoint() -> Path:
    for cand in (DATA / "golden/checkpoint", _REPO.parent / "shared/v4/golden/checkpoint"):
        if (cand / "model.safetensors.index.json").is_file():
            return cand
    pytest.skip("golden checkpoint not available")


@pytest.mark.parametrize(
    ("name", "count", "nbytes", "by_dtype"),
    [
        ("Flash", 69_187, 159_609_485_896,
         {"BF16": 433, "F32": 417, "F8_E4M3": 375, "F8_E8M0": 34_167, "I64": 3, "I8": 33_792}),
        ("Pro", 145_116, 864_704_792_696,
         {"BF16": 619, "F32": 590, "F8_E4M3": 528, "F8_E8M0": 71_952, "I64": 3, "I8": 71_424}),
    ],
)  # fmt: skip
def test_published_totals(name, count, nbytes, by_dtype):
    t = totals(expected_tensors(real_config(name)))
    assert (t.tensors, t.nbytes) == (count, nbytes)
    assert t.tensors_by_dtype == by_dtype


def test_flash_mtp_and_layer_shapes():
    a = real_config("Flash")
    specs = expected_tensors(a)
    assert sum(n.startswith("mtp.0.") for n in specs) == 1575
    assert not any(n.startswith("mtp.0.emb") for n in specs)
    assert specs["layers.0.attn.wo_a.scale"].shape == (64, 32)
    assert specs["layers.0.ffn.gate.tid2eid"].shape == (129280, 6)
    assert specs["layers.3.ffn.gate.bias"].dtype == torch.float32
    assert specs["layers.2.attn.compressor.ape"].shape == (4, 1024)
    assert specs["layers.3.attn.compressor.ape"].shape == (128, 512)
    assert "layers.3.attn.indexer.wq_b.weight" not in specs
    assert specs["layers.2.ffn.experts.255.w2.weight"].shape == (4096, 1024)
    assert specs["layers.2.ffn.experts.255.w2.scale"].shape == (4096, 64)
    main = expected_tensors(a, include_mtp=False)
    assert len(specs) - len(main) == 1575


@pytest.mark.parametrize(
    ("name", "total", "mtp", "routed", "active", "active_emb"),
    [("Flash", 284.33, 6.61, 277.0, 13.27, 13.80), ("Pro", 1573.0, 25.84, 1547.4, 48.85, 49.78)],
)
def test_param_counts(name, total, mtp, routed, active, active_emb):
    p = param_counts(real_config(name))
    assert p.total / 1e9 == pytest.approx(total, abs=0.01)
    assert p.mtp / 1e9 == pytest.approx(mtp, abs=0.01)
    assert p.routed_experts / 1e9 == pytest.approx(routed, abs=0.1)
    # one embedding row per token: the `model info` figure (~13.3 B / ~48.9 B)
    assert p.active / 1e9 == pytest.approx(active, abs=0.01)
    # the whole embedding table counted, as SPEC §3.1 does (~13.8 B / ~49.8 B)
    assert p.active_with_embedding / 1e9 == pytest.approx(active_emb, abs=0.01)


@pytest.mark.parametrize(
    ("name", "ref", "packed", "packed_fp4", "ref_gib", "packed_gib"),
    [("Flash", 6880, 3850, 3514, 6.72, 3.76), ("Pro", 9848, 5511, 5031, 9.62, 5.38)],
)
def test_kv_cache_figures(name, ref, packed, packed_fp4, ref_gib, packed_gib):
    a = real_config(name)
    assert kv_bytes_per_token(a, "ref") == ref
    assert int(kv_bytes_per_token(a, "packed")) == packed
    assert int(kv_bytes_per_token(a, "packed_fp4")) == packed_fp4
    assert kv_bytes(a, ONE_M, "ref") / GIB == pytest.approx(ref_gib, abs=0.005)
    assert kv_bytes(a, ONE_M, "packed") / GIB == pytest.approx(packed_gib, abs=0.005)


def test_kv_fixed_costs_flash():
    # 43 windows of 128 x 1 KiB, 21 CSA (64 + 16 KiB of states) and 20 HCA (512 KiB)
    a = real_config("Flash")
    assert kv_fixed_bytes(a, "ref") == (43 * 128 + 21 * 80 + 20 * 512) * 1024


def test_golden_checkpoint_matches_inventory():
    from safetensors import safe_open

    ckpt = golden_checkpoint()
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    expected = expected_tensors(load_config(ckpt))
    actual = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(ckpt / shard, "pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                actual[name] = (tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype())
    assert set(actual) == set(expected)
    names = {torch.bfloat16: "BF16", torch.float32: "F32", torch.int64: "I64", torch.int8: "I8",
             torch.float8_e4m3fn: "F8_E4M3", torch.float8_e8m0fnu: "F8_E8M0"}  # fmt: skip
    for name, spec in expected.items():
        assert actual[name] == (spec.shape, names[spec.dtype]), name
    assert totals(expected).nbytes == index["metadata"]["total_size"]
