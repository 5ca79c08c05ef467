"""`agent fix` and `agent run`: set up a run, drive the loop, verify, and pick the exit code.

Exit codes (ARCHITECTURE.md): 0 fixed or already green (or a task finished), 1 tests still
failing, 2 usage or configuration error, 3 a limit was reached, 4 model or engine error
(including repeated malformed output), 130 interrupted. When tests exist, a final
verification run decides between success and failure.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsv4.agent.backend import (
    Backend,
    BackendConfigError,
    BackendOptions,
    ModelError,
    StreamCallback,
    build_backend,
)
from dsv4.agent.events import Events
from dsv4.agent.loop import AgentLoop, Limits, LoopResult
from dsv4.agent.prompt import PromptParts, fix_task, initial_messages, repository_context
from dsv4.agent.workspace import CommitError, changed_files, commit_changes, fingerprint

EXIT_OK, EXIT_FAILING, EXIT_USAGE, EXIT_LIMIT, EXIT_MODEL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
_LOOP_EXIT = {"limit": EXIT_LIMIT, "repetition": EXIT_LIMIT, "model_error": EXIT_MODEL}
_LOOP_EXIT["interrupted"] = EXIT_INTERRUPTED


class UsageError(ValueError):
    """A problem with the command line or configuration (exit code 2)."""


@dataclass
class RunConfig:
    """Everything one `agent fix` / `agent run` needs, resolved from flags and settings."""

    root: Path
    backend: BackendOptions
    limits: Limits = field(default_factory=Limits)
    policy: Any = None  # dsv4.tools.policy.Policy; None = the default workspace-write policy
    ask: Callable[[str], bool] | None = None  # interactive confirmation; None = never prompt
    test_command: str | None = None  # None = detect from the repository
    test_timeout_s: float = 900.0
    commit: bool = False
    resume: str | None = None  # session id or log path to continue
    use_index: bool = True
    index_budget: int | None = None  # tokens for the packed repository (None: the default)
    scratch_dir: Path | None = None


@dataclass
class RunOutcome:
    """What the final `result` event reports."""

    status: str
    exit_code: int
    message: str
    steps: int = 0
    tokens: dict[str, int] = field(
        default_factory=lambda: {"prompt": 0, "completion": 0, "reused": 0}
    )
    files_changed: list[str] = field(default_factory=list)
    session_id: str | None = None


def fix(cfg: RunConfig, events: Events, on_stream: StreamCallback | None = None) -> int:
    """Run the tests; while they fail, let the model fix them. Returns the exit code."""
    return _finish(cfg, events, lambda: _fix(cfg, events, on_stream))


def run_task(
    task: str, cfg: RunConfig, events: Events, on_stream: StreamCallback | None = None
) -> int:
    """The same loop for a free-form task. Returns the exit code."""
    return _finish(cfg, events, lambda: _task(task, cfg, events, on_stream))


def _finish(cfg: RunConfig, events: Events, body: Callable[[], RunOutcome]) -> int:
    """Run `body`, map errors to exit codes, and emit the single `result` event."""
    start = time.monotonic()
    try:
        outcome = body()
    except (UsageError, BackendConfigError) as exc:
        outcome = RunOutcome("usage_error", EXIT_USAGE, str(exc))
    except ModelError as exc:
        outcome = RunOutcome("model_error", EXIT_MODEL, str(exc))
    except KeyboardInterrupt:
        outcome = RunOutcome("interrupted", EXIT_INTERRUPTED, "interrupted by the user")
    except Exception as exc:  # the headless contract needs its result event, even on a bug
        # A bug or an engine failure outside generation: one line for the user, the
        # traceback for a bug report on request, and the documented model/engine exit code.
        debug = bool(os.environ.get("DSV4_DEBUG"))
        if debug:
            traceback.print_exc(file=sys.stderr)
        hint = "" if debug else " (set DSV4_DEBUG=1 to see the traceback)"
        message = f"unexpected {type(exc).__name__}: {exc}{hint}"
        outcome = RunOutcome("model_error", EXIT_MODEL, message)
    events.emit(
        "result",
        status=outcome.status,
        exit_code=outcome.exit_code,
        steps=outcome.steps,
        tokens=outcome.tokens,
        files_changed=outcome.files_changed,
        duration_s=round(time.monotonic() - start, 3),
        message=outcome.message,
        session_id=outcome.session_id,
    )
    return outcome.exit_code


# -- agent fix ---------------------------------------------------------------------------


def _fix(cfg: RunConfig, events: Events, on_stream: StreamCallback | None) -> RunOutcome:
    root = _check_root(cfg.root)
    command = _test_command(cfg, root)
    initial = _run_tests(command, root, cfg.test_timeout_s, events, "initial")
    if initial.passed and cfg.resume is None:
        # Already green: nothing to fix, and no model is loaded.
        return RunOutcome("already_green", EXIT_OK, f"tests already pass ({initial.summary})")
    task = fix_task(command, initial.summary, initial.output)
    run = _Run.start(cfg, root, events, task, "fix", command, initial.output)
    result = run.loop(on_stream)
    if result.status == "interrupted":  # the user wants out: no verification run
        return run.outcome(result, "interrupted", EXIT_INTERRUPTED, result.reason)
    final = _run_tests(command, root, cfg.test_timeout_s, events, "final")
    if final.passed:
        return run.outcome(result, "fixed", EXIT_OK, f"tests pass ({final.summary})")
    code = _LOOP_EXIT.get(result.status, EXIT_FAILING)
    status = {EXIT_FAILING: "failing", EXIT_LIMIT: "limit"}.get(code, result.status)
    return run.outcome(result, status, code, f"tests still fail ({final.summary}); {result.reason}")


def _task(
    task: str, cfg: RunConfig, events: Events, on_stream: StreamCallback | None
) -> RunOutcome:
    root = _check_root(cfg.root)
    if not task.strip() and cfg.resume is None:
        raise UsageError("agent run: the TASK argument is empty; say what the agent should do")
    command = cfg.test_command  # optional for a task; run_tests falls back to detection
    run = _Run.start(cfg, root, events, task, "run", command, "")
    result = run.loop(on_stream)
    if result.status == "done":
        return run.outcome(result, "done", EXIT_OK, result.reason)
    code = _LOOP_EXIT[result.status]
    status = "limit" if code == EXIT_LIMIT else result.status
    return run.outcome(result, status, code, result.reason)


def _check_root(root: Path) -> Path:
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise UsageError(f"repository path {root} {what}; give the repository folder")
    return root.resolve()


def _test_command(cfg: RunConfig, root: Path) -> str:
    from dsv4.agent.testcmd import detect_test_command

    command = cfg.test_command or detect_test_command(root)
    if not command:
        raise UsageError(
            f"no test command found in {root} (looked for pytest, npm test, cargo test, "
            "go test and make test); pass one with --test CMD"
        )
    return command


def _run_tests(command: str, root: Path, timeout: float, events: Events, phase: str) -> Any:
    from dsv4.agent.testcmd import run_tests

    run = run_tests(command, root, timeout)
    events.emit(
        "test_run",
        phase=phase,
        command=run.command,
        passed=run.passed,
        exit_code=run.exit_code,
        summary=run.summary,
        duration_s=round(run.duration_s, 3),
    )
    return run


# -- one loop run: backend, tools, session log, snapshots --------------------------------


@dataclass
class _Run:
    cfg: RunConfig
    root: Path
    events: Events
    backend: Backend
    messages: list[dict[str, Any]]
    steps_done: int
    log: Any
    ctx: Any
    tools: list[Any]
    before: dict[str, str]

    @classmethod
    def start(
        cls,
        cfg: RunConfig,
        root: Path,
        events: Events,
        task: str,
        kind: str,
        command: str | None,
        failure_output: str,
    ) -> _Run:
        from dsv4.tools.base import default_tools, tool_schemas

        tools = default_tools()
        ctx = _tool_context(cfg, root, command)
        before = fingerprint(root)
        backend = build_backend(cfg.backend)  # after the cheap checks: may load a model
        if cfg.resume is not None:
            log, messages, steps = open_session(cfg.resume)
        else:
            parts = _prompt_parts(cfg, root, task, failure_output)
            messages = initial_messages(parts, tool_schemas(tools))
            header = {
                "command": kind,
                "root": str(root),
                "task": task,
                "test_command": command,
                "backend": backend.name,
                "thinking": cfg.backend.thinking,
            }
            log, steps = start_session(root, header, messages), 0
        return cls(cfg, root, events, backend, messages, steps, log, ctx, tools, before)

    def loop(self, on_stream: StreamCallback | None) -> LoopResult:
        agent = AgentLoop(
            self.backend, self.tools, self.ctx, self.cfg.limits, self.events, self.log, on_stream
        )
        try:
            return agent.run(self.messages, self.steps_done)
        finally:
            self.backend.close()
            self.log.close()

    def outcome(self, result: LoopResult, status: str, code: int, message: str) -> RunOutcome:
        files = changed_files(self.root, self.before)
        if code == EXIT_OK and self.cfg.commit and files:
            try:
                sha = commit_changes(self.root, files, _commit_message(self.messages, files))
                message += f"; committed {sha[:12]}"
            except CommitError as exc:  # the fix stays in the work tree either way
                message += f"; not committed: {exc}"
        return RunOutcome(
            status,
            code,
            message,
            result.steps,
            result.tokens.as_dict(),
            files,
            getattr(self.log, "id", None),
        )


def start_session(root: Path, header: dict[str, Any], messages: list[dict[str, Any]]) -> Any:
    """A new session log holding the header and the first request's messages."""
    from dsv4.agent.session_log import SessionLog, SessionLogError

    try:
        log = SessionLog.create(root, header)
    except SessionLogError as exc:
        raise UsageError(str(exc)) from exc
    for message in messages:
        log.append("message", message=message)
    return log


