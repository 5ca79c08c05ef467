"""Rich rendering of agent events for people (on stderr, so stdout stays machine-readable)."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.syntax import Syntax
from rich.text import Text

_PREVIEW_LINES = 6
_STATUS_STYLE = {0: "bold green", 1: "bold red", 2: "bold yellow", 3: "bold yellow"}


def stderr_console(**kwargs: Any) -> Console:
    return Console(stderr=True, highlight=False, **kwargs)


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
