"""`write`: create a file or replace its whole content."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dsv4.tools.base import (
    ToolContext,
    ToolResult,
    check_not_stale,
    guard_path,
    mark_mutation,
    record_state,
)
from dsv4.tools.files import load_bytes, store


@dataclass
class WriteTool:
    name: str = "write"
    mutating: bool = True
    description: str = (
        "Create a file, or overwrite an existing one with new content (the whole file). "
        "Prefer edit or apply_patch to change part of an existing file."
    )
    parameters: dict[str, Any] = field(
        default_factory=lambda: {
            "type": "object",
            "properties": {
                "file_path": {
                    "type": "string",
                    "description": "Path relative to the repository root.",
                },
                "content": {"type": "string", "description": "The complete new content."},
            },
            "required": ["file_path", "content"],
        }
    )

    def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        path, rel = guard_path(ctx, args["file_path"], write=True)
        current = load_bytes(path)
        check_not_stale(ctx, rel, current)
        data = args["content"].encode("utf-8")
        if current == data:
            return ToolResult(
                True, f"{rel} already has this content; nothing changed", data={"changed_files": []}
            )
        mark_mutation(ctx, self.name)
        store(path, data)
        record_state(ctx, rel, data)
        verb = "Created" if current is None else "Overwrote"
        lines = args["content"].count("\n") + (0 if args["content"].endswith("\n") else 1)
        return ToolResult(True, f"{verb} {rel} ({lines} lines)", data={"changed_files": [rel]})
