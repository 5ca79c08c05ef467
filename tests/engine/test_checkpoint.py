"""engine/checkpoint.py: opening, reading and verifying checkpoints, one test per bad input."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dsv4.engine.checkpoint import INDEX_FILE, open_checkpoint
from dsv4.engine.errors import CheckpointError, ConfigError
from dsv4.engine.inventory import expected_tensors

_HERE = Path(__file__).resolve()
_GOLDEN = (
    _HERE.parents[1] / "data/golden/checkpoint",
    _HERE.parents[3] / "shared/v4/golden/checkpoint",
)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The golden checkpoint, or (in a checkout without it) a small tiny one."""
    for cand in _GOLDEN:
        if (cand / INDEX_FILE).is_file():
            return cand
    from dsv4.engine.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), "small", seed=0)


def clone(src: Path, dst: Path) -> Path:
    """A copy whose shards are symlinks (cheap); JSON files are real copies."""
    dst.mkdir()
    for p in src.iterdir():
        if p.suffix == ".safetensors":
            os.symlink(p, dst / p.name)
        else:
            shutil.copy(p, dst / p.name)
    return dst


def shard_of(ckpt: Path, name: str) -> str:
    return json.loads((ckpt / INDEX_FILE).read_text())["weight_map"][name]


def rewrite_shard(ckpt: Path, file: str, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(ckpt / file)
    (ckpt / file).unlink()  # drop the symlink, write a real file
    edit(tensors)
    save_file(tensors, ckpt / file, metadata={"format": "pt"})


def edit_index(ckpt: Path, edit: Callable[[dict[str, str]], None]) -> None:
    index = json.loads((ckpt / INDEX_FILE).read_text())
    edit(index["weight_map"])
    (ckpt / INDEX_FILE).write_text(json.dumps(index))


def only_problem(ckpt: Path) -> str:
    problems = open_checkpoint(ckpt).verify()
    assert len(problems) == 1, problems
    with pytest.raises(CheckpointError) as err:
        open_checkpoint(ckpt).check()
    assert problems[0] in str(err.value) and str(ckpt) in str(err.value)
    return problems[0]


# -- a good checkpoint ---------------------------------------------------------------------------


def test_opens_and_verifies_clean(source):
    with open_checkpoint(source) as ckpt:
        assert ckpt.verify() == []
        ckpt.check()
        assert set(ckpt.names()) == set(expected_tensors(ckpt.args))
        assert ckpt.args.dim == 128 and ckpt.args.layer_kinds == ("swa", "csa", "hca", "csa")


def test_spec_and_get_read_the_stored_tensors(source):
    with open_checkpoint(source) as ckpt:
        spec = ckpt.spec("layers.1.ffn.experts.0.w1.weight")
        assert spec.shape == (128, 64) and spec.dtype == torch.int8
        assert spec.file == shard_of(source, "layers.1.ffn.experts.0.w1.weight")
        stored = load_file(source / spec.file)
        for name, want in stored.items():
            got = ckpt.get(name)
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), name
        got = ckpt.get("layers.0.ffn.gate.tid2eid")
        assert got.dtype == torch.int64 and got.is_contiguous()
        got.add_(1)  # a private copy: writing to it never touches the file
        assert torch.equal(ckpt.get("layers.0.ffn.gate.tid2eid") + 1, got)
        with pytest.raises(CheckpointError, match="no tensor named 'nope'"):
            ckpt.get("nope")


def test_single_file_without_index(source, tmp_path):
    ckpt = tmp_path / "one"
    ckpt.mkdir()
    shutil.copy(source / "config.json", ckpt)
    tensors = {}
    for file in sorted(set(json.loads((source / INDEX_FILE).read_text())["weight_map"].values())):
        tensors.update(load_file(source / file))
    save_file(tensors, ckpt / "model.safetensors")
    assert open_checkpoint(ckpt).verify() == []


def test_hf_cache_id_resolves_locally(source, tmp_path, monkeypatch):
    snap = tmp_path / "hub/models--deepseek-ai--DeepSeek-V4-Flash/snapshots/abc123"
    snap.parent.mkdir(parents=True)
    clone(source, snap)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert open_checkpoint("deepseek-ai/DeepSeek-V4-Flash").path == snap
    with pytest.raises(CheckpointError, match="never downloads"):
        open_checkpoint("deepseek-ai/DeepSeek-V4-Pro")


# -- bad inputs: one clear error each, naming the file and the tensor or key --------------------


