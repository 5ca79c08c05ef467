"""The repository's files as the search tools see them: git's view when there is one.

In a git work tree the list is `git ls-files --cached --others --exclude-standard`, so
.gitignore'd files (build outputs, virtualenvs) are left out exactly as git leaves them out.
Elsewhere a plain walk that skips `.git/` folders.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from dsv4.tools.base import ToolContext, guard_path

_WALK_SKIP = {".git"}


def list_files(root: Path, base: str = "") -> list[str]:
    """Sorted repository-relative POSIX paths of the files under `base` (a relative path)."""
    listed = _git_files(root, base)
    if listed is None:
        listed = _walk_files(root, base)
    return sorted(set(listed))


def search_base(ctx: ToolContext, path: str) -> str:
    """The repository-relative folder (or file) a search is limited to; "" for the root.

    Checked against the policy like any read.
    """
    _, base = guard_path(ctx, path, write=False)
    return "" if base == "." else base


def relative_to_base(rel: str, base: str) -> str:
    """`rel` relative to the searched folder `base`, so patterns are relative to `path`."""
    return rel[len(base) + 1 :] if base and rel.startswith(base + "/") else rel


def _git_files(root: Path, base: str) -> list[str] | None:
    if shutil.which("git") is None:
        return None
    argv = [
        "git",
        "ls-files",
        "-z",
        "--cached",
        "--others",
        "--exclude-standard",
        "--",
        base or ".",
    ]
    try:
        proc = subprocess.run(argv, cwd=root, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:  # not a git work tree
        return None
    names = proc.stdout.decode("utf-8", errors="surrogateescape").split("\0")
    # --cached still lists files deleted from the work tree, and submodules as folders.
    return [n for n in names if n and (root / n).is_file()]


def _walk_files(root: Path, base: str) -> list[str]:
    start = root / base
    if start.is_file():
        return [base]
    found = []
    for folder, dirs, files in os.walk(start):
        dirs[:] = [d for d in dirs if d not in _WALK_SKIP]
        rel = Path(folder).relative_to(root)
        found.extend((rel / f).as_posix() for f in files)
    return found
