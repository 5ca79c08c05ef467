"""`dsv4 undo` on real temporary git repositories."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dsv4.agent.snapshot import Snapshots
from dsv4.cli.undo import EXIT_NOTHING, EXIT_USAGE, undo

runner = CliRunner()


@pytest.fixture
def cli() -> typer.Typer:
    # The command alone, so this test does not depend on every other command importing.
    app = typer.Typer()
    app.command()(undo)
    return app


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-global-config"))
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / "a.py").write_text("v0\n")
    return root


def take_steps(root: Path, count: int) -> None:
    snaps = Snapshots(root)
    for n in range(count):
        snaps.take(f"edit a.py #{n}")
        (root / "a.py").write_text(f"v{n + 1}\n")


def test_undo_last_step(cli: typer.Typer, repo: Path) -> None:
    take_steps(repo, 2)
    result = runner.invoke(cli, [str(repo)])
    assert result.exit_code == 0, result.output
    assert "edit a.py #1" in result.output and "undid 1 step" in result.output
    assert (repo / "a.py").read_text() == "v1\n"


def test_undo_steps_and_all(cli: typer.Typer, repo: Path) -> None:
    take_steps(repo, 3)
    assert runner.invoke(cli, [str(repo), "--steps", "2"]).exit_code == 0
    assert (repo / "a.py").read_text() == "v1\n"
    take_steps(repo, 2)
    result = runner.invoke(cli, [str(repo), "--all"])
    assert result.exit_code == 0, result.output
    assert "undid 3 steps" in result.output
    assert (repo / "a.py").read_text() == "v0\n"


def test_list_shows_history_and_changes_nothing(cli: typer.Typer, repo: Path) -> None:
    take_steps(repo, 2)
    result = runner.invoke(cli, [str(repo), "--list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == ["000001", "000002"]
    assert lines[1].endswith("edit a.py #1")
    assert (repo / "a.py").read_text() == "v2\n"
    assert len(Snapshots(repo).history()) == 2


def test_nothing_to_undo_exit_code(cli: typer.Typer, repo: Path) -> None:
    result = runner.invoke(cli, [str(repo)])
    assert result.exit_code == EXIT_NOTHING
    assert "nothing to undo" in result.output


def test_not_a_repository_exit_code(cli: typer.Typer, tmp_path: Path) -> None:
    result = runner.invoke(cli, [str(tmp_path)])
    assert result.exit_code == EXIT_USAGE
    assert "git init" in result.output


def test_bad_steps_is_a_usage_error(cli: typer.Typer, repo: Path) -> None:
    assert runner.invoke(cli, [str(repo), "--steps", "0"]).exit_code == 2
