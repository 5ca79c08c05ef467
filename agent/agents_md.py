"""Project instructions from `AGENTS.md` files, for the system prompt.

Read at the repository root and, when the agent runs from a folder inside it, in that folder
too (its file is more specific, so it comes last). Each file is capped in bytes: a huge
AGENTS.md must not crowd the repository out of the context.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FILENAME = "AGENTS.md"
MAX_BYTES = 32 * 1024


@dataclass(frozen=True)
class AgentsDoc:
    """One AGENTS.md as it goes into the prompt."""

    path: Path
    text: str  # decoded, cut at the byte cap (with a note) when truncated
    truncated: bool
    size: int  # bytes on disk


def read_agents_md(
    root: Path, cwd: Path | None = None, max_bytes: int = MAX_BYTES
) -> list[AgentsDoc]:
    """The AGENTS.md files of `root` and of `cwd` (when inside root and different), root first."""
    root = Path(root).resolve()
    folders = [root]
    if cwd is not None:
        here = Path(cwd).resolve()
        if here != root and here.is_relative_to(root):
            folders.append(here)
    docs = []
    for folder in folders:
        path = folder / FILENAME
        if path.is_file():
            docs.append(_read_capped(path, max_bytes))
    return docs


def _read_capped(path: Path, max_bytes: int) -> AgentsDoc:
    data = path.read_bytes()
    truncated = len(data) > max_bytes
    cut = len(data)
    if truncated:
        cut = max_bytes
        # Back up to a UTF-8 character boundary (continuation bytes are 0b10xxxxxx).
        while cut > 0 and data[cut] & 0xC0 == 0x80:
            cut -= 1
    text = data[:cut].decode("utf-8", errors="replace")
    if truncated:
        text = text.rstrip() + (
            f"\n\n[{path.name} truncated: showing the first {max_bytes} of {len(data)} bytes]\n"
        )
    return AgentsDoc(path=path, text=text, truncated=truncated, size=len(data))


def render_agents_md(docs: list[AgentsDoc], root: Path) -> str:
    """One prompt section: each file under a heading naming its path relative to `root`."""
    root = Path(root).resolve()
    parts = []
    for doc in docs:
        rel = doc.path.relative_to(root).as_posix() if doc.path.is_relative_to(root) else doc.path
        parts.append(f"## Instructions from {rel}\n\n{doc.text.strip()}\n")
    return "\n".join(parts)
