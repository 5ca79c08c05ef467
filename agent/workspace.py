"""The repository's work tree as the agent sees it: what changed during a run, and `--commit`.

Changes are found by content hashes of every file git would track (tracked plus untracked,
not ignored), so shell side effects count as well as tool edits.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from dsv4.agent.git import DSV4_IDENTITY, git


class CommitError(RuntimeError):
    """`--commit` could not record the run's changes."""


def _git(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return git(root, *args, env=env, error=CommitError).stdout


def fingerprint(root: Path) -> dict[str, str]:
    """Content hash of every tracked or untracked, non-ignored file under `root`."""
    try:
        out = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    except CommitError:  # not a git work tree (or no git): nothing to compare
        return {}
    hashes = {}
    for rel in sorted(set(filter(None, out.split("\0")))):
        path = root / rel
        if path.is_file() and not path.is_symlink():
            hashes[rel] = hashlib.sha1(path.read_bytes()).hexdigest()
        elif path.is_symlink():
            hashes[rel] = "link:" + os.readlink(path)
    return hashes


def changed_files(root: Path, before: dict[str, str]) -> list[str]:
    """Files created, modified or deleted since `before` was taken, sorted."""
    after = fingerprint(root)
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def commit_changes(root: Path, files: list[str], message: str) -> str:
    """Commit exactly `files` (the run's changes) and return the new commit's sha.

    Only these paths are staged, so the user's other uncommitted work stays as it was.
    """
    _git(root, "add", "-A", "--", *files)
    env = dict(os.environ)
    if not _git_has_identity(root):  # fall back to dsv4's own, so `--commit` works in CI
        env.update(DSV4_IDENTITY)
    _git(root, "commit", "--no-verify", "-q", "-m", message, "--", *files, env=env)
    return _git(root, "rev-parse", "HEAD").strip()


def _git_has_identity(root: Path) -> bool:
    proc = git(root, "config", "user.email", check=False, error=CommitError)
    return proc.returncode == 0 and bool(proc.stdout.strip())
