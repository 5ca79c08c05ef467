"""The tool contract: results, the per-run context, the `Tool` protocol and the dispatcher.

A tool never raises for a model mistake: bad arguments, denials and failed edits all come
back as a `ToolResult` the model reads. Tools signal such outcomes by raising `ToolError`
(or `ToolDenied`); `run_tool` turns them into results.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dsv4.tools.policy import Decision, Policy, repo_relative

_LABEL_CHARS = 100


@dataclass
class ToolResult:
    """What the model sees after a tool call. Failures and denials are results too."""

    ok: bool
    text: str
    """The observation text for the model."""
    truncated: bool = False
    full_output_path: str | None = None
    """Where the untruncated output was saved, when `truncated`."""
    data: dict[str, Any] = field(default_factory=dict)
    """Structured extras: `changed_files`, `exit_code`, `denied`, ..."""


@dataclass
class ToolContext:
    """Everything a tool needs about the run it is part of; passed to every call."""

    root: Path
    """Repository root (resolved in `__post_init__`)."""
    policy: Policy = field(default_factory=Policy)
    ask: Callable[[str], bool] | None = None
    """Interactive confirmation (question -> approved?); None when nobody can answer."""
    file_state: dict[str, str] = field(default_factory=dict)
    """Stale-file guard: repo-relative path -> sha256 of its bytes at our last read/write."""
    scratch_dir: Path | None = None
    """Where full outputs of truncated results are saved (outside the repository)."""
    test_command: str | None = None
    """Default command for `run_tests`."""
    before_mutation: Callable[[str], None] | None = None
    """Called right before a tool changes the workspace (undo snapshots), with a one-line
    description of the change: `edit calc.py`, `bash: make test`."""

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()


class Tool(Protocol):
    """A model-visible tool: a JSON-schema'd function the model may call."""

    name: str
    description: str
    parameters: dict[str, Any]
    """JSON schema (type object) of the arguments."""
    mutating: bool
    """Whether a call may change the workspace."""

    def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult: ...


class ToolError(Exception):
    """A failure the model should read (file not found, no match, bad regex, ...)."""

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.data = data


class ToolDenied(ToolError):
    """The permission policy (or the user) refused the call."""


def default_tools() -> list[Tool]:
    """The tools given to the model, in the order they are listed to it."""
    # Imported here: each tool module imports this one.
    from dsv4.tools.apply_patch import ApplyPatchTool
    from dsv4.tools.bash import BashTool
    from dsv4.tools.edit import EditTool
    from dsv4.tools.git_diff import GitDiffTool
    from dsv4.tools.glob import GlobTool
    from dsv4.tools.grep import GrepTool
    from dsv4.tools.read import ReadTool
    from dsv4.tools.run_tests import RunTestsTool
    from dsv4.tools.write import WriteTool

    return [
        ReadTool(),
        WriteTool(),
        EditTool(),
        ApplyPatchTool(),
        GlobTool(),
        GrepTool(),
        BashTool(),
        RunTestsTool(),
        GitDiffTool(),
    ]


def param(json_type: str, description: str) -> dict[str, str]:
    """One property of a tool's argument schema."""
    return {"type": json_type, "description": description}


FILE_PATH = param("string", "Path relative to the repository root.")


def object_schema(required: list[str], **properties: dict[str, str]) -> dict[str, Any]:
    """A tool's argument schema: a JSON object with `properties`, listed in this order."""
    return {
        "type": "object",
        "properties": {name: dict(prop) for name, prop in properties.items()},
        "required": list(required),
    }


def tool_schemas(tools: list[Tool]) -> list[dict[str, Any]]:
    """OpenAI function schema objects `{"name", "description", "parameters"}`."""
    return [
        {"name": t.name, "description": t.description, "parameters": t.parameters} for t in tools
    ]


