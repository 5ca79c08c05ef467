"""AGENTS.md discovery, byte cap and rendering."""

from __future__ import annotations

from pathlib import Path

from dsv4.agent.agents_md import read_agents_md, render_agents_md


def test_root_and_working_directory_in_order(tmp_path: Path) -> None:
    (tmp_path / "AGENTS.md").write_text("Run `make test`.\n")
    sub = tmp_path / "pkg" / "core"
    sub.mkdir(parents=True)
    (sub / "AGENTS.md").write_text("Keep core dependency-free.\n")
    docs = read_agents_md(tmp_path, cwd=sub)
    assert [d.path for d in docs] == [tmp_path / "AGENTS.md", sub / "AGENTS.md"]
    assert [d.truncated for d in docs] == [False, False]
    rendered = render_agents_md(docs, tmp_path)
    assert rendered.index("from AGENTS.md") < rendered.index("from pkg/core/AGENTS.md")
    assert "Run `make test`." in rendered and "Keep core dependency-free." in rendered


def test_same_folder_is_read_once_and_missing_files_are_fine(tmp_path: Path) -> None:
    (tmp_path / "AGENTS.md").write_text("x\n")
    assert len(read_agents_md(tmp_path, cwd=tmp_path)) == 1
    (tmp_path / "empty").mkdir()
    assert read_agents_md(tmp_path / "empty") == []


def test_folder_outside_the_repository_is_ignored(tmp_path: Path) -> None:
    repo, other = tmp_path / "repo", tmp_path / "other"
    repo.mkdir()
    other.mkdir()
    (other / "AGENTS.md").write_text("unrelated\n")
    assert read_agents_md(repo, cwd=other) == []


def test_byte_cap_truncates_on_a_character_boundary(tmp_path: Path) -> None:
    text = "é" * 100  # two bytes each
    (tmp_path / "AGENTS.md").write_text(text, encoding="utf-8")
    (doc,) = read_agents_md(tmp_path, max_bytes=51)
    assert doc.truncated and doc.size == 200
    body, note = doc.text.split("\n\n", 1)
    assert body == "é" * 25, "the half character at the cut is dropped, not mangled"
    assert "truncated: showing the first 51 of 200 bytes" in note


def test_under_the_cap_is_verbatim(tmp_path: Path) -> None:
    (tmp_path / "AGENTS.md").write_text("exact\ncontent\n")
    (doc,) = read_agents_md(tmp_path, max_bytes=14)
    assert (doc.text, doc.truncated) == ("exact\ncontent\n", False)
