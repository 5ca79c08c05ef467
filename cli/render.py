"""Rich rendering for people, on stderr so stdout stays machine-readable: agent events,
command errors and progress bars."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.syntax import Syntax
from rich.text import Text

_PREVIEW_LINES = 6
_STATUS_STYLE = {0: "bold green", 1: "bold red", 2: "bold yellow", 3: "bold yellow"}


def stderr_console(**kwargs: Any) -> Console:
    return Console(stderr=True, highlight=False, **kwargs)


def error_exit(command: str, message: str, code: int = 2) -> typer.Exit:
    """Print `dsv4 COMMAND: message` on stderr and return the exit to raise.

    Commands raise what this returns (`raise error_exit(...) from None`), so a bad input
    ends with one line naming the thing at fault, never a traceback.
    """
    typer.echo(f"dsv4 {command}: {message}", err=True)
    return typer.Exit(code)


def describe_error(exc: BaseException) -> str:
    """One line for a user: an OSError as 'PATH: reason' (no '[Errno N]'), undecodable
    bytes as such, anything else as its message."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}); is it corrupt?"
    return str(exc) or type(exc).__name__


@contextmanager
def progress_bar(description: str, quiet: bool = False) -> Iterator[Callable[[int, int], None]]:
    """A transient byte-count progress bar on stderr, driven by a `(done, total)` callback."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TimeRemainingColumn())  # fmt: skip
    console = stderr_console()
    # Only on a terminal: redirected stderr would get a stray line per bar.
    hidden = quiet or not console.is_terminal
    with Progress(*columns, console=console, transient=True, disable=hidden) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


class EventRenderer:
    """A listener for `Events` plus a streaming callback, printing to one console.

    With `stream=True` the model's text is printed as it arrives (`on_stream`), and the
    `turn` event only adds what streaming did not show.
    """

    def __init__(self, console: Console, stream: bool = False, verbose: bool = False) -> None:
        self.console, self.stream, self.verbose = console, stream, verbose
        self._kind: str | None = None  # the kind of streamed text being printed

    def note(self, text: str) -> None:
        """A dimmed line of context (sandbox level, session id, ...)."""
        self.console.print(Text(text, style="dim"))

    # -- streaming ---------------------------------------------------------------------

    def on_stream(self, kind: str, value: Any) -> None:
        if not self.stream or kind == "tool_call":
            return
        if kind != self._kind:
            self._end_stream_line()
            self._kind = kind
        self.console.print(Text(str(value), style="dim" if kind == "reasoning" else ""), end="")

    def _end_stream_line(self) -> None:
        if self._kind is not None:
            self.console.print()
            self._kind = None

    # -- events ------------------------------------------------------------------------

    def __call__(self, event: dict[str, Any]) -> None:
        handler = getattr(self, "_on_" + event["type"], None)
        if handler is not None:
            handler(event)

    def _on_turn(self, e: dict[str, Any]) -> None:
        self._end_stream_line()
        head = f"── step {e['step']} · {e['completion_tokens']} tokens"
        if e["reused_tokens"]:
            head += f" · {e['reused_tokens']} reused"
        self.console.print(Text(head, style="bold blue"))
        if not self.stream:
            if e["reasoning"]:
                self.console.print(
                    Text(_clip(e["reasoning"], 3 if not self.verbose else 40), "dim")
                )
            if e["content"]:
                self.console.print(Text(e["content"].strip()))
        for error in e["errors"]:
            self.console.print(Text(f"malformed output: {error}", style="yellow"))

    def _on_tool_call(self, e: dict[str, Any]) -> None:
        self.console.print(Text(f"→ {e['name']}({_args(e['arguments'])})", style="cyan"))

    def _on_tool_result(self, e: dict[str, Any]) -> None:
        mark, style = ("✓", "green") if e["ok"] else ("✗", "red")
        lines = _clip(e["text"], _PREVIEW_LINES if not self.verbose else 200)
        self.console.print(Text(f"  {mark} ", style=style) + Text(lines, style="dim"))

    def _on_edit(self, e: dict[str, Any]) -> None:
        files = ", ".join(e["files"]) or "(workspace)"
        self.console.print(Text(f"  edited {files}", style="magenta"))

    def _on_test_run(self, e: dict[str, Any]) -> None:
        verdict, style = ("pass", "green") if e["passed"] else ("fail", "red")
        text = f"tests ({e['phase']}) {verdict}: {e['summary']} [{e['command']}]"
        self.console.print(Text(text, style=style))

    def _on_result(self, e: dict[str, Any]) -> None:
        self._end_stream_line()
        style = _STATUS_STYLE.get(e["exit_code"], "bold red")
        if e["status"] == "usage_error":  # nothing ran: the message alone says what to do
            self.console.print(Text(f"error (exit 2): {e['message']}", style=style))
            return
        tokens = e["tokens"]
        line = (
            f"{e['status']} (exit {e['exit_code']}): {e['message']} · {e['steps']} steps · "
            f"{tokens['prompt']} prompt / {tokens['completion']} generated tokens · "
            f"{e['duration_s']:.1f} s"
        )
        self.console.print(Text(line, style=style))
        if e["files_changed"]:
            self.console.print(Text("files changed: " + ", ".join(e["files_changed"])))
        if e.get("session_id"):
            self.note(f"session {e['session_id']} (continue with --resume {e['session_id']})")


def render_diff(console: Console, diff: str) -> None:
    """A unified diff, syntax highlighted (or a note when there is none)."""
    if not diff.strip():
        console.print(Text("no changes", style="dim"))
        return
    console.print(Syntax(diff, "diff", theme="ansi_dark", word_wrap=True))


def _clip(text: str, max_lines: int) -> str:
    lines = text.strip().splitlines()
    if len(lines) <= max_lines:
        return "\n    ".join(lines)
    return "\n    ".join(lines[:max_lines] + [f"[… {len(lines) - max_lines} more lines]"])


def _args(arguments: dict[str, Any]) -> str:
    parts = []
    for key, value in arguments.items():
        shown = json.dumps(value, ensure_ascii=False)
        parts.append(f"{key}={shown[:60] + '…' if len(shown) > 60 else shown}")
    return ", ".join(parts)
