"""The append-only JSON Lines log of one agent session.

The first record is the header (`kind: "header"`: session id, repository root, start time,
and whatever the caller puts in it: model, settings, test command). Every later record is
`{"seq", "time", "kind", ...fields}`. Each line is flushed and fsynced as it is written, so
a crash loses at most the line being written; `records()` skips such a torn last line.

The log is the source of truth for `--resume`: the next model request must be a pure
function of the records. By convention the loop appends `kind="message"` records holding
the chat message exactly as sent to (or received from) the model, and `messages()` rebuilds
the conversation from them; other kinds (tool calls, test runs, limits) are for people.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from dsv4.agent.jsonl import read_jsonl

SUFFIX = ".jsonl"


class SessionLogError(RuntimeError):
    """A session log could not be found, written or read; the message names the file."""


def sessions_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where logs live: $DSV4_STATE_DIR/sessions, $XDG_STATE_HOME/dsv4/sessions, or
    ~/.local/state/dsv4/sessions."""
    if env.get("DSV4_STATE_DIR"):
        return Path(env["DSV4_STATE_DIR"]).expanduser() / "sessions"
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]).expanduser() / "dsv4" / "sessions"
    return Path.home() / ".local" / "state" / "dsv4" / "sessions"


def new_session_id(now: float | None = None) -> str:
    """Sortable by start time, unique across processes: `20250131-142501-3fa9c2`."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now if now is not None else time.time()))
    return f"{stamp}-{secrets.token_hex(3)}"


class SessionLog:
    """One session's log file; use `create` or `open`, not the constructor."""

    def __init__(self, path: Path, session_id: str, next_seq: int) -> None:
        self.path = path
        self.id = session_id
        self._next_seq = next_seq
        self._file: IO[str] | None = None

    @classmethod
    def create(
        cls, root: Path, header: dict[str, Any], env: Mapping[str, str] = os.environ
    ) -> SessionLog:
        """Start a new log for a session in repository `root`; writes the header record."""
        folder = sessions_dir(env)
        try:
            # Logs hold source code and model output: readable by the owner only.
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise SessionLogError(f"cannot create the session folder {folder}: {exc}") from exc
        session_id = new_session_id()
        log = cls(folder / f"{session_id}{SUFFIX}", session_id, next_seq=0)
        log._write(
            {**header, "kind": "header", "id": session_id, "root": str(Path(root).resolve())}
        )
        return log

    @classmethod
    def open(cls, id_or_path: str | Path, env: Mapping[str, str] = os.environ) -> SessionLog:
        """An existing log, by file path, session id, or unique id prefix; appends continue it."""
        path = _resolve(str(id_or_path), sessions_dir(env))
        _drop_torn_tail(path)
        records = _read_records(path)
        if not records or records[0].get("kind") != "header":
            raise SessionLogError(f"{path}: not a dsv4 session log (no header record)")
        return cls(path, str(records[0].get("id", path.stem)), next_seq=len(records))

    @property
    def header(self) -> dict[str, Any]:
        return self.records()[0]

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Write one record (flushed and fsynced before returning) and return it."""
        if kind == "header":
            raise SessionLogError(f"{self.path}: the header is written once, by create()")
        return self._write({"kind": kind, **fields})

    def records(self) -> list[dict[str, Any]]:
        """Every complete record, header first."""
        return _read_records(self.path)

    def messages(self) -> list[dict[str, Any]]:
        """The chat messages logged with `append("message", message=...)`, in order."""
        return [dict(r["message"]) for r in self.records() if r.get("kind") == "message"]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> SessionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, record: dict[str, Any]) -> dict[str, Any]:
        record = {"seq": self._next_seq, "time": round(time.time(), 3), **record}
        try:
            line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
            if self._file is None:
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
        except (OSError, ValueError) as exc:
            raise SessionLogError(f"cannot append to {self.path}: {exc}") from exc
        self._next_seq += 1
        return record


def list_sessions(env: Mapping[str, str] = os.environ) -> list[Path]:
    """All log files, oldest first (ids sort by start time)."""
    folder = sessions_dir(env)
    return sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []


def _resolve(text: str, folder: Path) -> Path:
    path = Path(text).expanduser()
    if path.is_file():
        return path
    exact = folder / f"{text}{SUFFIX}"
    if exact.is_file():
        return exact
    matches = sorted(folder.glob(f"{text}*{SUFFIX}")) if folder.is_dir() and text else []
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = ", ".join(m.stem for m in matches[:5])
        raise SessionLogError(f"session {text!r} is ambiguous in {folder}: {names}")
    raise SessionLogError(f"no session log {text!r}: not a file, and not an id in {folder}")


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that has no newline (a crash mid-write), so appends start clean."""
    try:
        with path.open("rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
    except OSError as exc:
        raise SessionLogError(f"cannot open session log {path}: {exc}") from exc


def _read_records(path: Path) -> list[dict[str, Any]]:
    records = []
    for lineno, record in read_jsonl(path, "session log", SessionLogError, torn_tail_ok=True):
        if not isinstance(record, dict) or "kind" not in record:
            raise SessionLogError(f"{path}:{lineno}: expected an object with a 'kind'")
        records.append(record)
    return records
