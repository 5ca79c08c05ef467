"""The agent's prompt: system text, tool schemas, repository context and the task.

Layout for cache reuse: `[system + tool schemas][repository][task + turns…]`. The first two
messages are written once per run and later turns only append, so the encoded prompt of
turn n is a byte prefix of the prompt of turn n+1 and the engine prefills only new tokens.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsv4.agent.backend import openai_tools

SYSTEM_PROMPT = """\
You are dsv4, a coding agent working inside a software repository on the user's machine.
You act only through the tools below. Paths are relative to the repository root.

How to work:
- Read the code before changing it. The repository context below may already hold the files
  you need; use `read`, `grep` and `glob` for anything else.
- Make the smallest change that solves the task. Prefer `edit` with an `old_string` copied
  exactly from the file (enough lines to be unique); use `write` only for new files.
- Run the tests (`run_tests`) after changing code, and keep going until they pass.
- Never weaken, skip or delete tests to make them pass, and do not touch files outside the
  repository or under `.git/`.
- A tool result that starts with "error" or "denied" tells you what went wrong; adjust and
  try again instead of repeating the same call.
- When the task is done, reply with a short summary of what you changed and no tool calls.
"""

# Failing test output names files as `path/to/file.py:12`, `File "x.py", line 3`, `(x.js:4:7)`.
_PATH_PATTERN = re.compile(r"""[\w./\\-]+\.[A-Za-z0-9]{1,8}""")
_FALLBACK_FILE_BYTES = 32_000
_FALLBACK_TOTAL_BYTES = 200_000


@dataclass
class PromptParts:
    """The pieces of the first request; `repository` and `notes` may be empty."""

    task: str
    repository: str = ""
    notes: str = ""  # AGENTS.md instructions
    system: str = SYSTEM_PROMPT


def initial_messages(parts: PromptParts, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The system message (with the tool schemas) and the first user message."""
    sections = []
    if parts.repository:
        sections.append(f"<repository>\n{parts.repository.rstrip()}\n</repository>")
    if parts.notes:
        sections.append(f"<project_instructions>\n{parts.notes.rstrip()}\n</project_instructions>")
    sections.append(parts.task)
    system = {"role": "system", "content": parts.system, "tools": openai_tools(tools)}
    return [system, {"role": "user", "content": "\n\n".join(sections)}]


def render_prompt(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]], thinking: bool = True
) -> str:
    """The V4 prompt string for a conversation (tools on the system message)."""
    from dsv4.engine.encoding import encode_messages

    msgs = copy.deepcopy(messages)
    if tools and not any("tools" in m for m in msgs):
        if msgs and msgs[0].get("role") == "system":
            msgs[0]["tools"] = openai_tools(tools)
        else:
            msgs.insert(0, {"role": "system", "content": "", "tools": openai_tools(tools)})
    return encode_messages(msgs, thinking_mode="thinking" if thinking else "chat")


def fix_task(command: str, summary: str, output: str) -> str:
    """The task text for `agent fix`: the failing command and its output."""
    return (
        f"The test command `{command}` fails ({summary or 'non-zero exit'}). Find the cause "
        "in the code and fix it so that the tests pass. Do not change the tests unless they "
        "are clearly wrong.\n\n"
        f"<test_output>\n{output.rstrip()}\n</test_output>"
    )


def files_named_in(output: str, root: Path) -> list[str]:
    """Repository files mentioned in test output, in order of first mention."""
    root = root.resolve()
    seen: list[str] = []
    for match in _PATH_PATTERN.finditer(output):
        rel = _inside(root, match.group(0))
        if rel is not None and rel not in seen:
            seen.append(rel)
    return seen


def _inside(root: Path, text: str) -> str | None:
    """`text` as a root-relative path when it names a file in the repository (not .git/)."""
    path = Path(text)
    try:
        path = (path if path.is_absolute() else root / path).resolve()
        rel = path.relative_to(root)
    except (ValueError, OSError):
        return None
    if not path.is_file() or ".git" in rel.parts:
        return None
    return rel.as_posix()


def failure_context(root: Path, output: str) -> str:
    """Fallback repository context: the files the failing output names, each capped."""
    blocks, total = [], 0
    for rel in files_named_in(output, root):
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
        if len(text) > _FALLBACK_FILE_BYTES:
            text = text[:_FALLBACK_FILE_BYTES] + "\n[... truncated]"
        if total + len(text) > _FALLBACK_TOTAL_BYTES:
            break
        total += len(text)
        blocks.append(f'<file path="{rel}">\n{text.rstrip()}\n</file>')
    return "\n".join(blocks)


def repository_context(
    root: Path,
    task: str,
    failure_output: str = "",
    use_index: bool = True,
    budget: int | None = None,
) -> str:
    """The packed repository from the indexer, or the failure-named files without it.

    The fallback also covers a folder the indexer cannot read (not a git work tree).
    """
    if use_index:
        try:
            from dsv4.agent.fileset import RepositoryError
            from dsv4.agent.indexer import build_index
        except ImportError:
            return failure_context(root, failure_output)
        focus = tuple(files_named_in(failure_output, root))
        try:
            return build_index(root, budget=budget, focus=focus, task=task).text
        except RepositoryError:
            pass
    return failure_context(root, failure_output)
