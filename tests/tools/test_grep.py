"""The grep tool with ripgrep and with the Python fallback: same output, same files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dsv4.tools import grep as grep_module
from dsv4.tools.base import ToolContext, run_tool
from dsv4.tools.grep import GrepTool

HAS_RG = shutil.which("rg") is not None


def _layout(root: Path) -> None:
    (root / "src").mkdir()
    (root / "src/a.py").write_text("import os\ndef target():\n    return 1\n")
    (root / "src/b.txt").write_text("target in text\n")
    (root / "a.py").write_text("target = 2\n")
    (root / "notes:odd.md").write_text("a target here\n")
    (root / "blob.bin").write_bytes(b"target\x00\x01")
    (root / ".gitignore").write_text("build/\n")
    (root / "build").mkdir()
    (root / "build/out.py").write_text("target ignored\n")


@pytest.fixture
def layout(git_repo: Path, run_git) -> Path:
    _layout(git_repo)
    run_git(git_repo, "add", "src/a.py", "a.py")
    return git_repo


def _hide_rg(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `shutil.which("rg")` find nothing (git stays visible to the file listing)."""
    real_which = shutil.which
    monkeypatch.setattr(grep_module.shutil, "which", lambda n: None if n == "rg" else real_which(n))


def _grep(ctx: ToolContext, rg: bool, monkeypatch: pytest.MonkeyPatch, **args):
    if not rg:
        _hide_rg(monkeypatch)
    return run_tool([GrepTool()], "grep", args, ctx)


BACKENDS = [
    pytest.param(True, marks=pytest.mark.skipif(not HAS_RG, reason="ripgrep not installed")),
    False,
]


@pytest.mark.parametrize("rg", BACKENDS, ids=["rg", "python"])
def test_matches_are_path_line_text_sorted(layout: Path, ctx: ToolContext, rg, monkeypatch):
    result = _grep(ctx, rg, monkeypatch, pattern="target")
    assert result.ok
    assert result.text.splitlines() == [
        "a.py:1:target = 2",
        "notes:odd.md:1:a target here",
        "src/a.py:2:def target():",
        "src/b.txt:1:target in text",
    ]


@pytest.mark.parametrize("rg", BACKENDS, ids=["rg", "python"])
def test_path_and_glob_filters(layout: Path, ctx: ToolContext, rg, monkeypatch):
    assert _grep(ctx, rg, monkeypatch, pattern="target", glob="*.py").text.splitlines() == [
        "a.py:1:target = 2",
        "src/a.py:2:def target():",
    ]
    assert (
        _grep(ctx, rg, monkeypatch, pattern=r"return \d", path="src").text
        == "src/a.py:3:    return 1"
    )


@pytest.mark.parametrize("rg", BACKENDS, ids=["rg", "python"])
def test_no_match_and_bad_regex(layout: Path, ctx: ToolContext, rg, monkeypatch):
    none = _grep(ctx, rg, monkeypatch, pattern="zzz_absent")
    assert none.ok and none.text.startswith("No matches")
    bad = _grep(ctx, rg, monkeypatch, pattern="(unclosed")
    assert not bad.ok and "grep failed" in bad.text


@pytest.mark.skipif(not HAS_RG, reason="ripgrep not installed")
def test_backends_agree(layout: Path, ctx: ToolContext, monkeypatch):
    cases = ({"pattern": "t"}, {"pattern": "^imp", "glob": "*.py"}, {"pattern": "e", "path": "src"})
    with_rg = [run_tool([GrepTool()], "grep", args, ctx).text for args in cases]
    _hide_rg(monkeypatch)
    without = [run_tool([GrepTool()], "grep", args, ctx).text for args in cases]
    assert with_rg == without


def test_fallback_skips_git_dir_outside_a_git_repo(repo: Path, ctx: ToolContext, monkeypatch):
    (repo / ".git").mkdir()
    (repo / ".git/HEAD").write_text("target\n")
    (repo / "f.txt").write_text("target\n")
    monkeypatch.setattr(grep_module.shutil, "which", lambda n: None)
    assert run_tool([GrepTool()], "grep", {"pattern": "target"}, ctx).text == "f.txt:1:target"


def test_many_matches_are_capped(repo: Path, ctx: ToolContext, monkeypatch):
    (repo / "f.txt").write_text("hit\n" * 50)
    result = run_tool([GrepTool(max_matches=10)], "grep", {"pattern": "hit"}, ctx)
    assert result.truncated and result.data["count"] == 50
    assert len(result.text.splitlines()) == 11 and "40 more matches" in result.text
