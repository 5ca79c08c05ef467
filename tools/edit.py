"""`edit`: replace a string in a file, through the exact-then-fuzzy edit cascade."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dsv4.tools.base import FILE_PATH, ToolContext, ToolError, ToolResult, object_schema, param
from dsv4.tools.editing import EditOutcome, apply_edit
from dsv4.tools.files import decode_text, open_for_change, save_change

_SNIPPET_CONTEXT = 3


@dataclass
class EditTool:
    name: str = "edit"
    mutating: bool = True
    description: str = (
        "Replace old_string with new_string in a file. old_string must match the file "
        "exactly (copy it without the line-number prefix of read) and be unique unless "
        "replace_all is true. An empty old_string creates a new file with new_string."
    )
    parameters: dict[str, Any] = field(
        default_factory=lambda: object_schema(
            ["file_path", "old_string", "new_string"],
            file_path=FILE_PATH,
            old_string=param("string", "The exact text to replace."),
            new_string=param("string", "The text to put in its place."),
            replace_all=param("boolean", "Replace every occurrence (default false)."),
        )
    )

    def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        path, rel, current = open_for_change(ctx, args["file_path"])
        text = decode_text(current, rel)
        outcome = apply_edit(
            text, args["old_string"], args["new_string"], args.get("replace_all", False)
        )
        if not outcome.ok:
            raise ToolError(f"Edit of {rel} failed: {outcome.message}", changed_files=[])
        if not outcome.changed:
            return ToolResult(True, f"{rel}: {outcome.message}", data={"changed_files": []})
        save_change(ctx, path, rel, outcome.text.encode("utf-8"), f"{self.name} {rel}")
        summary = f"Edited {rel}: {outcome.message}.\n{_snippet(outcome, args['new_string'])}"
        return ToolResult(
            True, summary, data={"changed_files": [rel], "strategy": outcome.strategy}
        )


def _snippet(outcome: EditOutcome, new: str) -> str:
    """The edited lines with a little context, numbered like `read`, so the model can check."""
    lines = outcome.text.splitlines()
    first = (outcome.line or 1) - 1
    span = max(1, new.count("\n") + 1)
    lo, hi = max(0, first - _SNIPPET_CONTEXT), min(len(lines), first + span + _SNIPPET_CONTEXT)
    return "\n".join(f"{n + 1:6}\t{lines[n]}" for n in range(lo, hi))
