"""The distribution: one top-level import package, `dsv4`, importable from anywhere."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_has_only_the_dsv4_package(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
           "-w", str(tmp_path), str(ROOT)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("dsv4-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    (info,) = tops - {"dsv4"}
    assert info.startswith("dsv4-") and info.endswith(".dist-info")
    for sub in ("cli", "agent", "tools", "engine", "kernels"):
        assert f"dsv4/{sub}/__init__.py" in names
    assert "dsv4/agent/events.schema.json" in names  # package data travels too
    csrc = (ROOT / "kernels" / "csrc").iterdir()
    for source in sorted(f"dsv4/kernels/csrc/{p.name}" for p in csrc):  # the C kernels' sources
        assert source in names


def test_subpackages_import_from_another_directory(tmp_path: Path) -> None:
    code = "import dsv4.engine, dsv4.cli, dsv4.agent, dsv4.tools, dsv4.kernels; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.stdout.strip() == "ok", out.stderr
