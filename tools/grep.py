"""`grep`: search file contents by regular expression; ripgrep when installed, else Python.

Both back ends produce the same `path:line:text` lines, sorted by path and line, over the
same files (git-ignored files and `.git/` left out, hidden files included).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsv4.tools.base import ToolContext, ToolError, ToolResult, object_schema, param
from dsv4.tools.glob import glob_match
from dsv4.tools.listing import list_files, relative_to_base, search_base

Match = tuple[str, int, str]
"""(repository-relative path, 1-based line number, line text)."""


@dataclass
class GrepTool:
    max_matches: int = 200
    max_line_chars: int = 300
    timeout: float = 60.0
    name: str = "grep"
    mutating: bool = False
    description: str = (
        "Search file contents with a regular expression. Prints `path:line:text` for each "
        "matching line, sorted by path. Optionally limit to a folder or file (path) and to "
        "file names matching a glob (`*.py`). Files ignored by git are skipped."
    )
    parameters: dict[str, Any] = field(
        default_factory=lambda: object_schema(
            ["pattern"],
            pattern=param("string", "Regular expression to search for."),
            path=param("string", "File or folder to search (default: the repository root)."),
            glob=param("string", "Only search files matching this glob, e.g. `*.py`."),
        )
    )

    def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        base = search_base(ctx, args.get("path", "."))
        pattern, glob = args["pattern"], args.get("glob")
        if shutil.which("rg"):
            matches = search_rg(ctx.root, pattern, base, glob, self.timeout)
        else:
            matches = search_python(ctx.root, pattern, base, glob)
        return self._render(sorted(matches), pattern)

    def _render(self, matches: list[Match], pattern: str) -> ToolResult:
        if not matches:
            return ToolResult(True, f"No matches for {pattern!r}.", data={"count": 0})
        shown = matches[: self.max_matches]
        lines = [f"{path}:{line}:{self._cut(text)}" for path, line, text in shown]
        truncated = len(matches) > len(shown)
        if truncated:
            lines.append(f"[{len(matches) - len(shown)} more matches not shown; narrow the search]")
        return ToolResult(True, "\n".join(lines), truncated=truncated, data={"count": len(matches)})

    def _cut(self, text: str) -> str:
        if len(text) <= self.max_line_chars:
            return text
        return text[: self.max_line_chars] + " [... line cut]"


def search_rg(root: Path, pattern: str, base: str, glob: str | None, timeout: float) -> list[Match]:
    """Matches found by ripgrep (`--null` keeps paths with colons unambiguous)."""
    argv = ["rg", "--no-config", "--no-heading", "--with-filename", "--line-number", "--null"]
    argv += ["--color", "never", "--hidden", "--glob", "!.git"]
    if glob:
        argv += ["--glob", glob]
    argv += ["--regexp", pattern, "--"] + ([base] if base else [])
    try:
        proc = subprocess.run(argv, cwd=root, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"grep timed out after {timeout:.0f}s; narrow the path or glob") from exc
    if proc.returncode == 2 and not proc.stdout:
        raise ToolError(f"grep failed: {proc.stderr.decode(errors='replace').strip()}")
    matches = []
    for raw in proc.stdout.decode("utf-8", errors="replace").splitlines():
        path, _, rest = raw.partition("\0")
        number, _, text = rest.partition(":")
        if number.isdigit():
            matches.append((path.removeprefix("./"), int(number), text))
    return matches


def search_python(root: Path, pattern: str, base: str, glob: str | None) -> list[Match]:
    """The same search in pure Python, over the files git would show."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ToolError(f"grep failed: invalid regular expression {pattern!r}: {exc}") from exc
    matches = []
    for rel in list_files(root, base):
        if glob and not glob_match(glob, relative_to_base(rel, base)):
            continue
        data = (root / rel).read_bytes()
        if b"\0" in data:  # binary, skipped as ripgrep skips it
            continue
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if regex.search(line):
                matches.append((rel, number, line))
    return matches
