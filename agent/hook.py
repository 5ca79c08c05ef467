"""Git pre-commit integration: install/uninstall the hook, and check (and fix) the staged state.

`run_hook` checks exactly what is about to be committed. Unstaged changes to tracked files are
set aside first (saved as a binary patch under `.git/dsv4/hook/` before anything is touched)
and always put back, also after a failing check, an agent error or Ctrl-C; if they cannot be
re-applied cleanly the patch file stays and its path is reported, so work is never lost.
Untracked files stay where they are (they are not part of the commit, and tests often need
them, e.g. a virtual environment).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dsv4.agent.git import git
from dsv4.agent.testcmd import TestRun, detect_test_command, run_tests
from dsv4.agent.workspace import changed_files, fingerprint

HOOK_MARKER = "# dsv4-managed pre-commit hook"
CHAINED_NAME = "pre-commit.dsv4-chained"
ACTIVE_ENV = "DSV4_HOOK_ACTIVE"  # set for everything the hook runs: no recursion

Restage = Literal["ask", "always", "never"]


class HookError(RuntimeError):
    """The hook cannot be installed, removed or run; the message says why."""


@dataclass
class HookConfig:
    """`[tool.dsv4.hook]` in pyproject.toml, or `[hook]` in `.dsv4.toml`."""

    checks: list[str] = field(default_factory=list)
    """Shell commands that must pass; empty: the detected test command."""
    budget_s: float = 300.0
    """Time budget of the whole hook run (checks and fixing), in seconds."""
    fix: bool = True
    """Let the agent fix failing checks (only when a model, endpoint or script is configured)."""
    restage: Restage = "ask"
    """Re-stage the agent's fixes: ask (deny when no terminal), always, or never."""

    def __post_init__(self) -> None:
        if self.budget_s <= 0:
            raise HookError(f"hook budget_s must be positive, got {self.budget_s}")
        if self.restage not in ("ask", "always", "never"):
            raise HookError(f"hook restage must be ask, always or never, got {self.restage!r}")


def load_hook_config(root: Path) -> HookConfig:
    """The project's hook settings (`.dsv4.toml` `[hook]`, else `[tool.dsv4.hook]`)."""
    for path, keys in (
        (root / ".dsv4.toml", ("hook",)),
        (root / "pyproject.toml", ("tool", "dsv4", "hook")),
    ):
        if not path.is_file():
            continue
        try:
            table: Any = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise HookError(f"{path}: not valid TOML ({exc})") from exc
        for key in keys:
            table = table.get(key, {}) if isinstance(table, dict) else {}
        if table:
            return _config_from_table(table, path)
    return HookConfig()


def _config_from_table(table: dict[str, Any], path: Path) -> HookConfig:
    known = set(HookConfig.__dataclass_fields__)
    unknown = sorted(set(table) - known)
    if unknown:
        raise HookError(f"{path}: unknown hook setting(s) {unknown}; known: {sorted(known)}")
    try:
        return HookConfig(**table)
    except (TypeError, HookError) as exc:
        raise HookError(f"{path}: {exc}") from exc


# -- git plumbing --------------------------------------------------------------------------


def _git(root: Path, *args: str, **kw: Any) -> subprocess.CompletedProcess:
    # The hook's environment is kept: inside `git commit` it names the index being committed.
    return git(root, *args, error=HookError, **kw)


def repo_root(path: Path) -> Path:
    out = _git(path, "rev-parse", "--show-toplevel")
    return Path(out.stdout.strip())


def _git_path(root: Path, name: str) -> Path:
    """A path inside the git dir (honours core.hooksPath and worktrees)."""
    out = _git(root, "rev-parse", "--git-path", name).stdout.strip()
    return (root / out).resolve()


# -- install / uninstall -------------------------------------------------------------------


