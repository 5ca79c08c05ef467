"""The installed `dsv4` entry point, run as a user would run it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys


def _dsv4(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("dsv4")
    cmd = (
        [exe, *args]
        if exe
        else [sys.executable, "-c", "from dsv4.cli.app import main; main()", *args]
    )
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_help_lists_commands() -> None:
    out = _dsv4("--help")
    assert out.returncode == 0, out.stderr
    assert "doctor" in out.stdout
    assert "local-first coding agent" in out.stdout


def test_version() -> None:
    out = _dsv4("--version")
    assert out.returncode == 0
    assert out.stdout.startswith("dsv4 ")
    assert out.stdout.split()[1][0].isdigit()


def test_doctor_json_parses_and_reports_this_machine() -> None:
    out = _dsv4("doctor", "--json")
    data = json.loads(out.stdout)
    names = [c["name"] for c in data["checks"]]
    for name in ("python", "torch", "device", "triton", "tokenizer", "git"):
        assert name in names
    by_name = {c["name"]: c for c in data["checks"]}
    assert by_name["tokenizer"]["ok"] is True
    assert out.returncode == (0 if data["ok"] else 1)


def test_doctor_names_a_missing_model_folder(tmp_path) -> None:
    out = _dsv4("doctor", "--json", "--model", str(tmp_path / "nope"))
    data = json.loads(out.stdout)
    assert out.returncode == 1
    assert data["missing"] == ["model (--model)"]
    assert "missing essential: model (--model)" in out.stderr


def test_startup_does_not_import_torch() -> None:
    """`dsv4 --help` must stay instant: the CLI modules import torch only inside commands.

    Importing the app imports every registered command module, so this guards all of them.
    """
    heavy = ("torch", "transformers", "triton", "tree_sitter_language_pack", "openai")
    code = f"import sys, dsv4.cli.app; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
