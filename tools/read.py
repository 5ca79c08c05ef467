"""`read`: a file's lines numbered like `cat -n`, a window at a time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dsv4.tools.base import (
    FILE_PATH,
    ToolContext,
    ToolError,
    ToolResult,
    guard_path,
    object_schema,
    param,
    record_state,
)

_BINARY_PROBE = 8192


@dataclass
class ReadTool:
    max_lines: int = 2000
    """Lines returned when `limit` is not given (and the most a call may ask for)."""
    max_line_chars: int = 2000
    """Longer lines are cut, with a marker, so one minified line cannot flood the context."""
    name: str = "read"
    mutating: bool = False
    description: str = (
        "Read a text file. Lines are numbered from 1 like `cat -n` (the number and a tab are "
        "not part of the file). By default returns up to 2000 lines; use offset and limit "
        "to read a window of a long file."
    )
    parameters: dict[str, Any] = field(
        default_factory=lambda: object_schema(
            ["file_path"],
            file_path=FILE_PATH,
            offset=param("integer", "1-based line to start from."),
            limit=param("integer", "Number of lines to return."),
        )
    )

    def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        path, rel = guard_path(ctx, args["file_path"], write=False)
        if path.is_dir():
            raise ToolError(f"{rel or '.'} is a directory; use glob to list its files")
        if not path.exists():
            raise ToolError(f"{rel}: file not found")
        data = path.read_bytes()
        if b"\0" in data[:_BINARY_PROBE]:
            raise ToolError(
                f"{rel} is a binary file ({len(data)} bytes); it cannot be shown as text"
            )
        record_state(ctx, rel, data)
        text = data.decode("utf-8", errors="replace")
        offset = max(1, args.get("offset", 1))
        limit = min(max(1, args.get("limit", self.max_lines)), self.max_lines)
        lines = text.splitlines()
        if not lines:
            return ToolResult(True, "(empty file)", data={"path": rel, "lines": 0})
        if offset > len(lines):
            note = f"(offset {offset} is past the end: the file has {len(lines)} lines)"
            return ToolResult(False, note, data={"path": rel, "lines": len(lines)})
        end = min(len(lines), offset - 1 + limit)
        body = "\n".join(f"{n:6}\t{self._cut(lines[n - 1])}" for n in range(offset, end + 1))
        partial = offset > 1 or end < len(lines)
        if partial:
            more = f"; continue with offset={end + 1}" if end < len(lines) else ""
            body += f"\n(showing lines {offset}-{end} of {len(lines)}{more})"
        return ToolResult(True, body, truncated=partial, data={"path": rel, "lines": len(lines)})

    def _cut(self, line: str) -> str:
        if len(line) <= self.max_line_chars:
            return line
        return line[: self.max_line_chars] + f"... [line cut: {len(line)} characters]"