def hook_script(command: list[str]) -> str:
    """The shell hook: chained hook first, then `dsv4 hook run`; silent under recursion."""
    cmd = " ".join(shlex.quote(c) for c in command)
    return f"""#!/bin/sh
{HOOK_MARKER} (remove with `dsv4 hook uninstall`)
[ -n "${ACTIVE_ENV}" ] && exit 0
here=$(dirname "$0")
if [ -x "$here/{CHAINED_NAME}" ]; then
  "$here/{CHAINED_NAME}" "$@" || exit $?
fi
exec {cmd} hook run
"""


def default_command() -> list[str]:
    """How the hook calls dsv4: this interpreter, so it works from any virtualenv."""
    return [sys.executable, "-c", "from dsv4.cli.app import main; main()"]


def install(root: Path, command: list[str] | None = None) -> str:
    """Write the pre-commit hook; an existing foreign hook is kept and chained. Returns a note."""
    hooks = _git_path(root, "hooks")
    hooks.mkdir(parents=True, exist_ok=True)
    hook, chained = hooks / "pre-commit", hooks / CHAINED_NAME
    note = f"installed {hook}"
    if hook.exists() and HOOK_MARKER not in hook.read_text(errors="replace"):
        if chained.exists():
            raise HookError(f"{hook} and {chained} both exist; move one away and retry")
        hook.rename(chained)
        note += f" (the existing hook now runs first, from {chained.name})"
    hook.write_text(hook_script(command or default_command()))
    hook.chmod(0o755)
    return note


def uninstall(root: Path) -> str:
    """Remove only the hook dsv4 wrote, and put a chained hook back in its place."""
    hooks = _git_path(root, "hooks")
    hook, chained = hooks / "pre-commit", hooks / CHAINED_NAME
    if not hook.exists():
        return "no pre-commit hook installed"
    if HOOK_MARKER not in hook.read_text(errors="replace"):
        raise HookError(f"{hook} was not written by dsv4; left untouched")
    hook.unlink()
    if chained.exists():
        chained.rename(hook)
        return f"removed the dsv4 hook; restored the previous hook at {hook}"
    return f"removed {hook}"


# -- setting unstaged work aside -----------------------------------------------------------


@contextmanager
def staged_only(root: Path, report: Callable[[str], None]) -> Iterator[None]:
    """Make the tracked files of the work tree equal the index for the duration.

    The unstaged diff is written to a patch file before any file is touched, and re-applied
    on exit whatever happened; the patch file is removed only after a clean re-apply.
    """
    diff_args = ("diff", "--binary", "--no-color", "--no-ext-diff", "--full-index")
    diff = _git(root, *diff_args, text=False).stdout
    if not diff:
        yield
        return
    folder = _git_path(root, "dsv4/hook")
    folder.mkdir(parents=True, exist_ok=True)
    patch = folder / f"unstaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.patch"
    patch.write_bytes(diff)
    try:
        _git(root, "checkout-index", "--all", "--force")
        yield
    finally:
        _restore(root, patch, report)


def _restore(root: Path, patch: Path, report: Callable[[str], None]) -> None:
    # Put the tracked files back to the index state first: the patch applies onto it.
    _git(root, "checkout-index", "--all", "--force", check=False)
    for extra in ([], ["--3way"]):
        proc = _git(
            root, "apply", "--binary", "--whitespace=nowarn", *extra, str(patch), check=False
        )
        if proc.returncode == 0:
            patch.unlink()
            return
    report(
        f"could not re-apply your unstaged changes cleanly; they are saved in {patch} "
        f"(apply with `git apply --3way {patch}`)"
    )


# -- the hook run --------------------------------------------------------------------------

Fixer = Callable[[Path, float, str], int]  # (root, timeout_s, test command) -> exit code
Confirm = Callable[[str], bool]


@dataclass
class HookOutcome:
    """Why the commit may go ahead (exit 0) or is blocked (exit 1)."""

    exit_code: int
    message: str
    restaged: list[str] = field(default_factory=list)


