"""`dsv4 chat`: an interactive session with the agent in a prompt-toolkit REPL.

Enter sends; Alt+Enter (or Esc then Enter) starts a new line. Slash commands: /undo [N]
(revert the agent's last reply, or N steps), /diff, /tokens, /model, /clear, /help, /exit.
The model's reasoning streams dimmed, edits show as highlighted diffs, and actions the
policy marks `ask` are confirmed at the prompt.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

HELP = (
    "/undo [N]  revert the last reply (or N agent steps)   /diff    changes since HEAD\n"
    "/tokens    token counts                                /model   the model in use\n"
    "/clear     start a new conversation                    /exit    leave (also Ctrl-D)\n"
    "Enter sends; Alt+Enter (or Esc, Enter) adds a line."
)


@dataclass
class ChatState:
    """The conversation and what `/undo` and `/tokens` need to know about it."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    snapshots_before_reply: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reused_tokens: int = 0


def chat(
    path: Annotated[
        Path, typer.Argument(help="Repository folder, a git work tree (default: the current one).")
    ] = Path("."),
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="Local V4 checkpoint folder or cached HF id (default: DSV4_MODEL)."
        ),
    ] = None,
    endpoint: Annotated[
        str | None,
        typer.Option("--endpoint", help="OpenAI-compatible server URL, e.g. http://host:8000/v1."),
    ] = None,
    endpoint_model: Annotated[
        str | None,
        typer.Option(
            "--endpoint-model", help="Model name at the endpoint (default: the first it serves)."
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", help="Endpoint key (default: DSV4_API_KEY, then OPENAI_API_KEY)."
        ),
    ] = None,
    script: Annotated[
        Path | None,
        typer.Option(
            "--script", help="Replay recorded completions (JSON Lines) instead of a model."
        ),
    ] = None,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", "-y", help="Never prompt ('ask' actions not on the allow list are denied)."
        ),
    ] = False,
    max_steps: Annotated[
        int, typer.Option("--max-steps", min=1, help="Most model turns per reply.")
    ] = 30,
    no_thinking: Annotated[
        bool, typer.Option("--no-thinking", help="Chat mode instead of thinking mode.")
    ] = False,
    no_index: Annotated[
        bool, typer.Option("--no-index", help="Skip the repository index; the model reads files.")
    ] = False,
) -> None:
    """Talk to the agent about the repository; it reads, edits and runs tests as you ask.

    Exit codes: 0 on /exit or Ctrl-D, 2 usage or setup error (path, model, script),
    130 interrupted while starting.
    """
    from dsv4.agent.backend import BackendConfigError, BackendOptions, ModelError, build_backend
    from dsv4.agent.snapshot import SnapshotError
    from dsv4.cli.render import error_exit

    root = path.expanduser().resolve()
    if not root.is_dir():
        raise error_exit("chat", f"repository path {path} is not a directory")
    opts = BackendOptions(
        script=script,
        endpoint=endpoint,
        api_key=api_key,
        endpoint_model=endpoint_model,
        model=model or os.environ.get("DSV4_MODEL"),
        thinking=not no_thinking,
    )
    try:
        repl = _Repl(Console(highlight=False), root, yes, max_steps, not no_index)
        repl.backend = build_backend(opts)
    except SnapshotError as exc:  # not a git work tree: /undo would have nothing to work with
        raise error_exit("chat", str(exc)) from None
    except (BackendConfigError, ValueError) as exc:
        raise error_exit("chat", str(exc)) from None
    except ModelError as exc:
        raise error_exit("chat", str(exc), 4) from None
    except KeyboardInterrupt:
        raise error_exit("chat", "interrupted while starting", 130) from None
    raise typer.Exit(repl.run())


