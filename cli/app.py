"""The `dsv4` Typer application: command groups and the console-script entry point.

Commands live one per module (`cli/<group>.py`) and register themselves here. Heavy imports
(torch, the engine) happen inside commands so that `dsv4 --help` stays instant.
"""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

app = typer.Typer(
    name="dsv4",
    help="A local-first coding agent on an embedded DeepSeek-V4 inference engine.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dsv4")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"dsv4 {_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """A local-first coding agent on an embedded DeepSeek-V4 inference engine."""


# (name, module, attribute, one-line help). A module's attribute is either a Typer sub-app
# (a command group) or a command function. Modules are light: they import torch and the
# engine inside their commands, so `dsv4 --help` never loads them.
_COMMANDS: list[tuple[str, str, str, str]] = [
    (
        "agent",
        "dsv4.cli.agent",
        "app",
        "Run the agent: a test-driven fix loop or a free-form task.",
    ),
    ("chat", "dsv4.cli.chat", "chat", "Interactive session with the agent."),
    ("undo", "dsv4.cli.undo", "undo", "Restore the workspace to before the last agent step."),
    (
        "index",
        "dsv4.cli.index",
        "index",
        "Build and show the repository context packed for the model.",
    ),
    ("hook", "dsv4.cli.hook", "app", "Git pre-commit integration."),
    ("model", "dsv4.cli.model", "app", "Inspect or verify a checkpoint; write a tiny random one."),
    ("generate", "dsv4.cli.generate", "generate", "Raw engine generation (streams tokens)."),
    (
        "bench",
        "dsv4.cli.bench",
        "bench",
        "Engine benchmark: prefill/decode tokens/s, memory, KV bytes.",
    ),
    ("serve", "dsv4.cli.serve", "serve", "OpenAI-compatible HTTP server over the local engine."),
    (
        "doctor",
        "dsv4.cli.doctor",
        "doctor",
        "Report the environment: torch, devices, tokenizer, git, models.",
    ),
]


def _register(name: str, module_name: str, attr: str, help_text: str) -> None:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:  # not built yet: the command is simply not offered
            return
        raise
    target = getattr(module, attr)
    if isinstance(target, typer.Typer):
        app.add_typer(target, name=name, help=help_text)
    else:
        app.command(name, help=help_text)(target)


for _entry in _COMMANDS:
    _register(*_entry)


def main() -> None:
    """Console-script entry point. An error no command mapped to an exit code (a bug) prints
    one line and exits 1; `DSV4_DEBUG=1` shows the traceback instead."""
    import os
    import sys

    try:
        app()  # usage errors and documented exits are handled inside (SystemExit)
    except Exception as exc:
        if os.environ.get("DSV4_DEBUG"):
            raise
        name = type(exc).__name__
        print(f"dsv4: unexpected {name}: {exc} (DSV4_DEBUG=1 shows the traceback)", file=sys.stderr)
        sys.exit(1)
