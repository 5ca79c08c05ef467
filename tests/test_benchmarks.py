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
