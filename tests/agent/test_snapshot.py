"""Workspace snapshots in real temporary git repositories."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dsv4.agent.snapshot import NothingToUndoError, SnapshotError, Snapshots


@pytest.fixture(autouse=True)
def _isolated_git(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep the host's git configuration out; give the *user's* commits an identity."""
    config = tmp_path_factory.mktemp("gitconfig") / "config"
    config.write_text("[user]\n\tname = Test User\n\temail = user@example.invalid\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


def tree_state(root: Path) -> dict[str, str]:
    """Every file under root except .git, with its content (and an x flag when executable)."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] == ".git" or not path.is_file():
            continue
        flag = "x" if os.access(path, os.X_OK) else ""
        state[rel.as_posix()] = flag + path.read_text()
    return state


def user_state(repo: Path) -> dict[str, str]:
    """What the user owns and snapshots must never change."""
    index = repo / ".git" / "index"
    return {
        "index": hashlib.sha256(index.read_bytes()).hexdigest() if index.exists() else "",
        "head": (repo / ".git" / "HEAD").read_text(),
        "refs": git(
            repo,
            "for-each-ref",
            "--format=%(refname) %(objectname)",
            "refs/heads",
            "refs/tags",
            "refs/stash",
        ),
        "stash": git(repo, "stash", "list"),
        "staged": git(repo, "diff", "--cached", "--name-status"),
    }


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / ".gitignore").write_text("*.log\nbuild/\n")
    (root / "src").mkdir()
    (root / "src" / "app.py").write_text("print('v1')\n")
    (root / "README.md").write_text("readme\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


def test_undo_restores_tracked_untracked_and_deleted_files(repo: Path) -> None:
    (repo / "notes.txt").write_text("untracked user note\n")  # untracked, not ignored
    before = tree_state(repo)
    snaps = Snapshots(repo)
    snaps.take("edit files")

    (repo / "src" / "app.py").write_text("print('v2')\n")  # modified
    (repo / "README.md").unlink()  # deleted tracked
    (repo / "notes.txt").write_text("overwritten\n")  # modified untracked
    (repo / "src" / "new.py").write_text("x = 1\n")  # created
    (repo / "pkg" / "deep").mkdir(parents=True)
    (repo / "pkg" / "deep" / "mod.py").write_text("y = 2\n")  # created in a new folder
    (repo / "run.sh").chmod(0o755)  # mode change

    restored = snaps.undo()
    assert restored.label == "edit files"
    assert tree_state(repo) == before
    assert not (repo / "pkg").exists(), "folders left empty by the undo are removed"
    assert snaps.history() == []


def test_undo_reverts_shell_side_effects(repo: Path) -> None:
    before = tree_state(repo)
    snaps = Snapshots(repo)
    snaps.take("bash: rm -rf src && mv README.md docs.md")
    subprocess.run(
        "rm -rf src && mv README.md docs.md && mkdir out && echo hi > out/x.txt",
        shell=True,
        cwd=repo,
        check=True,
    )
    snaps.undo()
    assert tree_state(repo) == before


def test_ignored_files_are_neither_recorded_nor_touched(repo: Path) -> None:
    (repo / "old.log").write_text("kept\n")
    snaps = Snapshots(repo)
    snaps.take("step")
    (repo / "old.log").write_text("changed after the snapshot\n")
    (repo / "build").mkdir()
    (repo / "build" / "out.o").write_text("object\n")
    snaps.undo()
    assert (repo / "old.log").read_text() == "changed after the snapshot\n"
    assert (repo / "build" / "out.o").read_text() == "object\n"
    tree = git(repo, "ls-tree", "-r", "--name-only", snaps_commit(repo))
    assert "old.log" not in tree and "build/out.o" not in tree


def snaps_commit(repo: Path) -> str:
    """The commit an undo kept of the replaced state (it holds what was there)."""
    return git(repo, "rev-parse", "refs/dsv4/undone").strip()


def test_user_index_head_branch_and_stash_are_unchanged(repo: Path) -> None:
    # A stash, a staged change that differs from the work tree, and an untracked file.
    (repo / "README.md").write_text("stashed change\n")
    git(repo, "stash", "-q")
    (repo / "src" / "app.py").write_text("print('staged')\n")
    git(repo, "add", "src/app.py")
    (repo / "src" / "app.py").write_text("print('staged then edited')\n")
    (repo / "notes.txt").write_text("n\n")
    owned = user_state(repo)
    before = tree_state(repo)

    snaps = Snapshots(repo)
    snaps.take("one")
    (repo / "src" / "app.py").write_text("agent edit\n")
    (repo / "extra.py").write_text("z\n")
    assert user_state(repo) == owned
    snaps.undo()

    assert user_state(repo) == owned
    assert tree_state(repo) == before
    assert git(repo, "diff", "--cached", "src/app.py").count("+print('staged')") == 1


def test_nested_undo_and_multi_step_undo(repo: Path) -> None:
    snaps = Snapshots(repo)
    app = repo / "src" / "app.py"
    states = []
    for n in range(4):
        states.append(app.read_text())
        snaps.take(f"step {n}")
        app.write_text(f"print('after step {n}')\n")
    assert [s.label for s in snaps.history()] == ["step 0", "step 1", "step 2", "step 3"]

    assert snaps.undo().label == "step 3"
    assert app.read_text() == states[3]
    assert snaps.undo().label == "step 2"
    assert app.read_text() == states[2]
    assert snaps.undo(steps=2).label == "step 0"
    assert app.read_text() == states[0]
    assert snaps.history() == []


def test_history_ids_and_parents(repo: Path) -> None:
    snaps = Snapshots(repo)
    first = snaps.take("first\nwith a newline")
    second = snaps.take("second")
    assert first.label == "first with a newline"
    assert (first.id, second.id) == ("000001", "000002")
    assert snaps.history() == [first, second]
    assert git(repo, "rev-parse", f"{second.commit}^").strip() == first.commit
    assert second.time >= first.time > 0


def test_nothing_to_undo(repo: Path) -> None:
    snaps = Snapshots(repo)
    with pytest.raises(NothingToUndoError, match="nothing to undo"):
        snaps.undo()
    snaps.take("only one")
    with pytest.raises(NothingToUndoError, match="only 1 step recorded"):
        snaps.undo(steps=2)
    with pytest.raises(SnapshotError, match="at least 1"):
        snaps.undo(steps=0)
    assert len(snaps.history()) == 1


def test_works_in_a_repository_without_commits(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("a\n")
    snaps = Snapshots(tmp_path)
    snaps.take("first step")
    (tmp_path / "a.txt").write_text("changed\n")
    (tmp_path / "b.txt").write_text("b\n")
    snaps.undo()
    assert tree_state(tmp_path) == {"a.txt": "a\n"}
    assert not (tmp_path / ".git" / "index").exists(), "the user's index was never created"
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--verify", "-q", "HEAD"])
    assert head.returncode != 0, "no commit was made on the user's branch"


def test_subdirectory_root_snapshots_the_whole_work_tree(repo: Path) -> None:
    snaps = Snapshots(repo / "src")
    snaps.take("from a subfolder")
    (repo / "README.md").write_text("changed\n")
    snaps.undo()
    assert (repo / "README.md").read_text() == "readme\n"


def test_not_a_git_repository(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="git init"):
        Snapshots(tmp_path)


def test_clear_forgets_history(repo: Path) -> None:
    snaps = Snapshots(repo)
    snaps.take("a")
    snaps.take("b")
    snaps.clear()
    assert snaps.history() == []


def test_file_directory_swaps_and_symlinks_are_undone(repo: Path) -> None:
    before = tree_state(repo)
    snaps = Snapshots(repo)
    snaps.take("reshape")
    (repo / "README.md").unlink()
    (repo / "README.md").mkdir()  # a file became a folder
    (repo / "README.md" / "inner.txt").write_text("i\n")
    shutil.rmtree(repo / "src")
    (repo / "src").write_text("a folder became a file\n")
    (repo / "link").symlink_to("run.sh")
    snaps.undo()
    assert tree_state(repo) == before
    assert not (repo / "link").is_symlink()
