"""File I/O shared by the tools that change files: strict UTF-8 loading, writing, deleting."""

from __future__ import annotations

from pathlib import Path

from dsv4.tools.base import ToolError


def load_bytes(path: Path) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    if path.is_dir():
        raise ToolError(f"{path.name} is a directory, not a file")
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
