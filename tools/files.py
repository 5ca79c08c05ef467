"""File I/O shared by the tools that change files: strict UTF-8 loading, writing, deleting.

`open_for_change` and `save_change` wrap the I/O in the checks every such tool needs: the
policy, the stale-file guard, the undo snapshot and the remembered file state.
"""

from __future__ import annotations

from pathlib import Path

from dsv4.tools.base import (
    ToolContext,
    ToolError,
    check_not_stale,
    guard_path,
    mark_mutation,
    record_state,
)


def load_bytes(path: Path, rel: str) -> bytes | None:
    """The bytes of file `path` (`rel` in messages), or None when it does not exist."""
    if path.is_dir():
        raise ToolError(f"{rel} is a directory, not a file")
    return path.read_bytes() if path.exists() else None


def decode_text(data: bytes | None, rel: str) -> str | None:
    """`data` as text; refuses binary and non-UTF-8 files rather than corrupt them on write."""
    if data is None:
        return None
    if b"\0" in data[:8192]:
        raise ToolError(f"{rel} is a binary file; it cannot be edited as text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ToolError(
            f"{rel} is not valid UTF-8 (byte {exc.start}); it cannot be edited"
        ) from exc


def store(path: Path, data: bytes | None) -> None:
    """Write `data` to `path` (creating parent folders), or delete the file when None."""
    if data is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def open_for_change(ctx: ToolContext, file_path: str) -> tuple[Path, str, bytes | None]:
    """(absolute path, repo-relative path, current bytes or None) of a file about to change.

    Raises `ToolDenied` when the policy refuses the write, `ToolError` when the file changed
    on disk since the model last saw it.
    """
    path, rel = guard_path(ctx, file_path, write=True)
    current = load_bytes(path, rel)
    check_not_stale(ctx, rel, current)
    return path, rel, current


def save_change(ctx: ToolContext, path: Path, rel: str, data: bytes, label: str) -> None:
    """Snapshot for undo (described by `label`), write `data`, and remember what was written."""
    mark_mutation(ctx, label)
    store(path, data)
    record_state(ctx, rel, data)
