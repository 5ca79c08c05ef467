"""The edit tool on disk: stale guard, byte-identical failures, creation, snapshots."""

from __future__ import annotations

from pathlib import Path

from dsv4.tools.base import ToolContext, default_tools, run_tool


def _edit(ctx: ToolContext, path: str, old: str, new: str, **extra):
    args = {"file_path": path, "old_string": old, "new_string": new, **extra}
    return run_tool(default_tools(), "edit", args, ctx)


def test_edit_writes_and_reports_a_numbered_snippet(repo: Path, ctx: ToolContext):
    (repo / "m.py").write_text("a = 1\nb = 2\nc = 3\n")
    result = _edit(ctx, "m.py", "b = 2", "b = 20")
    assert result.ok
    assert (repo / "m.py").read_text() == "a = 1\nb = 20\nc = 3\n"
    assert "     2\tb = 20" in result.text
    assert result.data["changed_files"] == ["m.py"]


def test_failed_edit_leaves_the_file_byte_identical(repo: Path, ctx: ToolContext):
    original = b"x = 1\r\nx = 1\r\n\xc3\xa9 \n"
    (repo / "m.py").write_bytes(original)
    snapshots: list[str] = []
    ctx.before_mutation = snapshots.append
    for old in ("x = 1", "nothing like it"):
        result = _edit(ctx, "m.py", old, "y")
        assert not result.ok
        assert (repo / "m.py").read_bytes() == original
    assert snapshots == []  # no snapshot for an edit that changed nothing


def test_stale_file_is_refused(repo: Path, ctx: ToolContext):
    (repo / "m.py").write_text("a = 1\n")
    assert run_tool(default_tools(), "read", {"file_path": "m.py"}, ctx).ok
    (repo / "m.py").write_text("a = 1\nb = 2\n")
    result = _edit(ctx, "m.py", "a = 1", "a = 2")
    assert not result.ok and "read it again" in result.text
    assert (repo / "m.py").read_text() == "a = 1\nb = 2\n"
    assert run_tool(default_tools(), "read", {"file_path": "m.py"}, ctx).ok
    assert _edit(ctx, "m.py", "a = 1", "a = 2").ok


def test_own_edits_do_not_make_the_file_stale(repo: Path, ctx: ToolContext):
    (repo / "m.py").write_text("a = 1\n")
    run_tool(default_tools(), "read", {"file_path": "m.py"}, ctx)
    assert _edit(ctx, "m.py", "a = 1", "a = 2").ok
    assert _edit(ctx, "m.py", "a = 2", "a = 3").ok


def test_empty_old_string_creates_the_file(repo: Path, ctx: ToolContext):
    result = _edit(ctx, "pkg/new.py", "", "x = 1\n")
    assert result.ok
    assert (repo / "pkg/new.py").read_text() == "x = 1\n"


def test_crlf_file_stays_crlf_on_disk(repo: Path, ctx: ToolContext):
    (repo / "w.txt").write_bytes(b"one\r\ntwo\r\n")
    assert _edit(ctx, "w.txt", "two", "2").ok
    assert (repo / "w.txt").read_bytes() == b"one\r\n2\r\n"


def test_non_utf8_file_is_not_edited(repo: Path, ctx: ToolContext):
    (repo / "latin.txt").write_bytes(b"caf\xe9\n")
    result = _edit(ctx, "latin.txt", "caf", "bar")
    assert not result.ok and "UTF-8" in result.text
    assert (repo / "latin.txt").read_bytes() == b"caf\xe9\n"


def test_edit_in_git_dir_is_denied(repo: Path, ctx: ToolContext):
    (repo / ".git").mkdir()
    (repo / ".git/config").write_text("[core]\n")
    result = _edit(ctx, ".git/config", "[core]", "[evil]")
    assert not result.ok and result.data["denied"]
    assert (repo / ".git/config").read_text() == "[core]\n"
