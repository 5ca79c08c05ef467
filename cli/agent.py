"""`dsv4 agent fix` and `dsv4 agent run`: options → RunConfig → `agent.fix` → exit code.

Human progress goes to stderr; `--json` writes NDJSON events (ending with one `result`
event) to stdout. Nothing here prompts under `--ci` or `--yes`, or without a terminal.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(no_args_is_help=True, help="Run the agent on a repository.")

PathArg = Annotated[
    Path, typer.Argument(help="Repository folder, a git work tree (default: the current one).")
]
TestOpt = Annotated[
    str | None,
    typer.Option(
        "--test",
        help="Shell command that runs the tests, e.g. 'pytest -q' (default: detected from "
        "pyproject, package.json, Cargo.toml, go.mod or a Makefile).",
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Local V4 checkpoint folder, or a Hugging Face id already in the local cache "
        "(never downloaded). Default: DSV4_MODEL.",
    ),
]
EndpointOpt = Annotated[
    str | None,
    typer.Option(
        "--endpoint",
        help="OpenAI-compatible server URL, e.g. http://127.0.0.1:8000/v1 (used instead of "
        "a local model).",
    ),
]
EndpointModelOpt = Annotated[
    str | None,
    typer.Option(
        "--endpoint-model", help="Model name at the endpoint (default: the first it serves)."
    ),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option("--api-key", help="Endpoint key (default: DSV4_API_KEY, then OPENAI_API_KEY)."),
]
ScriptOpt = Annotated[
    Path | None,
    typer.Option("--script", help="Replay recorded completions (JSON Lines) instead of a model."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="NDJSON events on stdout.")]
YesOpt = Annotated[
    bool,
    typer.Option(
        "--yes", "-y", help="Never prompt ('ask' actions not on the allow list are denied)."
    ),
]
CiOpt = Annotated[bool, typer.Option("--ci", help="Never prompt: 'ask' actions are denied.")]
# Ranges are checked with the other settings, so that a bad value still ends with the
# `result` event that --json promises.
StepsOpt = Annotated[int | None, typer.Option("--max-steps", help="Most model turns (default 50).")]
TimeoutOpt = Annotated[
    float | None, typer.Option("--timeout", help="Wall-time limit in seconds (default 1800).")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Sampling seed.")]
NoThinkOpt = Annotated[
    bool, typer.Option("--no-thinking", help="Chat mode instead of thinking mode.")
]
CommitOpt = Annotated[
    bool, typer.Option("--commit", help="Commit the changes when the tests pass at the end.")
]
ResumeOpt = Annotated[
    str | None,
    typer.Option("--resume", help="Continue a logged session: its id (printed at the end) or log."),
]
NoIndexOpt = Annotated[
    bool, typer.Option("--no-index", help="Skip the repository index; show failing files only.")
]


# The options `fix` and `run` share, in the order `--help` lists them: (name, type, default).
_SHARED_OPTIONS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hint)
    for name, hint, default in (
        ("test", TestOpt, None),
        ("model", ModelOpt, None),
        ("endpoint", EndpointOpt, None),
        ("endpoint_model", EndpointModelOpt, None),
        ("api_key", ApiKeyOpt, None),
        ("script", ScriptOpt, None),
        ("json_out", JsonOpt, False),
        ("yes", YesOpt, False),
        ("ci", CiOpt, False),
        ("max_steps", StepsOpt, None),
        ("timeout", TimeoutOpt, None),
        ("seed", SeedOpt, None),
        ("no_thinking", NoThinkOpt, False),
        ("commit", CommitOpt, False),
        ("resume", ResumeOpt, None),
        ("no_index", NoIndexOpt, False),
    )
]


def _with_shared_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command` the shared options; it receives them as `**flags`.

    Typer reads a command's options from its signature, so they are appended to the
    signature here rather than written out in both commands.
    """
    own = inspect.signature(command, eval_str=True).parameters.values()
    kept = [p for p in own if p.kind is not inspect.Parameter.VAR_KEYWORD]
    command.__signature__ = inspect.Signature([*kept, *_SHARED_OPTIONS])  # type: ignore[attr-defined]
    return command


@app.command("fix")
@_with_shared_options
def fix_command(path: PathArg = Path("."), **flags: Any) -> None:
    """Run the tests and, while they fail, let the model fix the code.

    Exit codes: 0 fixed or already green, 1 still failing, 2 usage or configuration error,
    3 a limit was reached, 4 model or engine error, 130 interrupted.
    """
    from dsv4.agent.fix import fix

    cfg, events, renderer = _prepare(path, flags)
    raise typer.Exit(fix(cfg, events, renderer.on_stream) if cfg else 2)


