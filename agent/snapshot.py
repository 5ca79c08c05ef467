"""Workspace snapshots for undo, stored as commits under `refs/dsv4/snapshots/`.

Before each mutating agent step the whole work tree (tracked files and untracked files that
are not ignored, including deletions and whatever a shell command left behind) is recorded
as a commit. Every git command here runs with a private, temporary index file
(`GIT_INDEX_FILE`), so the user's index, HEAD, branches and stash are never touched; the
snapshots live only in their own ref namespace. Ignored files are never recorded and never
touched by a restore.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dsv4.agent.git import DSV4_IDENTITY, git

REF_PREFIX = "refs/dsv4/snapshots/"
# The state that an undo replaced, kept so that an undo can itself be recovered by hand
# (`git checkout refs/dsv4/undone -- .`); overwritten by the next undo.
UNDONE_REF = "refs/dsv4/undone"

# Variables a git hook exports that would redirect our commands to another index or tree.
_GIT_ENV_DROP = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_PREFIX", "GIT_OBJECT_DIRECTORY")


class SnapshotError(RuntimeError):
    """A snapshot could not be taken, listed or restored; the message says why."""


class NothingToUndoError(SnapshotError):
    """`undo` was asked for more steps than the history holds."""


@dataclass(frozen=True)
class Snapshot:
    """One recorded workspace state."""

    id: str  # sequence number, zero-padded so refs sort in order ("000003")
    label: str  # what the agent was about to do, one line
    time: float  # seconds since the epoch (the snapshot commit's committer date)
    commit: str  # sha of the snapshot commit under refs/dsv4/snapshots/<id>

    @property
    def ref(self) -> str:
        return REF_PREFIX + self.id


class Snapshots:
    """The snapshot history of the git work tree that contains `root`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            what = "is not a directory" if self.root.exists() else "does not exist"
            raise SnapshotError(f"{self.root} {what}; give the repository folder")
        probe = _git(self.root, "rev-parse", "--show-toplevel", "--absolute-git-dir", check=False)
        if probe.returncode != 0:
            raise SnapshotError(
                f"{self.root} is not inside a git work tree (dsv4 keeps its undo snapshots "
                "in git); run `git init` there first (no commit is needed)"
            )
        toplevel, git_dir = probe.stdout.splitlines()[:2]
        self.toplevel = Path(toplevel)
        self.git_dir = Path(git_dir)

    # -- recording ---------------------------------------------------------------------

    def take(self, label: str) -> Snapshot:
        """Record the current work tree as the newest snapshot."""
        label = " ".join(label.split()) or "snapshot"
        history = self.history()
        parent = history[-1].commit if history else None
        commit = self._commit_worktree(label, parent)
        snap_id = f"{int(history[-1].id) + 1 if history else 1:06d}"
        self._run(["update-ref", REF_PREFIX + snap_id, commit, ""])
        return self._read(REF_PREFIX + snap_id)

    def history(self) -> list[Snapshot]:
        """All snapshots, oldest first (newest last)."""
        fmt = "%(refname)%00%(objectname)%00%(committerdate:unix)%00%(contents:subject)"
        out = self._run(["for-each-ref", "--sort=refname", f"--format={fmt}", REF_PREFIX])
        return [_parse_ref_line(line) for line in out.splitlines() if line]

    # -- restoring ---------------------------------------------------------------------

    def restore(self, snap: Snapshot) -> None:
        """Make the work tree exactly `snap` (ignored files and the user's index untouched)."""
        with self._private_index() as env:
            # The private index first describes the current tree, so that the one-tree
            # `read-tree --reset -u` below knows which files to delete (those absent from
            # the snapshot) as well as which to write.
            self._run(["add", "-A", "--", "."], env=env)
            self._run(["read-tree", "--reset", "-u", f"{snap.commit}^{{tree}}"], env=env)

    def undo(self, steps: int = 1) -> Snapshot:
        """Restore the state before the last `steps` agent steps and drop them from history.

        Returns the snapshot that was restored. The replaced state is kept under
        `refs/dsv4/undone` until the next undo.
        """
        if steps < 1:
            raise SnapshotError(f"undo: steps must be at least 1, got {steps}")
        history = self.history()
        if len(history) < steps:
            raise NothingToUndoError(_nothing_message(self.toplevel, len(history), steps))
        target = history[-steps]
        undone = self._commit_worktree(f"before undo to {target.id}", history[-1].commit)
        self._run(["update-ref", UNDONE_REF, undone])
        self.restore(target)
        for snap in history[-steps:]:
            self._run(["update-ref", "-d", snap.ref, snap.commit])
        return target

    def clear(self) -> None:
        """Forget every snapshot (the objects are left for git's garbage collection)."""
        for snap in self.history():
            self._run(["update-ref", "-d", snap.ref, snap.commit])

    # -- internals ---------------------------------------------------------------------

    def _commit_worktree(self, message: str, parent: str | None) -> str:
        with self._private_index() as env:
            self._run(["add", "-A", "--", "."], env=env)
            tree = self._run(["write-tree"], env=env).strip()
        # A fixed identity (works without a configured user), and never signed: signing
        # could prompt for a passphrase.
        args = ["-c", "commit.gpgSign=false", "commit-tree", tree, "-m", message]
        if parent:
            args += ["-p", parent]
        return self._run(args, env={**_clean_env(), **DSV4_IDENTITY}).strip()

    @contextmanager
    def _private_index(self) -> Iterator[dict[str, str]]:
        """An environment whose GIT_INDEX_FILE is a throwaway copy of the user's index.

        Starting from a copy (rather than empty) keeps files the user force-added despite
        .gitignore, and lets `git add` reuse cached stat data instead of rehashing the tree.
        """
        tmp = Path(tempfile.mkdtemp(prefix="dsv4-index-"))
        try:
            index = tmp / "index"
            user_index = self.git_dir / "index"
            if user_index.is_file():
                shutil.copyfile(user_index, index)
            yield {**_clean_env(), "GIT_INDEX_FILE": str(index)}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _read(self, ref: str) -> Snapshot:
        fmt = "%(refname)%00%(objectname)%00%(committerdate:unix)%00%(contents:subject)"
        out = self._run(["for-each-ref", f"--format={fmt}", ref])
        return _parse_ref_line(out.splitlines()[0])

    def _run(self, args: list[str], env: dict[str, str] | None = None) -> str:
        return _git(self.toplevel, *args, env=env).stdout


def _git(
    cwd: Path, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    # A hook's GIT_DIR / GIT_INDEX_FILE would point our commands elsewhere: drop them.
    env = env if env is not None else _clean_env()
    return git(cwd, *args, env=env, check=check, error=SnapshotError)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _GIT_ENV_DROP}


def _parse_ref_line(line: str) -> Snapshot:
    ref, commit, when, subject = line.split("\0", 3)
    return Snapshot(id=ref.removeprefix(REF_PREFIX), label=subject, time=float(when), commit=commit)


def _nothing_message(toplevel: Path, available: int, steps: int) -> str:
    if available == 0:
        return f"nothing to undo in {toplevel}: no agent step has been recorded"
    return (
        f"cannot undo {steps} steps in {toplevel}: only {available} "
        f"step{'s' if available != 1 else ''} recorded"
    )
