"""The benchmark scripts run end to end on a tiny checkpoint and report every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN_CHECKPOINT = ROOT / "tests" / "data" / "golden" / "checkpoint"


def test_engine_cpu_reports_both_prefill_regimes_against_transformers() -> None:
    pytest.importorskip("transformers")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "engine_cpu.py"),
           "--checkpoint", str(GOLDEN_CHECKPOINT), "--prompt", "24", "--decode", "2",
           "--repeat", "1"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for side in ("engine", "transformers"):
        for phase in ("prefill", "prefill_last", "decode"):
            assert result[side][f"{phase}_tps"] > 0 and result[side][f"{phase}_tps_cpu"] > 0
    for phase in ("prefill", "prefill_last", "decode"):
        ratio = result["engine"][f"{phase}_tps"] / result["transformers"][f"{phase}_tps"]
        assert result[f"{phase}_ratio"] == pytest.approx(ratio, abs=0.01)
    assert result["decode_bound_tps"] > 0
    assert "prefill, last logits" in proc.stdout


def test_bench_index_reports_every_scenario_and_runs_other_packers() -> None:
    """On a small installed package (pytest's pluggy): every scenario, exact counts, the
    tokenizer baseline, and another packer given with --tool (here a stand-in command)."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_index.py"), "--package", "pluggy",
           "--repeat", "1", "--tool", f"stand-in={sys.executable} -c pass {{root}}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (result,) = json.loads(proc.stdout.strip().splitlines()[-1])["results"]
    assert result["cold"]["exact"] is True and result["edit"]["exact"] is True
    assert result["cold"]["files_read"] > 5 and result["warm_noop"]["files_read"] == 0
    assert result["edit"]["files_read"] == 1
    assert result["cold"]["total_tokens"] <= result["cold"]["budget"]
    assert result["tokenizer_only"]["tokens"] > 0
    assert result["external"]["stand-in"]["wall_s"] > 0
    assert "aider-repomap" in result["external"]
