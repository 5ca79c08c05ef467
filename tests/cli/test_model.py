"""`dsv4 model info / verify / tiny` through Typer's CliRunner."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dsv4.cli.model import _runs, app

_HERE = Path(__file__).resolve()
DATA = _HERE.parents[1] / "data"
_GOLDEN = (DATA / "golden/checkpoint", _HERE.parents[3] / "shared/v4/golden/checkpoint")
runner = CliRunner()


def golden() -> Path:
    for cand in _GOLDEN:
        if (cand / "model.safetensors.index.json").is_file():
            return cand
    pytest.skip("golden checkpoint not available")


def config_only(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(DATA / "configs" / f"DeepSeek-V4-{name}.config.json", folder / "config.json")
    return folder


@pytest.mark.parametrize(
    ("name", "total", "active", "tensors", "nbytes", "kv_ref"),
    [("Flash", "284.33 B", "13.27 B", 69_187, 159_609_485_896, "6.72 GiB"),
     ("Pro", "1.57 T", "48.85 B", 145_116, 864_704_792_696, "9.62 GiB")],
)  # fmt: skip
def test_info_on_config_only_folder(tmp_path, name, total, active, tensors, nbytes, kv_ref):
    folder = config_only(tmp_path, name)
    res = runner.invoke(app, ["info", str(folder)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert f"{total} total" in res.output and f"{active} active per token" in res.output
    assert "config only" in res.output and kv_ref in res.output
    data = json.loads(runner.invoke(app, ["info", str(folder), "--json"]).output)
    assert (data["tensors"], data["bytes"]) == (tensors, nbytes)
    assert round(data["params"]["total"] / 1e9, 1) == {"Flash": 284.3, "Pro": 1573.0}[name]
    assert round(data["params"]["active_per_token"] / 1e9, 1) == {"Flash": 13.3, "Pro": 48.9}[name]
    kinds = {k["kind"]: k["count"] for k in data["layer_kinds"]}
    assert kinds == (
        {"swa": 2, "csa": 21, "hca": 20} if name == "Flash" else {"hca": 31, "csa": 30}
    )


def test_info_on_golden_reads_headers():
    data = json.loads(runner.invoke(app, ["info", str(golden()), "--json"]).output)
    assert data["source"] == "shard headers"
    assert data["tensors"] == 427
    assert data["bytes"] == sum(data["bytes_by_dtype"].values())


def test_info_bad_path_exits_2(tmp_path):
    res = runner.invoke(app, ["info", str(tmp_path / "nowhere")])
    assert res.exit_code == 2
    assert "does not exist" in res.output


def test_verify_golden_ok():
    res = runner.invoke(app, ["verify", str(golden())], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "427 tensors" in res.output and "ok" in res.output


def test_verify_broken_copy_lists_tensors(tmp_path):
    src = golden()
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in src.iterdir():
        if p.suffix == ".safetensors":
            os.symlink(p, broken / p.name)
        else:
            shutil.copy(p, broken / p.name)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    gone = index["weight_map"].pop("layers.2.attn.compressor.ape")
    index["weight_map"]["layers.9.attn.wkv.weight"] = gone
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    res = runner.invoke(app, ["verify", str(broken), "--json"])
    assert res.exit_code == 1
    problems = json.loads(res.output)["problems"]
    assert any("layers.2.attn.compressor.ape" in p and "not listed" in p for p in problems)
    assert any("layers.9.attn.wkv.weight" in p and gone in p for p in problems)
    res = runner.invoke(app, ["verify", str(broken)], env={"COLUMNS": "300"})
    assert res.exit_code == 1 and "2 problem(s)" in res.output


def test_tiny_small_writes_a_valid_checkpoint(tmp_path):
    out = tmp_path / "tiny"
    res = runner.invoke(app, ["tiny", str(out), "--preset", "small", "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert "noise" in res.output
    assert runner.invoke(app, ["verify", str(out)]).exit_code == 0
    again = runner.invoke(app, ["tiny", str(out)])
    assert again.exit_code == 2 and "not empty" in again.output


def test_layer_runs():
    assert _runs([0, 1]) == "0-1"
    assert _runs(list(range(2, 43, 2))) == "2-42 step 2"
    assert _runs([0, 3]) == "0, 3"
    assert _runs([5]) == "5"
