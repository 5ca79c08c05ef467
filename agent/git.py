"""Running git for the agent: one subprocess call whose errors name the command and folder.

Each caller raises its own exception type (`HookError`, `CommitError`, `SnapshotError`), so
the helper takes the type to raise rather than wrapping everything in a new one.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

# A fixed identity for the commits dsv4 writes itself (snapshots, `--commit` where no user
# is configured): they must work in CI containers that have no git user.
DSV4_IDENTITY = {
    "GIT_AUTHOR_NAME": "dsv4",
    "GIT_AUTHOR_EMAIL": "dsv4@localhost",
    "GIT_COMMITTER_NAME": "dsv4",
    "GIT_COMMITTER_EMAIL": "dsv4@localhost",
}


class GitError(RuntimeError):
    """A git command could not be started, or failed; the message says which and where."""


def git(
    root: Path,
    *args: str,
    check: bool = True,
    env: dict[str, str] | None = None,
    text: bool = True,
    error: type[Exception] = GitError,
) -> subprocess.CompletedProcess:
    """Run `git *args` in `root` with no stdin and captured output.

    `error` is raised when git cannot be started (not installed, `root` missing) and, with
    `check`, when it exits non-zero; the message quotes the command, `root` and git's stderr.
    `text=False` keeps stdout as bytes (binary patches).
    """
    command = " ".join(["git", *args])
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=text,
            stdin=subprocess.DEVNULL,
        )
    except OSError as exc:
        raise error(f"cannot run `{command}` in {root}: {exc}") from exc
    if check and proc.returncode != 0:
        stderr = proc.stderr if text else proc.stderr.decode(errors="replace")
        raise error(f"`{command}` failed in {root}: {stderr.strip()}")
    return proc
