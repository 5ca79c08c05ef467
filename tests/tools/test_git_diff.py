"""The git_diff tool on a real temporary repository."""

from __future__ import annotations

from pathlib import Path

from dsv4.tools.base import ToolContext, run_tool
from dsv4.tools.git_diff import GitDiffTool


def _diff(ctx: ToolContext, **args):
    return run_tool([GitDiffTool()], "git_diff", args, ctx)


def test_shows_changes_and_untracked_files(git_repo: Path, ctx: ToolContext, run_git):
    (git_repo / "a.py").write_text("x = 1\n")
    (git_repo / "b.py").write_text("y = 1\n")
    run_git(git_repo, "add", ".")
    run_git(git_repo, "commit", "-qm", "init")
    (git_repo / "a.py").write_text("x = 2\n")
    (git_repo / "new file.py").write_text("z\n")
    result = _diff(ctx)
    assert result.ok
    assert "-x = 1\n+x = 2" in result.text and "b.py" not in result.text
    assert result.data["untracked"] == ["new file.py"]
    assert _diff(ctx, path="b.py").text.startswith("No changes")


def test_staged_changes_before_the_first_commit(git_repo: Path, ctx: ToolContext, run_git):
    (git_repo / "a.py").write_text("x = 1\n")
    run_git(git_repo, "add", "a.py")
    result = _diff(ctx)
    assert result.ok and not result.data["has_head"]
    assert "+x = 1" in result.text


def test_not_a_git_repository(ctx: ToolContext):
    result = _diff(ctx)
    assert not result.ok and "not a git work tree" in result.text