def run_tool(tools: list[Tool], name: str, args: Any, ctx: ToolContext) -> ToolResult:
    """Validate `args`, run tool `name` under the policy; model mistakes become results."""
    tool = next((t for t in tools if t.name == name), None)
    if tool is None:
        known = ", ".join(t.name for t in tools)
        return ToolResult(False, f"Unknown tool `{name}`. Available tools: {known}.")
    problem = validate_args(tool.parameters, args)
    if problem is not None:
        return ToolResult(
            False, f"Invalid arguments for `{name}`: {problem}", data={"invalid": True}
        )
    try:
        return tool.run(dict(args), ctx)
    except ToolDenied as exc:
        return ToolResult(False, f"Permission denied: {exc}", data={"denied": True, **exc.data})
    except ToolError as exc:
        return ToolResult(False, str(exc), data=exc.data)
    except (OSError, UnicodeError) as exc:
        return ToolResult(False, f"`{name}` failed: {exc}")


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def validate_args(schema: dict[str, Any], args: Any) -> str | None:
    """The first problem with `args` against an object schema, naming the parameter."""
    if not isinstance(args, dict):
        return f"expected a JSON object of arguments, got {type(args).__name__}"
    props: dict[str, Any] = schema.get("properties", {})
    for key in schema.get("required", []):
        if key not in args:
            return f"missing required parameter `{key}`"
    for key, value in args.items():
        if key not in props:
            return f"unknown parameter `{key}` (expected one of: {', '.join(props)})"
        expected = props[key].get("type")
        if expected and not _has_type(value, expected):
            return f"parameter `{key}` must be {expected}, got {_json_type(value)}"
    return None


def _has_type(value: Any, expected: str) -> bool:
    # bool is an int subclass in Python, but not a JSON integer.
    if isinstance(value, bool) and expected in ("integer", "number"):
        return False
    return isinstance(value, _JSON_TYPES.get(expected, (object,)))


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
    return names.get(type(value), "object" if isinstance(value, dict) else type(value).__name__)


def authorize(ctx: ToolContext, decision: Decision, question: str) -> None:
    """Raise `ToolDenied` unless `decision` allows, asking the user when the policy says so."""
    settled = ctx.policy.settle(decision, can_prompt=ctx.ask is not None)
    if settled is None:
        assert ctx.ask is not None  # settle() only defers when a prompt is possible
        if ctx.ask(question):
            return
        raise ToolDenied(f"{decision.reason}; the user declined")
    if not settled.allowed:
        raise ToolDenied(settled.reason)


def guard_path(ctx: ToolContext, path: str, write: bool) -> tuple[Path, str]:
    """Check `path` against the policy; returns (absolute path, repo-relative path)."""
    decision = ctx.policy.check_path(ctx.root, path, write)
    verb = "Write" if write else "Read"
    authorize(ctx, decision, f"{verb} {path}?")
    rel = repo_relative(ctx.root, path)
    assert rel is not None  # check_path denies paths outside the repository
    return ctx.root / rel, rel


def mark_mutation(ctx: ToolContext, label: str) -> None:
    """Tell the agent a workspace change is about to happen (it snapshots for undo).

    `label` says what changes (`edit calc.py`); it is folded onto one line and cut to
    `_LABEL_CHARS`, since it becomes the title of an undo step.
    """
    if ctx.before_mutation is None:
        return
    label = " ".join(label.split())
    if len(label) > _LABEL_CHARS:
        label = label[: _LABEL_CHARS - 3] + "..."
    ctx.before_mutation(label)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_not_stale(ctx: ToolContext, rel: str, current: bytes | None) -> None:
    """Refuse to change a file that changed on disk since our last read or write of it.

    Files never read are not refused: the repository was packed into the model's context,
    and the agent may seed `file_state` from that snapshot.
    """
    known = ctx.file_state.get(rel)
    if known is None:
        return
    if current is None or content_hash(current) != known:
        raise ToolError(
            f"{rel} changed on disk since you last read it; read it again before changing it",
            stale=True,
        )


def record_state(ctx: ToolContext, rel: str, data: bytes | None) -> None:
    """Remember what a file holds now (or forget it once deleted)."""
    if data is None:
        ctx.file_state.pop(rel, None)
    else:
        ctx.file_state[rel] = content_hash(data)
