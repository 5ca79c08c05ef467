"""Unified-diff parsing and application, pure: patch text and file contents in, contents out.

Lenient where models are sloppy and strict where it matters: hunk line counts in `@@`
headers are not trusted (the body is), a blank line inside a hunk is read as blank context,
and a hunk may sit up to `FUZZ_LINES` away from the line its header names, but its context
and removed lines must match the file exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

FUZZ_LINES = 100
"""How far (in lines) a hunk may have drifted from the position its header names."""

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_NO_EOL = "\\ No newline at end of file"


class PatchError(Exception):
    """The patch is malformed or does not apply; the message names the file and hunk."""


@dataclass
class Hunk:
    old_start: int
    """1-based line the header names in the old file (0 for an empty old file)."""
    lines: list[str] = field(default_factory=list)
    """Body lines, each starting with ' ', '-' or '+'."""
    old_no_eol: bool = False
    new_no_eol: bool = False

    @property
    def old_lines(self) -> list[str]:
        return [line[1:] for line in self.lines if line[0] in " -"]

    @property
    def new_lines(self) -> list[str]:
        return [line[1:] for line in self.lines if line[0] in " +"]


@dataclass
class FilePatch:
    old_path: str | None
    """None for a file the patch creates."""
    new_path: str | None
    """None for a file the patch deletes."""
    hunks: list[Hunk] = field(default_factory=list)

    @property
    def path(self) -> str:
        """The path the patch is about (the old one for a deletion)."""
        path = self.new_path or self.old_path
        assert path is not None  # the parser rejects /dev/null on both sides
        return path


def parse_patch(text: str) -> list[FilePatch]:
    """All file patches in a unified diff (``` fences and `diff --git` headers are skipped)."""
    lines = text.replace("\r\n", "\n").split("\n")
    patches: list[FilePatch] = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            patch = FilePatch(_header_path(lines[i]), _header_path(lines[i + 1]))
            if patch.old_path is None and patch.new_path is None:
                raise PatchError(f"line {i + 1}: both sides of the file header are /dev/null")
            i = _parse_hunks(lines, i + 2, patch)
            patches.append(patch)
        else:
            i += 1
    if not patches:
        raise PatchError("no file headers found: expected `--- a/path` and `+++ b/path` lines")
    return _strip_ab_prefixes(patches)


def _parse_hunks(lines: list[str], i: int, patch: FilePatch) -> int:
    """Read the hunks after a file header; returns the index of the first line after them."""
    while i < len(lines):
        match = _HUNK.match(lines[i])
        if not match:
            if _is_file_header(lines, i) or lines[i].startswith("diff "):
                break
            i += 1
            continue
        hunk = Hunk(old_start=int(match.group(1)))
        i = _parse_body(lines, i + 1, hunk)
        if i < len(lines) and not _ends_hunk(lines, i):
            raise PatchError(
                f"line {i + 1}: {lines[i]!r} is not a hunk line; every line of a hunk starts "
                "with ' ' (context), '-' (removed) or '+' (added)"
            )
        if not any(line[0] in "-+" for line in hunk.lines):
            raise PatchError(
                f"{patch.new_path or patch.old_path}: hunk at line {hunk.old_start} changes nothing"
            )
        patch.hunks.append(hunk)
    return i


def _parse_body(lines: list[str], i: int, hunk: Hunk) -> int:
    while i < len(lines):
        line = lines[i]
        if _ends_hunk(lines, i):
            break
        if line.startswith("\\"):
            if hunk.lines and hunk.lines[-1][0] == "+":
                hunk.new_no_eol = True
            elif hunk.lines:
                hunk.old_no_eol = True
                hunk.new_no_eol = hunk.new_no_eol or hunk.lines[-1][0] == " "
        elif line == "":
            hunk.lines.append(" ")  # editors and models drop the space of blank context
        elif line[0] in " -+":
            hunk.lines.append(line)
        else:
            break
        i += 1
    while hunk.lines and hunk.lines[-1] == " ":
        hunk.lines.pop()  # blank lines after the last hunk are padding, not context
    return i


def _ends_hunk(lines: list[str], i: int) -> bool:
    line = lines[i]
    return bool(_HUNK.match(line)) or _is_file_header(lines, i) or line.startswith(("diff ", "```"))


def _is_file_header(lines: list[str], i: int) -> bool:
    return lines[i].startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ ")


def _header_path(line: str) -> str | None:
    path = line[4:].split("\t")[0].strip()
    if path.startswith('"') and path.endswith('"'):
        path = path[1:-1]
    return None if path == "/dev/null" else path


def _strip_ab_prefixes(patches: list[FilePatch]) -> list[FilePatch]:
    """Drop git's `a/` and `b/` prefixes, but only when every header has them."""
    olds = [p.old_path for p in patches if p.old_path]
    news = [p.new_path for p in patches if p.new_path]
    if all(p.startswith("a/") for p in olds) and all(p.startswith("b/") for p in news):
        for p in patches:
            p.old_path = p.old_path[2:] if p.old_path else None
            p.new_path = p.new_path[2:] if p.new_path else None
    return patches


def apply_file_patch(original: str | None, patch: FilePatch) -> str | None:
    """The new content of one file (None: deleted). `original` None: the file is missing."""
    if patch.old_path is None and original is not None:
        raise PatchError(f"{patch.path}: the patch creates this file but it already exists")
    if patch.old_path is not None and original is None:
        raise PatchError(f"{patch.path}: file not found")
    if patch.new_path is None and not patch.hunks:
        return None  # a bare deletion header (git omits the body for some deletions)
    text = original or ""
    crlf = "\r\n" in text and text.count("\r\n") == text.count("\n")
    lines = text.replace("\r\n", "\n").split("\n")
    had_eol = text.endswith("\n") or text == ""
    if had_eol:
        lines.pop()
    eol = had_eol
    offset = 0
    for number, hunk in enumerate(patch.hunks, 1):
        at = _locate(lines, hunk, offset, f"{patch.path}: hunk {number}")
        offset = at - (hunk.old_start - 1)
        lines[at : at + len(hunk.old_lines)] = hunk.new_lines
        eol = _final_eol(eol, hunk, at + len(hunk.new_lines) == len(lines))
    if patch.new_path is None:
        if lines:
            raise PatchError(f"{patch.path}: the patch deletes this file but leaves lines in it")
        return None
    out = "\n".join(lines) + ("\n" if eol and lines else "")
    return out.replace("\n", "\r\n") if crlf else out


def _final_eol(eol: bool, hunk: Hunk, at_end: bool) -> bool:
    """Whether the file ends with a newline after `hunk` (only the last hunk can say)."""
    if not at_end:
        return eol
    if hunk.new_no_eol:
        return False
    return True if hunk.old_no_eol else eol


def _locate(lines: list[str], hunk: Hunk, offset: int, where: str) -> int:
    """0-based index where the hunk's old lines sit, nearest to where the header says."""
    old = hunk.old_lines
    expected = max(0, hunk.old_start - 1 + offset) if old else max(0, hunk.old_start + offset)
    if not old:
        if expected > len(lines):
            raise PatchError(
                f"{where}: inserts at line {expected} but the file has {len(lines)} lines"
            )
        return expected
    for distance in range(FUZZ_LINES + 1):
        for at in (expected - distance, expected + distance):
            if 0 <= at <= len(lines) - len(old) and lines[at : at + len(old)] == old:
                return at
    first = old[0] if old else ""
    raise PatchError(
        f"{where} (header line {hunk.old_start}) does not apply: its context and removed lines "
        f"were not found near line {expected + 1} (first expected line: {first!r}). "
        "Read the file and make the context match it exactly."
    )
