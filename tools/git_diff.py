"""`git_diff`: the working tree's changes against HEAD, plus the untracked files."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsv4.tools.base import ToolContext, ToolError, ToolResult, guard_path, object_schema, param
from dsv4.tools.output import bounded_result


@dataclass
class GitDiffTool:
    max_output_chars: int = 30_000
    name: str = "git_diff"
    mutating: bool = False
    description: str = (
        "Show uncommitted changes (working tree and index against HEAD) as a unified diff, "
        "and list untracked files. Optionally limited to one file or folder (path)."
    )
    parameters: dict[str, Any] = field(
        default_factory=lambda: object_schema(
            [], path=param("string", "File or folder to limit the diff to.")
        )
    )

    def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        _, rel = guard_path(ctx, args.get("path", "."), write=False)
        if _git(ctx.root, ["rev-parse", "--is-inside-work-tree"]).returncode != 0:
            raise ToolError("git_diff: the repository root is not a git work tree")
        has_head = _git(ctx.root, ["rev-parse", "--verify", "-q", "HEAD"]).returncode == 0
        # Without a first commit there is no HEAD; the index is then the only baseline.
        base = (
            ["diff", "--no-color", "--no-ext-diff", "HEAD"]
            if has_head
            else ["diff", "--no-color", "--cached"]
        )
        diff = _git(ctx.root, [*base, "--", rel])
        if diff.returncode != 0:
            raise ToolError(f"git diff failed: {diff.stderr.strip()}")
        untracked = _git(
            ctx.root, ["ls-files", "--others", "--exclude-standard", "--", rel]
        ).stdout.splitlines()
        text = diff.stdout or "No changes to tracked files.\n"
        if untracked:
            text += "\nUntracked files:\n" + "\n".join(f"  {u}" for u in untracked) + "\n"
        return bounded_result(
            True, text, ctx, self.max_output_chars, untracked=untracked, has_head=has_head
        )


def _git(root: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    argv = ["git", "-c", "core.quotepath=off", *args]
    try:
        return subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolError(f"git failed to run: {exc}") from exc
