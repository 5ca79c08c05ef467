"""Running a shell command for a tool: own process group, whole-group kill, captured output."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# Commands run for the model must never wait on a pager, a prompt or a terminal.
_QUIET_ENV = {
    "PAGER": "cat",
    "GIT_PAGER": "cat",
    "GIT_TERMINAL_PROMPT": "0",
    "TERM": "dumb",
    "NO_COLOR": "1",
    "PYTHONUNBUFFERED": "1",
}
_MAX_READ = 8 * 1024 * 1024
"""Bytes of output kept from each end of a runaway command's output."""


@dataclass(frozen=True)
class CommandOutcome:
    exit_code: int | None
    """None when the command was killed at its timeout."""
    output: str
    """stdout and stderr interleaved, decoded as UTF-8 (undecodable bytes replaced)."""
    timed_out: bool
    seconds: float


def run_command(argv: list[str], cwd: Path, timeout: float, grace_s: float = 0.0) -> CommandOutcome:
    """Run `argv` in `cwd` in a new session; on timeout kill its whole process group.

    With `grace_s`, a timed-out group gets SIGTERM and that long to exit (test runners print
    their partial results) before the SIGKILL. Output goes to a temporary file rather than
    a pipe, so a background grandchild that keeps the descriptor open cannot make us wait
    past the timeout.
    """
    env = {**os.environ, **_QUIET_ENV}
    start = time.monotonic()
    with tempfile.TemporaryFile() as sink:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group, so the kill reaches grandchildren
        )
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _terminate(proc, grace_s)
        except BaseException:  # Ctrl-C or SIGTERM: the command's whole group goes too
            kill_group(proc.pid)
            proc.wait()
            raise
        # Also after a normal exit: background jobs the command left behind end with it.
        kill_group(proc.pid)
        proc.wait()
        output = _read_bounded(sink)
    seconds = time.monotonic() - start
    return CommandOutcome(None if timed_out else proc.returncode, output, timed_out, seconds)


def kill_group(pgid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Send `sig` to every process in group `pgid` (the group of a `start_new_session` child)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pgid, sig)


def _terminate(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    if grace_s <= 0:
        return
    kill_group(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)


def _read_bounded(sink: IO[bytes]) -> str:
    size = sink.seek(0, os.SEEK_END)
    sink.seek(0)
    if size <= 2 * _MAX_READ:
        return sink.read().decode("utf-8", errors="replace")
    head = sink.read(_MAX_READ)
    sink.seek(size - _MAX_READ)
    tail = sink.read()
    skipped = size - 2 * _MAX_READ
    return (head + f"\n[... {skipped} bytes skipped ...]\n".encode() + tail).decode(
        "utf-8", errors="replace"
    )
