"""The read tool: numbering like `cat -n`, windows, caps, refusals."""

from __future__ import annotations

from pathlib import Path

from dsv4.tools.base import ToolContext, run_tool
from dsv4.tools.read import ReadTool


def _read(ctx: ToolContext, tool: ReadTool | None = None, **args):
    return run_tool([tool or ReadTool()], "read", args, ctx)


def test_lines_are_numbered_like_cat_n(repo: Path, ctx: ToolContext):
    (repo / "f.py").write_text("alpha\n\tbeta\n")
    result = _read(ctx, file_path="f.py")
    assert result.ok and not result.truncated
    assert result.text == "     1\talpha\n     2\t\tbeta"


def test_offset_and_limit_select_a_window(repo: Path, ctx: ToolContext):
    (repo / "f.txt").write_text("".join(f"l{i}\n" for i in range(1, 11)))
    result = _read(ctx, file_path="f.txt", offset=4, limit=3)
    assert result.truncated
    body = result.text.splitlines()
    assert body[:3] == ["     4\tl4", "     5\tl5", "     6\tl6"]
    assert "showing lines 4-6 of 10" in result.text and "offset=7" in result.text


def test_line_cap_and_long_line_cut(repo: Path, ctx: ToolContext):
    (repo / "f.txt").write_text("".join(f"{i}\n" for i in range(50)) + "x" * 100 + "\n")
    tool = ReadTool(max_lines=10, max_line_chars=20)
    capped = _read(ctx, tool, file_path="f.txt")
    assert capped.truncated and len(capped.text.splitlines()) == 11
    assert "of 51" in capped.text
    long = _read(ctx, tool, file_path="f.txt", offset=51)
    assert "line cut: 100 characters" in long.text


def test_read_records_the_hash_for_the_stale_guard(repo: Path, ctx: ToolContext):
    (repo / "f.txt").write_text("x\n")
    _read(ctx, file_path="f.txt")
    assert set(ctx.file_state) == {"f.txt"}


def test_missing_binary_directory_and_outside(repo: Path, ctx: ToolContext, tmp_path: Path):
    (repo / "bin.dat").write_bytes(b"\x00\x01\x02")
    (repo / "d").mkdir()
    (tmp_path / "secret.txt").write_text("s")
    assert "not found" in _read(ctx, file_path="nope.txt").text
    assert "binary" in _read(ctx, file_path="bin.dat").text
    assert "directory" in _read(ctx, file_path="d").text
    outside = _read(ctx, file_path=str(tmp_path / "secret.txt"))
    assert not outside.ok and outside.data["denied"]


def test_empty_file(repo: Path, ctx: ToolContext):
    (repo / "e.txt").write_text("")
    assert _read(ctx, file_path="e.txt").text == "(empty file)"