def test_truncated_shard(source, tmp_path):
    ckpt = clone(source, tmp_path / "c")
    file = shard_of(ckpt, "norm.weight")
    data = (source / file).read_bytes()
    (ckpt / file).unlink()
    (ckpt / file).write_bytes(data[: len(data) - 1000])
    msg = only_problem(ckpt)
    assert file in msg and "truncated" in msg
    with open_checkpoint(ckpt) as c:
        named = [n for n in c.names() if c.spec(n).file == file and n in msg]
        assert named  # the tensors that lost their bytes are listed
        with pytest.raises(CheckpointError, match=f"{file}: tensor {named[-1]} cannot be read"):
            c.get(named[-1])


def test_shard_with_garbage_header(source, tmp_path):
    ckpt = clone(source, tmp_path / "c")
    file = shard_of(ckpt, "norm.weight")
    (ckpt / file).unlink()
    (ckpt / file).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    problems = open_checkpoint(ckpt).verify()
    assert any(file in p and "unreadable" in p for p in problems)
    assert any("missing tensor norm.weight" in p and file in p for p in problems)


def test_missing_tensor(source, tmp_path):
    ckpt = clone(source, tmp_path / "c")
    name = "layers.2.attn.compressor.ape"
    rewrite_shard(ckpt, shard_of(ckpt, name), lambda t: t.pop(name))
    edit_index(ckpt, lambda m: m.pop(name))
    msg = only_problem(ckpt)
    assert msg.startswith(f"missing tensor {name}") and "[128, 512] F32" in msg


def test_wrong_shape(source, tmp_path):
    ckpt = clone(source, tmp_path / "c")
    name = "layers.1.attn.wq_a.weight"
    file = shard_of(ckpt, name)
    rewrite_shard(ckpt, file, lambda t: t.update({name: t[name][:64].contiguous()}))
    msg = only_problem(ckpt)
    assert msg == f"{file}: tensor {name}: shape [64, 128], expected [128, 128]"


def test_wrong_dtype(source, tmp_path):
    ckpt = clone(source, tmp_path / "c")
    name = "layers.0.attn.attn_sink"
    file = shard_of(ckpt, name)
    rewrite_shard(ckpt, file, lambda t: t.update({name: t[name].to(torch.bfloat16)}))
    msg = only_problem(ckpt)
    assert msg == f"{file}: tensor {name}: dtype BF16, expected F32"


def test_tensor_missing_from_index(source, tmp_path):
    ckpt = clone(source, tmp_path / "c")
    name = "layers.3.ffn.gate.bias"
    edit_index(ckpt, lambda m: m.pop(name))
    msg = only_problem(ckpt)
    assert name in msg and shard_of(source, name) in msg and INDEX_FILE in msg


def test_index_entry_for_absent_tensor(source, tmp_path):
    ckpt = clone(source, tmp_path / "c")
    file = shard_of(ckpt, "norm.weight")
    edit_index(ckpt, lambda m: m.update({"layers.0.attn.wq_c.weight": file}))
    msg = only_problem(ckpt)
    bogus = "layers.0.attn.wq_c.weight"
    assert msg == f"{INDEX_FILE}: entry {bogus} -> {file}, but {file} has no tensor {bogus}"


def test_unexpected_tensor_and_tolerated_mtp_names(source, tmp_path):
    ckpt = clone(source, tmp_path / "c")
    file = shard_of(ckpt, "norm.weight")
    extra = {"layers.0.attn.bogus": torch.zeros(3), "mtp.0.emb.tok_emb.weight": torch.zeros(2)}
    rewrite_shard(ckpt, file, lambda t: t.update(extra))
    edit_index(ckpt, lambda m: m.update(dict.fromkeys(extra, file)))
    msg = only_problem(ckpt)
    assert msg.startswith(f"{file}: unexpected tensor layers.0.attn.bogus")


def test_malformed_config(source, tmp_path):
    ckpt = clone(source, tmp_path / "c")
    (ckpt / "config.json").write_text('{"model_type": "deepseek_v4", ')
    with pytest.raises(ConfigError, match=r"config\.json: not valid JSON"):
        open_checkpoint(ckpt)
    cfg = json.loads((source / "config.json").read_text())
    cfg["compress_ratios"] = cfg["compress_ratios"][:-1]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"config\.json: key 'compress_ratios'"):
        open_checkpoint(ckpt)


def test_malformed_index(source, tmp_path):
    ckpt = clone(source, tmp_path / "c")
    (ckpt / INDEX_FILE).write_text('{"metadata": {}}')
    with pytest.raises(CheckpointError, match="weight_map"):
        open_checkpoint(ckpt)