def _checks(cfg: HookConfig, root: Path) -> list[str]:
    if cfg.checks:
        return list(cfg.checks)
    detected = detect_test_command(root)
    if detected is None:
        raise HookError(
            f"no checks configured and no test command detected in {root}; set "
            "`checks = [...]` under [tool.dsv4.hook] in pyproject.toml"
        )
    return [detected]


def _run_checks(commands: list[str], root: Path, deadline: float) -> TestRun | None:
    """The first failing check (None when all pass); a check out of time fails."""
    for command in commands:
        left = deadline - time.monotonic()
        if left <= 0:
            return TestRun(
                command=command,
                passed=False,
                exit_code=None,
                output="",
                duration_s=0.0,
                summary="not run: time budget exhausted",
                timed_out=True,
            )
        result = run_tests(command, root, timeout=left)
        if not result.passed:
            return result
    return None


def run_hook(
    root: Path,
    cfg: HookConfig,
    *,
    fixer: Fixer | None,
    confirm: Confirm | None,
    report: Callable[[str], None],
) -> HookOutcome:
    """Check the staged snapshot; let the agent fix it when enabled; decide the commit."""
    if os.environ.get(ACTIVE_ENV):
        return HookOutcome(0, "dsv4 hook: skipped inside a dsv4 run")
    deadline = time.monotonic() + cfg.budget_s
    commands = _checks(cfg, root)
    os.environ[ACTIVE_ENV] = "1"  # children (checks, the agent, its commits) never re-enter
    try:
        with _sigterm_as_interrupt(), staged_only(root, report):
            return _check_and_fix(root, cfg, commands, deadline, fixer, confirm, report)
    finally:
        os.environ.pop(ACTIVE_ENV, None)


def _check_and_fix(root, cfg, commands, deadline, fixer, confirm, report) -> HookOutcome:
    failed = _run_checks(commands, root, deadline)
    if failed is None:
        return HookOutcome(0, "dsv4 hook: all checks passed")
    report(f"check failed: {failed.command}: {failed.summary}")
    if failed.timed_out:
        return HookOutcome(1, f"dsv4 hook: commit blocked: time budget ({cfg.budget_s:g}s) spent")
    if not (cfg.fix and fixer):
        return HookOutcome(1, f"dsv4 hook: commit blocked: `{failed.command}` failed")
    before = fingerprint(root)
    code = fixer(root, max(1.0, deadline - time.monotonic()), failed.command)
    changed = changed_files(root, before)
    if code != 0 or not changed:
        _discard(root, changed)
        return HookOutcome(1, f"dsv4 hook: commit blocked: the agent did not fix it (exit {code})")
    diff = _git(root, "diff", "--no-color", "--", *changed, check=False).stdout
    if not _should_restage(cfg, confirm, diff, changed):
        _discard(root, changed)
        return HookOutcome(1, "dsv4 hook: commit blocked: fixes not staged")
    _git(root, "add", "-A", "--", *changed)
    if _run_checks(commands, root, deadline) is not None:
        return HookOutcome(1, "dsv4 hook: commit blocked: checks still fail", changed)
    return HookOutcome(0, f"dsv4 hook: fixed and re-staged {len(changed)} file(s)", changed)


def _should_restage(cfg: HookConfig, confirm: Confirm | None, diff: str, files: list[str]) -> bool:
    if cfg.restage != "ask":
        return cfg.restage == "always"
    if confirm is None:  # non-interactive: never stage code nobody looked at
        return False
    return confirm(diff or "\n".join(files))


def _discard(root: Path, files: list[str]) -> None:
    """Undo the agent's changes to `files` (back to the staged version; new files removed)."""
    tracked = set(_git(root, "ls-files", "--", *files).stdout.split("\n")) if files else set()
    for rel in files:
        if rel in tracked:
            _git(root, "checkout-index", "--force", "--", rel)
        else:
            (root / rel).unlink(missing_ok=True)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a killed terminal, a CI timeout) unwinds like Ctrl-C, so work is restored."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
