"""`dsv4 hook install / uninstall` through the Typer app: notes on stdout, errors exit 2."""

from __future__ import annotations

import subprocess
from pathlib import Path

from typer.testing import CliRunner

from dsv4.cli.hook import app

runner = CliRunner()


def _repo(tmp_path: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    return tmp_path


def test_install_then_uninstall(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    installed = runner.invoke(app, ["install", str(repo)])
    assert installed.exit_code == 0 and "installed" in installed.output
    assert (repo / ".git" / "hooks" / "pre-commit").is_file()
    removed = runner.invoke(app, ["uninstall", str(repo)])
    assert removed.exit_code == 0 and "removed" in removed.output
    assert not (repo / ".git" / "hooks" / "pre-commit").exists()


def test_a_foreign_hook_is_refused_with_exit_2_naming_the_command(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\nexit 0\n")
    result = runner.invoke(app, ["uninstall", str(repo)])
    assert result.exit_code == 2
    assert "dsv4 hook uninstall:" in result.output and "not written by dsv4" in result.output
    assert hook.read_text() == "#!/bin/sh\nexit 0\n"


def test_outside_a_repository_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["install", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "not inside a git repository" in result.output