class _Repl:
    def __init__(
        self, console: Console, root: Path, yes: bool, max_steps: int, use_index: bool
    ) -> None:
        from dsv4.agent.snapshot import Snapshots
        from dsv4.tools.base import ToolContext, default_tools
        from dsv4.tools.policy import Policy

        self.console, self.root = console, root
        self.backend: Any = None  # set once built (after the cheap checks)
        self.max_steps, self.use_index = max_steps, use_index
        self.snapshots = Snapshots(root)
        self.tools = default_tools()
        policy = Policy(ask_answer="prompt", non_interactive=yes)
        self.ctx = ToolContext(
            root=root,
            policy=policy,
            ask=self._confirm,
            before_mutation=lambda label: self.snapshots.take(label),
        )
        self.state = ChatState()
        self.log: Any = None  # the session log of the current conversation

    def run(self) -> int:
        session = _prompt_session()
        self.console.print(Text(f"dsv4 chat · {self.backend.name} · {self.root}", style="bold"))
        self.console.print(Text(HELP, style="dim"))
        from dsv4.tools.sandbox import detect_isolation

        self.console.print(Text("sandbox: " + detect_isolation().note, style="dim"))
        while True:
            try:
                line = session.prompt("› ")
            except EOFError:
                return 0
            except KeyboardInterrupt:
                continue
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                if self._command(text) == "exit":
                    return 0
                continue
            self._reply(text)

    # -- a user message -> one agent loop ------------------------------------------------

    def _reply(self, text: str) -> None:
        from dsv4.agent.events import Events
        from dsv4.agent.loop import AgentLoop, Limits
        from dsv4.cli.render import EventRenderer

        renderer = EventRenderer(self.console, stream=True)
        events = Events([renderer, self._on_event])
        self._append_user(text)
        self.state.snapshots_before_reply = len(self.snapshots.history())
        loop = AgentLoop(
            self.backend,
            self.tools,
            self.ctx,
            Limits(max_steps=self.max_steps),
            events,
            self.log,
            renderer.on_stream,
        )
        result = loop.run(self.state.messages)
        renderer._end_stream_line()
        if result.status != "done":
            self.console.print(Text(f"stopped: {result.reason}", style="yellow"))

    def _append_user(self, text: str) -> None:
        if self.state.messages:
            self.state.messages.append({"role": "user", "content": text})
            self.log.append("message", message=self.state.messages[-1])
            return
        from dsv4.agent.prompt import PromptParts, initial_messages, repository_context
        from dsv4.agent.session_log import SessionLog
        from dsv4.tools.base import tool_schemas

        repo = repository_context(self.root, text, "", self.use_index)
        parts = PromptParts(task=text, repository=repo)
        self.state.messages = initial_messages(parts, tool_schemas(self.tools))
        # One log per conversation; /clear starts the next one.
        header = {"command": "chat", "root": str(self.root), "backend": self.backend.name}
        self.log = SessionLog.create(self.root, header)
        for message in self.state.messages:
            self.log.append("message", message=message)

    def _on_event(self, event: dict[str, Any]) -> None:
        if event["type"] == "turn":
            self.state.prompt_tokens += event["prompt_tokens"]
            self.state.completion_tokens += event["completion_tokens"]
            self.state.reused_tokens += event["reused_tokens"]
        elif event["type"] == "edit" and event["files"]:
            from dsv4.cli.render import render_diff

            render_diff(self.console, _git_diff(self.root, event["files"]))

    # -- slash commands --------------------------------------------------------------------

    def _command(self, text: str) -> str | None:
        name, _, arg = text.partition(" ")
        handler = {
            "/undo": self._undo,
            "/diff": self._diff,
            "/tokens": self._tokens,
            "/model": self._model,
            "/clear": self._clear,
            "/help": self._help,
        }.get(name)
        if name in ("/exit", "/quit"):
            return "exit"
        if handler is None:
            self.console.print(Text(f"unknown command {name}; /help lists them", style="yellow"))
        else:
            handler(arg.strip())
        return None

    def _undo(self, arg: str) -> None:
        from dsv4.agent.snapshot import SnapshotError

        taken = len(self.snapshots.history()) - self.state.snapshots_before_reply
        steps = int(arg) if arg.isdigit() else max(taken, 1)
        try:
            snap = self.snapshots.undo(steps)
        except SnapshotError as exc:
            self.console.print(Text(f"undo: {exc}", style="yellow"))
            return
        self.state.snapshots_before_reply = len(self.snapshots.history())
        self.ctx.file_state.clear()  # files changed under the model: it must re-read them
        self.console.print(
            Text(f"undone: restored the workspace from before '{snap.label}'", style="green")
        )

    def _diff(self, arg: str) -> None:
        from dsv4.cli.render import render_diff

        render_diff(self.console, _git_diff(self.root, [arg] if arg else []))

    def _tokens(self, arg: str) -> None:
        s = self.state
        self.console.print(
            f"prompt {s.prompt_tokens} · generated {s.completion_tokens} · reused {s.reused_tokens}"
        )

    def _model(self, arg: str) -> None:
        self.console.print(self.backend.name)

    def _clear(self, arg: str) -> None:
        self.state = ChatState()
        self.console.print(Text("conversation cleared", style="dim"))

    def _help(self, arg: str) -> None:
        self.console.print(Text(HELP, style="dim"))

    def _confirm(self, question: str) -> bool:
        from prompt_toolkit.shortcuts import confirm

        return confirm(question)


def _git_diff(root: Path, paths: list[str]) -> str:
    """`git diff HEAD` (or against the empty tree before the first commit) for `paths`."""
    from dsv4.agent.git import git

    head = git(root, "rev-parse", "--verify", "-q", "HEAD", check=False)
    base = ["HEAD"] if head.returncode == 0 else []
    return git(root, "diff", "--no-color", *base, "--", *paths, check=False).stdout


def _prompt_session() -> Any:
    """A prompt-toolkit session with persistent history and Alt+Enter for new lines."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, InMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings

    bindings = KeyBindings()

    @bindings.add("escape", "enter")
    def _newline(event: Any) -> None:
        event.current_buffer.insert_text("\n")

    history_file = _history_path()
    history = FileHistory(str(history_file)) if history_file else InMemoryHistory()
    return PromptSession(history=history, key_bindings=bindings, multiline=False)


def _history_path() -> Path | None:
    state, xdg = os.environ.get("DSV4_STATE_DIR"), os.environ.get("XDG_STATE_HOME")
    folder = Path(state) if state else Path(xdg or Path.home() / ".local" / "state") / "dsv4"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder / "chat_history"
