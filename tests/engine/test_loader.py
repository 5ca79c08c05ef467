"""`load_model` checks the whole checkpoint before loading anything, so a broken checkpoint
raises `CheckpointError` (naming the file and tensor) instead of returning a partial model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dsv4.engine import load_model
from dsv4.engine.errors import CheckpointError, ConfigError

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden"


@pytest.fixture
def broken(tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(GOLDEN / "checkpoint", dst)
    return dst


def test_truncated_shard(broken):
    shard = broken / "model-00002-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="model-00002-of-00003"):
        load_model(broken, dtype=torch.float32, quant_sim=False)


def test_missing_index_entry(broken):
    index = broken / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    del data["weight_map"]["layers.1.attn.wq_a.weight"]
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"layers\.1\.attn\.wq_a\.weight"):
        load_model(broken)


def test_malformed_config(broken):
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        load_model(broken)


def test_unsupported_activation_dtype():
    with pytest.raises(ValueError, match="dtype"):
        load_model(GOLDEN / "checkpoint", dtype=torch.float16)
