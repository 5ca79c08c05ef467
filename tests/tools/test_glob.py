"""The glob tool and its pattern matcher."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsv4.tools.base import ToolContext, run_tool
from dsv4.tools.glob import GlobTool, glob_match


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("**/*.py", "a/b/c.py", True),
        ("**/*.py", "c.py", True),
        ("*.py", "deep/er/c.py", True),
        ("src/*.py", "src/a/c.py", False),
        ("src/**/*.py", "src/a/c.py", True),
        ("*.{ts,tsx}", "ui/app.tsx", True),
        ("[!a]*.py", "a.py", False),
        ("file?.txt", "file1.txt", True),
    ],
)
def test_glob_match(pattern: str, path: str, expected: bool):
    assert glob_match(pattern, path) is expected


def test_lists_sorted_and_skips_git_dir(repo: Path, ctx: ToolContext):
    for name in ("b.py", "a/z.py", "a/y.txt", ".git/hooks.py"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("")
    result = run_tool([GlobTool()], "glob", {"pattern": "**/*.py"}, ctx)
    assert result.text.splitlines() == ["a/z.py", "b.py"]
    in_folder = run_tool([GlobTool()], "glob", {"pattern": "*", "path": "a"}, ctx)
    assert in_folder.text.splitlines() == ["a/y.txt", "a/z.py"]


def test_no_match_and_cap(repo: Path, ctx: ToolContext):
    for i in range(5):
        (repo / f"f{i}.txt").write_text("")
    assert run_tool([GlobTool()], "glob", {"pattern": "*.rs"}, ctx).text.startswith("No files")
    capped = run_tool([GlobTool(max_results=2)], "glob", {"pattern": "*.txt"}, ctx)
    assert capped.truncated and "3 more files" in capped.text
