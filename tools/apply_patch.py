"""`apply_patch`: apply a unified diff to several files at once, all or nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsv4.tools.base import (
    ToolContext,
    ToolError,
    ToolResult,
    mark_mutation,
    object_schema,
    param,
    record_state,
)
from dsv4.tools.files import decode_text, open_for_change, store
from dsv4.tools.patching import FilePatch, PatchError, apply_file_patch, parse_patch


@dataclass
class _Change:
    path: Path
    rel: str
    before: bytes | None
    after: bytes | None


@dataclass
class ApplyPatchTool:
    name: str = "apply_patch"
    mutating: bool = True
    description: str = (
        "Apply a unified diff (as produced by `git diff` or `diff -u`) to one or more files. "
        "Use `--- /dev/null` to create a file and `+++ /dev/null` to delete one. Context "
        "lines must match the file exactly; the line numbers in @@ headers may be off. "
        "Either every file is patched or none is."
    )
    parameters: dict[str, Any] = field(
        default_factory=lambda: object_schema(
            ["patch"], patch=param("string", "The unified diff text.")
        )
    )

    def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        try:
            patches = parse_patch(args["patch"])
        except PatchError as exc:
            raise ToolError(f"Patch not applied (malformed): {exc}") from exc
        changes = [self._plan(p, ctx) for p in _refuse_duplicates(patches)]
        mark_mutation(ctx, f"{self.name} {', '.join(c.rel for c in changes)}")
        _commit(changes)
        for change in changes:
            record_state(ctx, change.rel, change.after)
        return ToolResult(True, _summary(changes), data={"changed_files": [c.rel for c in changes]})

    def _plan(self, patch: FilePatch, ctx: ToolContext) -> _Change:
        """The new content of one file, computed in memory; nothing is written yet."""
        path, rel, before = open_for_change(ctx, patch.path)
        try:
            after = apply_file_patch(decode_text(before, rel), patch)
        except PatchError as exc:
            raise ToolError(f"Patch not applied (no file was changed): {exc}") from exc
        return _Change(path, rel, before, None if after is None else after.encode("utf-8"))


def _refuse_duplicates(patches: list[FilePatch]) -> list[FilePatch]:
    """Two sections for one path would each see the original; refuse rather than guess."""
    seen: set[str] = set()
    for patch in patches:
        if patch.old_path and patch.new_path and patch.old_path != patch.new_path:
            raise ToolError(
                f"Patch not applied: renaming {patch.old_path} to {patch.new_path} is not "
                "supported; delete the old file and create the new one in two sections"
            )
        if patch.path in seen:
            raise ToolError(
                f"Patch not applied: {patch.path} appears twice; put all its hunks in one section"
            )
        seen.add(patch.path)
    return patches


def _commit(changes: list[_Change]) -> None:
    """Write every change; if one write fails, put back the files already written."""
    done: list[_Change] = []
    try:
        for change in changes:
            store(change.path, change.after)
            done.append(change)
    except OSError as exc:
        for change in reversed(done):
            store(change.path, change.before)
        raise ToolError(
            f"Patch not applied: writing {change.rel} failed ({exc}); rolled back"
        ) from exc


def _summary(changes: list[_Change]) -> str:
    lines = []
    for change in changes:
        verb = (
            "created" if change.before is None else "deleted" if change.after is None else "patched"
        )
        lines.append(f"{verb} {change.rel}")
    return "Applied the patch:\n" + "\n".join(lines)
