"""The shared git runner: output, and errors of the caller's type that name the command."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsv4.agent.git import GitError, git


class _CallerError(RuntimeError):
    pass


def test_runs_in_the_folder_and_returns_text(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    top = git(tmp_path, "rev-parse", "--show-toplevel").stdout.strip()
    assert Path(top).resolve() == tmp_path.resolve()


def test_binary_output_on_request(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    assert isinstance(git(tmp_path, "status", "--porcelain", text=False).stdout, bytes)


def test_failure_names_command_folder_and_stderr(tmp_path: Path) -> None:
    with pytest.raises(GitError, match=rf"`git rev-parse HEAD` failed in {tmp_path}: .*"):
        git(tmp_path, "rev-parse", "HEAD")


def test_failure_raises_the_callers_type_or_is_returned(tmp_path: Path) -> None:
    with pytest.raises(_CallerError, match="rev-parse"):
        git(tmp_path, "rev-parse", "HEAD", error=_CallerError)
    assert git(tmp_path, "rev-parse", "HEAD", check=False).returncode != 0


def test_a_missing_folder_is_an_error_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(_CallerError, match=rf"cannot run `git status` in {tmp_path / 'gone'}"):
        git(tmp_path / "gone", "status", error=_CallerError)
