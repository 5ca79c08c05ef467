"""The write tool: creation, overwrite, stale guard, policy."""

from __future__ import annotations

from pathlib import Path

from dsv4.tools.base import ToolContext, default_tools, run_tool


def _write(ctx: ToolContext, path: str, content: str):
    return run_tool(default_tools(), "write", {"file_path": path, "content": content}, ctx)


def test_creates_parent_folders(repo: Path, ctx: ToolContext):
    result = _write(ctx, "a/b/c.txt", "hi\n")
    assert result.ok and "Created" in result.text
    assert (repo / "a/b/c.txt").read_text() == "hi\n"


def test_overwrites_and_records_state(repo: Path, ctx: ToolContext):
    (repo / "f.txt").write_text("old\n")
    assert _write(ctx, "f.txt", "new\n").ok
    assert (repo / "f.txt").read_text() == "new\n"
    assert "f.txt" in ctx.file_state


def test_absolute_path_inside_the_repository_is_accepted(repo: Path, ctx: ToolContext):
    assert _write(ctx, str(repo / "abs.txt"), "x").ok
    assert (repo / "abs.txt").read_text() == "x"


def test_read_only_policy_refuses(repo: Path, ctx: ToolContext):
    ctx.policy.mode = "read-only"
    result = _write(ctx, "f.txt", "x")
    assert not result.ok and result.data["denied"]
    assert not (repo / "f.txt").exists()
