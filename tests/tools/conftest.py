"""Shared fixtures: a repository folder and a tool context rooted in it."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from dsv4.tools.base import ToolContext
from dsv4.tools.policy import Policy


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    return root


@pytest.fixture
def ctx(repo: Path, tmp_path: Path) -> ToolContext:
    return ToolContext(root=repo, policy=Policy(), scratch_dir=tmp_path / "scratch")


def git(root: Path, *args: str) -> str:
    """Run git in `root` with a fixed identity; returns stdout."""
    argv = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
    return subprocess.run(argv, cwd=root, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def run_git() -> Callable[..., str]:
    """`git` for tests that take it as a fixture (test modules cannot import conftest)."""
    return git


@pytest.fixture
def git_repo(repo: Path) -> Path:
    git(repo, "init", "-q", ".")
    return repo