@app.command("run")
@_with_shared_options
def run_command(
    task: Annotated[str, typer.Argument(help="What the agent should do.")] = "",
    path: Annotated[Path, typer.Option("--path", "-C", help="Repository folder.")] = Path("."),
    **flags: Any,
) -> None:
    """Run the agent loop on a free-form task.

    Exit codes: 0 done, 2 usage or configuration error, 3 a limit was reached, 4 model or
    engine error, 130 interrupted.
    """
    from dsv4.agent.fix import run_task

    cfg, events, renderer = _prepare(path, flags)
    raise typer.Exit(run_task(task, cfg, events, renderer.on_stream) if cfg else 2)


def _prepare(path: Path, flags: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Settings → RunConfig, plus the event fan-out (renderer on stderr, NDJSON on stdout).

    A configuration error is reported as a `result` event with exit code 2 and gives
    `(None, events, renderer)`.
    """
    from dsv4.agent.events import Events, ndjson_writer
    from dsv4.cli.render import EventRenderer, stderr_console

    renderer = EventRenderer(stderr_console())
    events = Events([renderer])
    if flags["json_out"]:
        events.listeners.append(ndjson_writer(sys.stdout))
    try:
        cfg = run_config(path, flags)
    except ValueError as exc:
        events.emit(
            "result",
            status="usage_error",
            exit_code=2,
            steps=0,
            tokens={"prompt": 0, "completion": 0, "reused": 0},
            files_changed=[],
            duration_s=0.0,
            message=str(exc),
            session_id=None,
        )
        return None, events, renderer
    renderer.note(_isolation_note())
    return cfg, events, renderer


def _isolation_note() -> str:
    from dsv4.tools.sandbox import detect_isolation

    return "sandbox: " + detect_isolation().note


def run_config(path: Path, flags: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    """The RunConfig for a command line: flags > DSV4_* environment > project > user config."""
    from dsv4.agent.backend import BackendOptions
    from dsv4.agent.fix import RunConfig
    from dsv4.agent.loop import Limits
    from dsv4.agent.settings import load_settings

    root = path.expanduser().resolve()
    env = dict(os.environ) if env is None else env
    s = load_settings(root, _settings_flags(flags), env)
    backend = BackendOptions(
        script=flags.get("script"),
        endpoint=s.endpoint,
        api_key=s.api_key,
        endpoint_model=flags.get("endpoint_model"),
        model=s.model,
        thinking=s.thinking,
        seed=s.seed,
        max_tokens_per_turn=s.max_tokens_per_turn or 8192,
    )
    limits = Limits(
        max_steps=s.max_steps, timeout_s=float(s.timeout_s), max_generated_tokens=s.max_total_tokens
    )
    interactive = not (s.yes or s.ci) and sys.stdin.isatty() and sys.stderr.isatty()
    return RunConfig(
        root=root,
        backend=backend,
        limits=limits,
        policy=_policy(s),
        ask=_confirm if interactive else None,
        test_command=s.test_command,
        commit=s.commit,
        resume=flags.get("resume"),
        use_index=not flags.get("no_index"),
        index_budget=s.budget,
    )


def _settings_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """Only the flags the user gave (None/False means 'not given': lower layers decide)."""
    names = {
        "test": "test_command",
        "model": "model",
        "endpoint": "endpoint",
        "api_key": "api_key",
        "yes": "yes",
        "ci": "ci",
        "max_steps": "max_steps",
        "timeout": "timeout_s",
        "seed": "seed",
        "commit": "commit",
    }
    out = {
        key: flags[flag]
        for flag, key in names.items()
        if flags.get(flag) is not None and flags.get(flag) is not False
    }
    if flags.get("no_thinking"):
        out["thinking"] = False
    return out


def _policy(settings: Any) -> Any:
    """The permission policy: defaults plus the configured rules (deny always wins)."""
    from dsv4.tools.policy import Policy

    policy = Policy(
        ask_answer="prompt",  # --yes/--ci never prompt: ask becomes deny unless allowed
        non_interactive=bool(settings.ci or settings.yes),
    )
    for kind in ("allow", "ask", "deny"):
        for target in ("commands", "paths"):
            extra = getattr(settings, f"{kind}_{target}", None) or []
            getattr(policy, f"{kind}_{target}").extend(extra)
    return policy


def _confirm(question: str) -> bool:
    """Ask the person at the terminal (stderr prompt, default no)."""
    from rich.prompt import Confirm

    from dsv4.cli.render import stderr_console

    return Confirm.ask(f"[yellow]{question}[/yellow]", console=stderr_console(), default=False)
