"""Loading keeps the weights in their stored format: peak RSS while loading the medium tiny
checkpoint stays under 1.5x its size on disk plus a fixed overhead (measured in a subprocess,
above the RSS of the interpreter with torch and dsv4 already imported)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

# What loading costs beyond the tensors themselves, independent of the model's size: the heap
# and allocator state torch's first operations set up (~25 MiB measured on the medium
# checkpoint, where the loaded tensors come to 1.02x the bytes on disk because `tid2eid` is
# widened to int64), with headroom for allocator fragmentation.
FIXED_OVERHEAD_MIB = 48
# The checkpoint reader copies each tensor once, straight from the file into its buffer; a
# transient second copy of the 126 MiB embedding or head would show as peak above the
# steady state.
TRANSIENT_MIB = 32

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import dsv4.engine.loader
    from dsv4.engine import load_model

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(key)) / 1024

    base = status("VmRSS:")
    model = load_model(sys.argv[1])
    print(json.dumps({"base": base, "peak": status("VmHWM:"), "after": status("VmRSS:")}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_rss_while_loading_medium(tmp_path):
    from dsv4.engine.tiny import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "medium", "medium", seed=0)
    disk_mib = sum(f.stat().st_size for f in ckpt.glob("*.safetensors")) / 2**20
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(ckpt)], capture_output=True,
                         text=True, check=True, timeout=600)  # fmt: skip
    rss = json.loads(out.stdout.strip().splitlines()[-1])
    grown = rss["peak"] - rss["base"]
    assert grown <= 1.5 * disk_mib + FIXED_OVERHEAD_MIB, (rss, disk_mib)
    # Steady state: the loaded model is about its size on disk (weights stay FP8/FP4/bf16).
    assert rss["after"] - rss["base"] <= 1.2 * disk_mib + FIXED_OVERHEAD_MIB, (rss, disk_mib)
    assert rss["peak"] - rss["after"] <= TRANSIENT_MIB, (rss, disk_mib)