def open_session(session: str) -> tuple[Any, list[dict[str, Any]], int]:
    """Reopen a logged run: the log, its messages (the next request), and its step count."""
    from dsv4.agent.session_log import SessionLog, SessionLogError

    try:
        log = SessionLog.open(session)
    except (SessionLogError, OSError) as exc:
        raise UsageError(f"--resume {session}: {exc}") from exc
    records = log.records()
    messages = log.messages()
    if not messages:
        raise UsageError(f"--resume {session}: the session log holds no messages")
    steps = sum(1 for r in records if r.get("kind") == "turn")
    if messages[-1].get("role") == "assistant":
        # The run had ended with the model's answer: ask it to go on from there.
        messages.append({"role": "user", "content": "Continue with the task."})
        log.append("message", message=messages[-1])
    return log, messages, steps


def _tool_context(cfg: RunConfig, root: Path, command: str | None) -> Any:
    from dsv4.agent.snapshot import SnapshotError, Snapshots
    from dsv4.tools.base import ToolContext, ToolError
    from dsv4.tools.policy import Policy

    try:
        snapshots = Snapshots(root)
    except SnapshotError as exc:
        raise UsageError(str(exc)) from exc

    def snapshot(label: str) -> None:
        # No change without an undo point: the failure becomes the tool's result.
        try:
            snapshots.take(label)
        except SnapshotError as exc:
            raise ToolError(
                f"the workspace could not be snapshotted for undo ({exc}); nothing was changed"
            ) from exc

    return ToolContext(
        root=root,
        policy=cfg.policy if cfg.policy is not None else Policy(),
        ask=cfg.ask,
        scratch_dir=cfg.scratch_dir,
        test_command=command,
        before_mutation=snapshot,
    )


def _prompt_parts(cfg: RunConfig, root: Path, task: str, failure_output: str) -> PromptParts:
    from dsv4.agent.agents_md import read_agents_md, render_agents_md

    repository = repository_context(root, task, failure_output, cfg.use_index, cfg.index_budget)
    notes = render_agents_md(read_agents_md(root, Path.cwd()), root)
    return PromptParts(task=task, repository=repository, notes=notes)


def _commit_message(messages: list[dict[str, Any]], files: list[str]) -> str:
    """A one-line subject from the task plus the model's final summary as the body."""
    task = next((m["content"] for m in messages if m.get("role") == "user"), "")
    subject = "dsv4: fix failing tests" if "<test_output>" in task else "dsv4: " + _last_line(task)
    summary = next(
        (m.get("content", "") for m in reversed(messages) if m.get("role") == "assistant"), ""
    )
    body = summary.strip() or "Changed: " + ", ".join(files)
    return f"{subject[:72]}\n\n{body}\n"


def _last_line(text: str) -> str:
    # The first user message ends with the task (after the repository context).
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "agent run"
