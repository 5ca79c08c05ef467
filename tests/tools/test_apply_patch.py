"""The apply_patch tool: several files, creation, deletion, all or nothing."""

from __future__ import annotations

from pathlib import Path

from dsv4.tools.base import ToolContext, default_tools, run_tool


def _apply(ctx: ToolContext, patch: str):
    return run_tool(default_tools(), "apply_patch", {"patch": patch}, ctx)


def test_patches_creates_and_deletes_in_one_call(repo: Path, ctx: ToolContext):
    (repo / "a.py").write_text("x = 1\ny = 2\n")
    (repo / "old.txt").write_text("bye\n")
    patch = (
        "--- a/a.py\n+++ b/a.py\n@@ -1,2 +1,2 @@\n-x = 1\n+x = 10\n y = 2\n"
        "--- /dev/null\n+++ b/pkg/new.py\n@@ -0,0 +1 @@\n+print('new')\n"
        "--- a/old.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-bye\n"
    )
    snapshots: list[str] = []
    ctx.before_mutation = snapshots.append
    result = _apply(ctx, patch)
    assert result.ok, result.text
    assert (repo / "a.py").read_text() == "x = 10\ny = 2\n"
    assert (repo / "pkg/new.py").read_text() == "print('new')\n"
    assert not (repo / "old.txt").exists()
    assert sorted(result.data["changed_files"]) == ["a.py", "old.txt", "pkg/new.py"]
    assert snapshots == ["apply_patch a.py, pkg/new.py, old.txt"]


def test_one_failing_hunk_changes_no_file(repo: Path, ctx: ToolContext):
    (repo / "a.py").write_bytes(b"x = 1\n")
    (repo / "b.py").write_bytes(b"y = 2\n")
    patch = (
        "--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-x = 1\n+x = 3\n"
        "--- a/b.py\n+++ b/b.py\n@@ -1 +1 @@\n-y = 999\n+y = 3\n"
    )
    result = _apply(ctx, patch)
    assert not result.ok
    assert "b.py" in result.text and "no file was changed" in result.text
    assert (repo / "a.py").read_bytes() == b"x = 1\n"
    assert (repo / "b.py").read_bytes() == b"y = 2\n"


def test_patch_outside_the_repository_is_denied(repo: Path, ctx: ToolContext):
    patch = "--- /dev/null\n+++ b/../escape.txt\n@@ -0,0 +1 @@\n+x\n"
    result = _apply(ctx, patch)
    assert not result.ok and result.data.get("denied")
    assert not (repo.parent / "escape.txt").exists()


def test_malformed_patch_is_a_result(ctx: ToolContext):
    result = _apply(ctx, "not a diff")
    assert not result.ok and "malformed" in result.text


def test_stale_file_is_refused(repo: Path, ctx: ToolContext):
    (repo / "a.py").write_text("x = 1\n")
    assert run_tool(default_tools(), "read", {"file_path": "a.py"}, ctx).ok
    (repo / "a.py").write_text("x = 2\n")  # changed behind the model's back
    result = _apply(ctx, "--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-x = 2\n+x = 3\n")
    assert not result.ok and "changed on disk" in result.text
    assert (repo / "a.py").read_text() == "x = 2\n"
