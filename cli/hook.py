"""`dsv4 hook install / uninstall / run`: git pre-commit integration."""

from __future__ import annotations

import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="Git pre-commit integration.")

_PATH = typer.Argument(help="A folder inside the git repository (default: the current one).")


class Restage(str, Enum):  # noqa: UP042 (the project still runs on 3.10)
    ask = "ask"
    always = "always"
    never = "never"


def _root(path: Path) -> Path:
    from dsv4.agent.hook import HookError, repo_root
    from dsv4.cli.render import error_exit

    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise error_exit("hook", f"{path} is not inside a git repository: it {what}")
    try:
        return repo_root(path)
    except (HookError, OSError) as exc:
        raise error_exit("hook", f"{path} is not inside a git repository ({exc})") from None


@app.command()
def install(path: Annotated[Path, _PATH] = Path(".")) -> None:
    """Write the pre-commit hook (an existing hook is kept and runs first)."""
    from dsv4.agent.hook import install as do_install

    _echo_or_exit("install", do_install, path)


@app.command()
def uninstall(path: Annotated[Path, _PATH] = Path(".")) -> None:
    """Remove the hook dsv4 wrote (and only that), restoring a chained hook."""
    from dsv4.agent.hook import uninstall as do_uninstall

    _echo_or_exit("uninstall", do_uninstall, path)


def _echo_or_exit(name: str, action: Callable[[Path], str], path: Path) -> None:
    """Run `action` on the repository of `path` and print its note; a `HookError` exits 2."""
    from dsv4.agent.hook import HookError

    try:
        typer.echo(action(_root(path)))
    except HookError as exc:
        typer.echo(f"dsv4 hook {name}: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def run(
    path: Annotated[Path, _PATH] = Path("."),
    check: Annotated[
        list[str] | None,
        typer.Option("--check", help="A check command (repeatable); default: the test command."),
    ] = None,
    budget: Annotated[
        float | None,
        typer.Option("--budget", min=1, help="Time budget in seconds (default 300)."),
    ] = None,
    fix: Annotated[
        bool | None,
        typer.Option("--fix/--no-fix", help="Let the agent fix failures (needs a model)."),
    ] = None,
    restage: Annotated[
        Restage | None,
        typer.Option(
            "--restage",
            help="Re-stage the agent's fixes: ask (on a terminal), always or never.",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Checkpoint folder or HF id.")
    ] = None,
    endpoint: Annotated[
        str | None, typer.Option("--endpoint", help="OpenAI-compatible server URL.")
    ] = None,
    script: Annotated[
        Path | None, typer.Option("--script", help="Recorded model session (replay).")
    ] = None,
) -> None:
    """Check the staged state; optionally fix it with the agent; block the commit on failure.

    Unstaged changes are set aside while the checks run and always restored.
    """
    import dataclasses

    from dsv4.agent.hook import HookError, load_hook_config, run_hook

    root = _root(path)
    try:
        cfg = load_hook_config(root)
        choice = restage.value if restage is not None else None
        overrides = {"checks": check, "budget_s": budget, "fix": fix, "restage": choice}
        cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v})
        if fix is False:
            cfg = dataclasses.replace(cfg, fix=False)
        fixer = _fixer(root, model, endpoint, script)
        outcome = run_hook(
            root, cfg, fixer=fixer, confirm=_confirm(), report=lambda m: typer.echo(m, err=True)
        )
    except HookError as exc:
        typer.echo(f"dsv4 hook: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("dsv4 hook: interrupted; your unstaged changes were restored", err=True)
        raise typer.Exit(130) from None
    typer.echo(outcome.message, err=True)
    raise typer.Exit(outcome.exit_code)


def _confirm():
    """A y/N prompt on the terminal, or None when there is none (then fixes are not staged)."""
    if not sys.stdin.isatty():
        return None

    def ask(diff: str) -> bool:
        from rich.console import Console
        from rich.syntax import Syntax

        Console(stderr=True).print(Syntax(diff, "diff", theme="ansi_dark"))
        return typer.confirm("Stage these fixes and commit?", default=False, err=True)

    return ask


def _fixer(root: Path, model: str | None, endpoint: str | None, script: Path | None):
    """The agent as the hook's fixer, or None when no model, endpoint or script is configured."""
    from dsv4.agent.settings import load_settings

    given = {k: v for k, v in (("model", model), ("endpoint", endpoint)) if v}
    settings = load_settings(root, given)
    if not (script or settings.model or settings.endpoint):
        return None

    def fix(repo: Path, timeout_s: float, test_command: str) -> int:
        from dsv4.agent.events import Events
        from dsv4.agent.fix import fix as agent_fix
        from dsv4.cli.agent import run_config
        from dsv4.cli.render import EventRenderer, stderr_console

        flags = {"model": model, "endpoint": endpoint, "script": script, "ci": True,
                 "test": test_command, "timeout": timeout_s}  # fmt: skip
        renderer = EventRenderer(stderr_console())
        return agent_fix(run_config(repo, flags), Events([renderer]), renderer.on_stream)

    return fix
