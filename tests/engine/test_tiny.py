"""engine/tiny.py: random checkpoints in the real layout."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from dsv4.engine.checkpoint import open_checkpoint
from dsv4.engine.inventory import expected_tensors, param_counts, totals
from dsv4.engine.tiny import hf_config, preset_args, write_tiny_checkpoint
from dsv4.kernels.formats import dequantize_fp4_weight, dequantize_fp8_weight

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("small"), "small", seed=0)


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_small_verifies_clean(small):
    with open_checkpoint(small) as ckpt:
        assert ckpt.verify() == []
        assert ckpt.args == preset_args("small")
    index = json.loads((small / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3
    assert index["metadata"]["total_size"] == totals(expected_tensors(ckpt.args)).nbytes


def test_config_has_every_real_key(small):
    real = json.loads((DATA / "configs/DeepSeek-V4-Flash.config.json").read_text())
    cfg = json.loads((small / "config.json").read_text())
    assert set(cfg) == set(real)
    assert cfg["quantization_config"] == real["quantization_config"]
    assert cfg["rope_scaling"] == real["rope_scaling"]
    gen = json.loads((small / "generation_config.json").read_text())
    assert gen == json.loads((DATA / "configs/generation_config.json").read_text())


def test_small_matches_golden_config():
    here = Path(__file__).resolve()
    cands = (DATA / "golden", here.parents[3] / "shared/v4/golden")
    golden = next((c / "checkpoint/config.json" for c in cands if c.is_dir()), None)
    if golden is None:
        pytest.skip("golden checkpoint not available")
    assert hf_config("small") == json.loads(golden.read_text())


def test_dtypes_and_value_ranges(small):
    with open_checkpoint(small) as ckpt:
        dtypes = {ckpt.spec(n).dtype for n in ckpt.names()}
        assert dtypes == {torch.bfloat16, torch.float32, torch.int64, torch.int8,
                          torch.float8_e4m3fn, torch.float8_e8m0fnu}  # fmt: skip
        wq = dequantize_fp8_weight(
            ckpt.get("layers.1.attn.wq_a.weight"), ckpt.get("layers.1.attn.wq_a.scale")
        )
        assert 0.05 < wq.std().item() < 0.15  # ~1/sqrt(128)
        w1 = ckpt.get("layers.1.ffn.experts.5.w1.weight")
        up = dequantize_fp4_weight(w1, ckpt.get("layers.1.ffn.experts.5.w1.scale"))
        assert up.shape == (128, 128) and 0.2 < up.std().item() < 0.6
        tid = ckpt.get("layers.0.ffn.gate.tid2eid")
        assert tid.dtype == torch.int64 and tid.min() >= 0 and tid.max() < 8
        assert (tid[:, 0] != tid[:, 1]).all()  # distinct experts per token
        norm = ckpt.get("layers.2.attn_norm.weight").float()
        assert 0.9 < norm.mean().item() < 1.1
        assert ckpt.get("layers.2.ffn.gate.bias").dtype == torch.float32


def test_medium_parameter_range():
    p = param_counts(preset_args("medium"))
    assert 100e6 <= p.total <= 200e6
    assert 100e6 <= p.total + p.mtp <= 200e6
    a = preset_args("medium")
    assert a.vocab_size == 129280 and a.window_size == 128
    assert set(a.layer_kinds) == {"swa", "csa", "hca"}
    assert (a.n_routed_experts, a.n_activated_experts) == (16, 4)


@pytest.mark.slow
def test_deterministic_for_a_seed(small, tmp_path):
    again = write_tiny_checkpoint(tmp_path / "again", "small", seed=0)
    assert digests(again) == digests(small)
    other = write_tiny_checkpoint(tmp_path / "other", "small", seed=1)
    assert digests(other)["config.json"] == digests(small)["config.json"]
    assert (
        digests(other)["model-00003-of-00003.safetensors"]
        != digests(small)["model-00003-of-00003.safetensors"]
    )


@pytest.mark.slow
def test_medium_writes_and_verifies(tmp_path):
    out = write_tiny_checkpoint(tmp_path / "medium", "medium", seed=0)
    with open_checkpoint(out) as ckpt:
        assert ckpt.verify() == []
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    assert size == pytest.approx(totals(expected_tensors(preset_args("medium"))).nbytes, rel=0.01)
