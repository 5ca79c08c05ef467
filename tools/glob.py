"""`glob`: find files by name pattern (`**/*.py`, `src/*.ts`), git-ignored files left out."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from dsv4.tools.base import ToolContext, ToolError, ToolResult, object_schema, param
from dsv4.tools.listing import list_files, relative_to_base, search_base


@dataclass
class GlobTool:
    max_results: int = 200
    name: str = "glob"
    mutating: bool = False
    description: str = (
        "List files whose path matches a glob pattern, sorted by path. `*` matches within "
        "one folder, `**` across folders; a pattern without `/` matches file names at any "
        "depth (`*.py`). Files ignored by git are not listed."
    )
    parameters: dict[str, Any] = field(
        default_factory=lambda: object_schema(
            ["pattern"],
            pattern=param("string", "Glob pattern, e.g. `**/*.py`."),
            path=param("string", "Folder to search in (default: the repository root)."),
        )
    )

    def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        base = search_base(ctx, args.get("path", "."))
        pattern = args["pattern"]
        files = list_files(ctx.root, base)
        try:
            matched = [f for f in files if glob_match(pattern, relative_to_base(f, base))]
        except re.error as exc:
            raise ToolError(f"invalid glob pattern {pattern!r}: {exc}") from exc
        if not matched:
            return ToolResult(True, f"No files match {pattern!r}.", data={"count": 0})
        shown = matched[: self.max_results]
        text = "\n".join(shown)
        if len(matched) > len(shown):
            text += f"\n[{len(matched) - len(shown)} more files not shown; narrow the pattern]"
        return ToolResult(
            True, text, truncated=len(matched) > len(shown), data={"count": len(matched)}
        )


def glob_match(pattern: str, rel: str) -> bool:
    """Whether POSIX path `rel` matches `pattern` (names only when it has no `/`)."""
    pattern = pattern.strip().removeprefix("./")
    target = rel if "/" in pattern else rel.rsplit("/", 1)[-1]
    return any(_compile(p).fullmatch(target) for p in _expand_braces(pattern))


def _expand_braces(pattern: str) -> list[str]:
    """`*.{ts,tsx}` -> [`*.ts`, `*.tsx`] (one level per brace pair, nesting by recursion)."""
    match = re.search(r"\{([^{}]*,[^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [x for alt in match.group(1).split(",") for x in _expand_braces(head + alt + tail)]


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    """Translate a glob into a regex: `**/` is zero or more folders, `*` stays in one."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))
