"""The repository's work tree as the agent sees it: what changed during a run, and `--commit`.

Changes are found by content hashes of every file git would track (tracked plus untracked,
not ignored), so shell side effects count as well as tool edits.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

# A fixed fallback identity so `--commit` works where no git user is configured (CI).
_FALLBACK_IDENTITY = {
    "GIT_AUTHOR_NAME": "dsv4",
    "GIT_AUTHOR_EMAIL": "dsv4@localhost",
    "GIT_COMMITTER_NAME": "dsv4",
    "GIT_COMMITTER_EMAIL": "dsv4@localhost",
}


class CommitError(RuntimeError):
    """`--commit` could not record the run's changes."""


def _git(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise CommitError(f"git {' '.join(args)} failed in {root}: {proc.stderr.strip()}")
    return proc.stdout


def fingerprint(root: Path) -> dict[str, str]:
    """Content hash of every tracked or untracked, non-ignored file under `root`."""
    try:
        out = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    except (CommitError, OSError):
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
    if not _git_has_identity(root):
        env.update(_FALLBACK_IDENTITY)
    _git(root, "commit", "--no-verify", "-q", "-m", message, "--", *files, env=env)
    return _git(root, "rev-parse", "HEAD").strip()


def _git_has_identity(root: Path) -> bool:
    proc = subprocess.run(
        ["git", "config", "user.email"], cwd=root, capture_output=True, text=True, check=False
    )
    return proc.returncode == 0 and bool(proc.stdout.strip())
