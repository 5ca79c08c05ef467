"""Long tool output: keep the head and tail for the model, spill the full text to a file."""

from __future__ import annotations

import tempfile
from pathlib import Path

from dsv4.tools.base import ToolContext, ToolResult


def head_tail(text: str, max_chars: int) -> tuple[str, bool]:
    """`text` cut to about `max_chars`: its first and last parts around an omission note.

    Cuts fall on line boundaries when one is near, so the model never sees half a line.
    """
    if len(text) <= max_chars:
        return text, False
    head_len = max_chars // 2
    tail_len = max_chars - head_len
    head = text[:head_len]
    tail = text[len(text) - tail_len :]
    if "\n" in head[head_len // 2 :]:
        head = head[: head.rindex("\n") + 1]
    if "\n" in tail[: tail_len // 2]:
        tail = tail[tail.index("\n") + 1 :]
    omitted = len(text) - len(head) - len(tail)
    lines = text.count("\n", len(head), len(text) - len(tail))
    return f"{head}\n[... {omitted} characters ({lines} lines) omitted ...]\n{tail}", True


def scratch_dir(ctx: ToolContext) -> Path:
    """The directory for spilled outputs (created on first use; outside the repository)."""
    directory = ctx.scratch_dir or Path(tempfile.gettempdir()) / "dsv4-tool-output"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def bounded_result(
    ok: bool, text: str, ctx: ToolContext, max_chars: int, **data: object
) -> ToolResult:
    """A result whose text is cut to `max_chars`; the full text is saved when cut."""
    shown, truncated = head_tail(text, max_chars)
    if not truncated:
        return ToolResult(ok, text, data=dict(data))
    with tempfile.NamedTemporaryFile(
        "w", dir=scratch_dir(ctx), prefix="output-", suffix=".txt", delete=False, encoding="utf-8"
    ) as handle:
        handle.write(text)
    note = f"\n[output truncated; the full output is saved at {handle.name}]"
    return ToolResult(
        ok, shown + note, truncated=True, full_output_path=handle.name, data=dict(data)
    )
