"""`write`: create a file or replace its whole content."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dsv4.tools.base import FILE_PATH, ToolContext, ToolResult, object_schema, param
from dsv4.tools.files import open_for_change, save_change


@dataclass
class WriteTool:
    name: str = "write"
    mutating: bool = True
    description: str = (
        "Create a file, or overwrite an existing one with new content (the whole file). "
        "Prefer edit or apply_patch to change part of an existing file."
    )
    parameters: dict[str, Any] = field(
        default_factory=lambda: object_schema(
            ["file_path", "content"],
            file_path=FILE_PATH,
            content=param("string", "The complete new content."),
        )
    )

    def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        path, rel, current = open_for_change(ctx, args["file_path"])
        data = args["content"].encode("utf-8")
        if current == data:
            return ToolResult(
                True, f"{rel} already has this content; nothing changed", data={"changed_files": []}
            )
        save_change(ctx, path, rel, data, f"{self.name} {rel}")
        verb = "Created" if current is None else "Overwrote"
        lines = args["content"].count("\n") + (0 if args["content"].endswith("\n") else 1)
        return ToolResult(True, f"{verb} {rel} ({lines} lines)", data={"changed_files": [rel]})
