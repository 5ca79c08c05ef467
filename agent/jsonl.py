"""Reading JSON Lines files (scripts, session logs): errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_jsonl(
    path: Path, what: str, error: type[Exception], *, torn_tail_ok: bool = False
) -> list[tuple[int, Any]]:
    """(1-based line number, decoded value) for each non-blank line of `path`.

    Failures raise `error` (the caller's exception type), with `what` naming the kind of
    file ("script", "session log"). With `torn_tail_ok`, an undecodable last line that has
    no newline after it (a write cut short by a crash) is dropped instead.
    """
    try:
        # Split on "\n" only: str.splitlines would also break lines at U+2028 and friends,
        # which JSON allows unescaped inside strings.
        lines = path.read_text(encoding="utf-8").split("\n")
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 (byte {exc.start})") from exc
    values = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            values.append((lineno, json.loads(line)))
        except json.JSONDecodeError as exc:
            if torn_tail_ok and lineno == len(lines):
                break
            detail = f"{exc.msg} at column {exc.colno}"
            raise error(
                f"{path}:{lineno}: not a JSON record: the line is not JSON ({detail})"
            ) from exc
    return values
