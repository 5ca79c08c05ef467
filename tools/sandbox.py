"""Network isolation for commands the model runs: detect what the machine offers, wrap argv.

Preference: `unshare -rn` (a user namespace with an empty network namespace; no setuid
helper needed), then bubblewrap with `--unshare-net`. Without either the command runs
unisolated and the result says isolation is partial.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

Level = Literal["network-isolated", "partial"]


@dataclass(frozen=True)
class Isolation:
    """How commands are isolated on this machine."""

    level: Level
    prefix: tuple[str, ...]
    """argv prefix that runs a command without network (empty when `partial`)."""
    note: str
    """One line for the model and the user about what is and is not isolated."""


_CANDIDATES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("unshare", ("unshare", "--user", "--map-root-user", "--net")),
    ("bwrap", ("bwrap", "--dev-bind", "/", "/", "--unshare-net", "--die-with-parent")),
)


@lru_cache(maxsize=1)
def detect_isolation() -> Isolation:
    """Probe once per process which wrapper actually works here (containers often forbid both)."""
    for program, prefix in _CANDIDATES:
        if shutil.which(program) and _works(prefix):
            note = f"commands run without network access ({program})"
            return Isolation("network-isolated", prefix, note)
    note = (
        "isolation is partial: no usable unshare or bubblewrap, so commands can reach the network"
    )
    return Isolation("partial", (), note)


def wrap(argv: list[str], isolation: Isolation) -> list[str]:
    """`argv` prefixed so it runs with the given isolation."""
    return [*isolation.prefix, *argv]


def _works(prefix: tuple[str, ...]) -> bool:
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0
