"""`dsv4 bench` end to end on the small tiny checkpoint (tiny contexts), and its option errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dsv4.cli.app import app
from dsv4.cli.bench import parse_contexts

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from dsv4.engine.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "small", "small", seed=0)


@pytest.fixture(scope="module")
def json_run(tiny_dir) -> dict:
    res = runner.invoke(
        app,
        ["bench", "--model", str(tiny_dir), "--contexts", "64,128", "--decode-steps", "2",
         "--chunk", "48", "--dtype", "fp32", "--device", "cpu", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_json_reports_each_context(json_run):
    results = json_run["results"]
    assert [r["context"] for r in results] == [64, 128]
    assert json_run["dtype"] == "float32" and json_run["device"] == "cpu"
    for r in results:
        assert r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0 and r["decode_step_s"] > 0
        assert r["peak_memory_bytes"] > 0


def test_kv_bytes_come_from_the_state_and_match_the_formula(json_run):
    """Small preset: layers of ratio 0, 4, 128, 4; entries of 512 dims, indexer keys of 128.
    At 64 tokens the ratio-128 layer has no entry yet; at 128 all layers are on a boundary."""
    at64, at128 = json_run["results"]
    fp32 = 4  # bytes per value with --dtype fp32
    assert at64["state"]["entries"] == (2 * 16 * 512 + 2 * 16 * 128) * fp32
    assert at128["state"]["entries"] == (2 * 32 * 512 + 512 + 2 * 32 * 128) * fp32
    assert at128["kv_bytes_per_token"] == at128["state"]["entries"] / 128
    # The inventory formula counts REF's bf16 entries: half of the fp32 state here.
    assert json_run["formula_kv_bytes_per_token"] == at128["kv_bytes_per_token"] / 2
    assert json_run["dense_kv_bytes_per_token"] == 4 * 512 * fp32


def test_table_output(tiny_dir):
    res = runner.invoke(
        app,
        ["bench", "--model", str(tiny_dir), "--contexts", "32", "--decode-steps", "1",
         "--device", "cpu"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "context" in res.stdout and "peak MiB" in res.stdout
    assert "│      32 │" in res.stdout  # the one measured row
    # bf16 by default: dense = 4 layers × 512 dims × 2 bytes, 648 B/token compressed.
    assert "formula (bf16 entries) 648.0 · dense baseline 4,096 (6.3× more)" in res.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--contexts", "12,abc"], "'abc' is not a positive token count"),
        (["--contexts", "0"], "'0' is not a positive token count"),
        (["--dtype", "fp16"], "--dtype 'fp16': choose one of bf16, fp32"),
        (["--decode-steps", "0"], "decode_steps=0"),
    ],
)
def test_option_errors_exit_2(tiny_dir, args, message):
    res = runner.invoke(app, ["bench", "--model", str(tiny_dir), *args])
    assert res.exit_code == 2 and message in res.stderr


def test_missing_model_exits_2(tmp_path, monkeypatch):
    monkeypatch.delenv("DSV4_MODEL", raising=False)
    res = runner.invoke(app, ["bench"])
    assert res.exit_code == 2 and "no model given" in res.stderr
    res = runner.invoke(app, ["bench", "--model", str(tmp_path / "absent"), "--device", "cpu"])
    assert res.exit_code == 2 and "cannot load model" in res.stderr


def test_parse_contexts():
    assert parse_contexts("1024,8192,32768") == (1024, 8192, 32768)
    assert parse_contexts("1K, 8k,32K") == (1024, 8192, 32768)
    with pytest.raises(ValueError, match="expected comma-separated"):
        parse_contexts(" , ")
