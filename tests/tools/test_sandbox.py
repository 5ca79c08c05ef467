"""Isolation detection and command wrapping."""

from __future__ import annotations

import subprocess

from dsv4.tools.sandbox import Isolation, detect_isolation, wrap


def test_wrap_prefixes_the_command():
    iso = Isolation("network-isolated", ("unshare", "--net"), "note")
    assert wrap(["bash", "-c", "ls"], iso) == ["unshare", "--net", "bash", "-c", "ls"]
    assert wrap(["ls"], Isolation("partial", (), "n")) == ["ls"]


def test_detected_wrapper_runs_commands():
    iso = detect_isolation()
    proc = subprocess.run(wrap(["bash", "-c", "echo ok"], iso), capture_output=True, text=True)
    assert proc.stdout == "ok\n"
    assert (iso.level == "partial") == (iso.prefix == ())
