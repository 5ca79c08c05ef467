"""Running commands for tools: exit codes, timeouts, and the SIGTERM grace period."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from dsv4.tools.process import run_command

# Prints when SIGTERM arrives, so the output shows whether it got the chance.
_TRAPS_TERM = "trap 'echo got-term; exit 143' TERM; echo started; sleep 30 & wait"


def test_exit_code_and_interleaved_output(tmp_path: Path) -> None:
    outcome = run_command(["sh", "-c", "echo out; echo err >&2; exit 4"], tmp_path, timeout=30)
    assert (outcome.exit_code, outcome.timed_out) == (4, False)
    assert "out" in outcome.output and "err" in outcome.output


def test_timeout_without_grace_kills_at_once(tmp_path: Path) -> None:
    outcome = run_command(["sh", "-c", _TRAPS_TERM], tmp_path, timeout=1)
    assert outcome.timed_out and outcome.exit_code is None
    assert "started" in outcome.output and "got-term" not in outcome.output


def test_timeout_with_grace_lets_the_command_report(tmp_path: Path) -> None:
    outcome = run_command(["sh", "-c", _TRAPS_TERM], tmp_path, timeout=1, grace_s=5)
    assert outcome.timed_out and outcome.exit_code is None
    assert "got-term" in outcome.output
    assert outcome.seconds < 5, "the grace period ends as soon as the command exits"


def test_interrupt_kills_the_command_group(tmp_path: Path) -> None:
    """Ctrl-C while a command runs takes the command's whole process group down with it."""
    pid_file = tmp_path / "pid"
    script = f"sleep 60 & echo $! > {pid_file}; wait"
    timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        run_command(["/bin/sh", "-c", script], tmp_path, timeout=30)
    timer.cancel()
    stat = Path(f"/proc/{int(pid_file.read_text())}/stat")
    time.sleep(0.2)
    # Gone, or a zombie waiting for init to reap it: either way no longer running.
    assert not stat.exists() or stat.read_text().split(") ")[1].startswith("Z")
