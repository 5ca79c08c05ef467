"""Finding and running a repository's test command.

`detect_test_command` looks at the files a project keeps at its root; `run_tests` runs a
command as the tools run theirs (`tools/process.py`: its own process group, so a timeout
kills test servers and workers it spawned too, and the same quiet environment) and reduces
the output to what an agent and a terminal need: a truncated transcript and a one-line
summary. `summarize` and `truncate` are pure, for the tests.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from dsv4.tools.process import run_command

# Output kept for the model: the start (collection errors, the first failure) and the end
# (the failure summary), which is where test runners put what matters.
HEAD_CHARS = 8_000
TAIL_CHARS = 12_000
# Seconds between SIGTERM and SIGKILL on a timeout: lets runners print partial results.
KILL_GRACE_S = 2.0

_PYTHON_MARKERS = (
    "pyproject.toml",
    "setup.cfg",
    "setup.py",
    "pytest.ini",
    "tox.ini",
    "conftest.py",
)
_MAKEFILES = ("GNUmakefile", "makefile", "Makefile")
# `npm init` writes this placeholder; it fails by design, so it is not a test suite.
_NPM_PLACEHOLDER = "no test specified"


@dataclass(frozen=True)
class TestRun:
    """The outcome of one run of the test command."""

    __test__ = False  # not a pytest test class, despite the name

    command: str
    passed: bool  # exit status 0 and no timeout
    exit_code: int | None  # None when the run was killed on timeout
    output: str  # stdout and stderr interleaved, truncated head + tail
    duration_s: float
    summary: str  # one line, e.g. "3 passed, 1 failed"
    timed_out: bool = False


def detect_test_command(root: Path) -> str | None:
    """The command that runs `root`'s tests, or None when no known layout is found."""
    root = Path(root)
    if any((root / name).is_file() for name in _PYTHON_MARKERS):
        return _pytest_command(root)
    npm = _npm_test(root / "package.json")
    if npm:
        return npm
    if (root / "Cargo.toml").is_file():
        return "cargo test"
    if (root / "go.mod").is_file():
        return "go test ./..."
    if any(_has_make_target(root / name, "test") for name in _MAKEFILES):
        return "make test"
    if _has_python_tests(root / "tests") or _has_python_tests(root / "test"):
        return _pytest_command(root)
    return None


def _pytest_command(root: Path) -> str:
    # The project's own virtualenv has its dependencies; the agent's interpreter may not.
    for venv in (".venv", "venv"):
        if (root / venv / "bin" / "python").is_file():
            return f"{venv}/bin/python -m pytest"
    return "python -m pytest" if shutil.which("python") else "python3 -m pytest"


def _npm_test(package_json: Path) -> str | None:
    try:
        scripts = json.loads(package_json.read_text(encoding="utf-8")).get("scripts") or {}
    except (OSError, ValueError, AttributeError):
        return None
    test = scripts.get("test") if isinstance(scripts, dict) else None
    if isinstance(test, str) and test.strip() and _NPM_PLACEHOLDER not in test:
        return "npm test"
    return None


def _has_make_target(makefile: Path, target: str) -> bool:
    try:
        text = makefile.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    # `test:` or `check test:` at the start of a line, but not the assignment `test := …`.
    pattern = rf"^(?:[^\s:#=]+\s+)*{re.escape(target)}(?:\s+[^\s:#=]+)*\s*::?(?!=)"
    return re.search(pattern, text, re.MULTILINE) is not None


def _has_python_tests(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    return any(folder.rglob("test_*.py")) or any(folder.rglob("*_test.py"))


def run_tests(command: str, root: Path, timeout: float) -> TestRun:
    """Run `command` through the shell in `root`; kill its whole process group on timeout."""
    outcome = run_command(["/bin/sh", "-c", command], root, timeout, grace_s=KILL_GRACE_S)
    summary = summarize(outcome.output, outcome.exit_code)
    if outcome.timed_out:
        summary = f"timed out after {timeout:g}s" + (f" ({summary})" if summary else "")
    return TestRun(
        command=command,
        passed=outcome.exit_code == 0,
        exit_code=outcome.exit_code,
        output=truncate(outcome.output),
        duration_s=outcome.seconds,
        summary=summary,
        timed_out=outcome.timed_out,
    )


def truncate(text: str, head: int = HEAD_CHARS, tail: int = TAIL_CHARS) -> str:
    """`text` if short enough, else its first `head` and last `tail` characters and a note."""
    if len(text) <= head + tail:
        return text
    dropped = text[head : len(text) - tail]
    note = f"\n[... {len(dropped)} characters, {dropped.count(chr(10))} lines omitted ...]\n"
    return text[:head] + note + text[len(text) - tail :]


# Counts the common runners print: pytest ("3 passed, 1 failed in 0.1s"), cargo
# ("test result: FAILED. 3 passed; 1 failed"), node --test / TAP ("# pass 3", "# fail 1")
# and harnesses that imitate pytest.
_COUNT = re.compile(r"\b(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)\b")
_TAP = re.compile(r"^# (pass|fail|cancelled|skipped|todo) (\d+)\s*$", re.MULTILINE)
_GO = re.compile(r"^(ok|FAIL)\s+\S+", re.MULTILINE)
_TAP_NAMES = {
    "pass": "passed",
    "fail": "failed",
    "cancelled": "cancelled",
    "skipped": "skipped",
    "todo": "todo",
}


def summarize(output: str, exit_code: int | None) -> str:
    """One line: the runner's counts when it prints them, else the exit status."""
    counts = _tap_counts(output) or _word_counts(output) or _go_counts(output)
    if counts:
        return ", ".join(f"{n} {word}" for word, n in counts.items())
    if exit_code is None:
        return ""
    return "passed (exit 0)" if exit_code == 0 else f"failed (exit {exit_code})"


def _tap_counts(output: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for word, n in _TAP.findall(output):
        counts[_TAP_NAMES[word]] = counts.get(_TAP_NAMES[word], 0) + int(n)
    return {k: v for k, v in counts.items() if v or k in ("passed", "failed")}


def _word_counts(output: str) -> dict[str, int]:
    # pytest prints its counts on its last line; cargo prints one line per test binary, so
    # every "test result:" line is added up.
    lines = [ln for ln in output.splitlines() if ln.startswith("test result:")]
    if not lines:
        last = [ln for ln in output.splitlines() if _COUNT.search(ln)]
        lines = last[-1:]
    counts: dict[str, int] = {}
    for line in lines:
        for n, word in _COUNT.findall(line):
            counts[word] = counts.get(word, 0) + int(n)
    return counts


def _go_counts(output: str) -> dict[str, int]:
    results = _GO.findall(output)
    if not results:
        return {}
    ok, failed = results.count("ok"), results.count("FAIL")
    counts = {_plural(ok, "package") + " ok": ok, _plural(failed, "package") + " failed": failed}
    return {k: v for k, v in counts.items() if v}


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"
