"""Prompt layout: cache-friendly order, byte-stable prefixes, and the failure-file fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsv4.agent.prompt import (
    SYSTEM_PROMPT,
    PromptParts,
    failure_context,
    files_named_in,
    fix_task,
    initial_messages,
    render_prompt,
    repository_context,
)

TOOLS = [
    {
        "name": "read",
        "description": "Read a file.",
        "parameters": {
            "type": "object",
            "properties": {"file_path": {"type": "string"}},
            "required": ["file_path"],
        },
    }
]


def call(i: int) -> dict:
    return {
        "id": f"call_{i}",
        "type": "function",
        "function": {"name": "read", "arguments": json.dumps({"file_path": f"f{i}.py"})},
    }


def test_layout_is_system_and_tools_then_repository_then_task() -> None:
    parts = PromptParts(task="Fix the bug.", repository="<file>x</file>", notes="Use tabs.")
    system, user = initial_messages(parts, TOOLS)
    assert system == {
        "role": "system",
        "content": SYSTEM_PROMPT,
        "tools": [{"type": "function", "function": TOOLS[0]}],
    }
    text = user["content"]
    assert text.index("<repository>") < text.index("Use tabs.") < text.index("Fix the bug.")
    prompt = render_prompt([system, user], TOOLS)
    assert prompt.index("### Available Tool Schemas") < prompt.index("<repository>")
    assert prompt.endswith("Fix the bug.<｜Assistant｜><think>")


@pytest.mark.parametrize("thinking", [True, False])
def test_each_turn_only_appends_to_the_previous_prompt(thinking: bool) -> None:
    messages = initial_messages(PromptParts(task="Go.", repository="repo"), TOOLS)
    previous = render_prompt(messages, TOOLS, thinking)
    turns = [
        [
            {
                "role": "assistant",
                "content": "",
                "reasoning_content": "r1",
                "tool_calls": [call(1)],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "1\tx"},
        ],
        [
            {"role": "assistant", "content": "Hm.", "reasoning_content": "r2"},
            {"role": "user", "content": "Your last reply could not be parsed: ..."},
        ],
        [
            {
                "role": "assistant",
                "content": "",
                "reasoning_content": "r3",
                "tool_calls": [call(2), call(3)],
            },
            {"role": "tool", "tool_call_id": "call_2", "content": "a"},
            {"role": "tool", "tool_call_id": "call_3", "content": "b"},
        ],
    ]
    for turn in turns:
        messages += turn
        current = render_prompt(messages, TOOLS, thinking)
        assert current.startswith(previous)
        previous = current


def test_render_prompt_adds_tools_when_no_message_has_them() -> None:
    prompt = render_prompt([{"role": "user", "content": "hi"}], TOOLS)
    assert '"name": "read"' in prompt and prompt.index("## Tools") < prompt.index("hi")


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "calc.py").write_text("def f():\n    return 1\n")
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "x.test.js").write_text("test('x', () => {})\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config.py").write_text("secret\n")
    return tmp_path


def test_files_named_in_failure_output(repo: Path) -> None:
    output = (
        f'File "{repo}/pkg/calc.py", line 2, in f\n'
        "pkg/calc.py:2: AssertionError\n"
        "    at Object.<anonymous> (test/x.test.js:4:7)\n"
        "missing.py:3: nothing here\n"
        "../outside.py:1 and .git/config.py:1\n"
    )
    assert files_named_in(output, repo) == ["pkg/calc.py", "test/x.test.js"]


def test_failure_context_quotes_the_named_files(repo: Path) -> None:
    context = failure_context(repo, "E   pkg/calc.py:2: assert 1 == 2")
    assert context == '<file path="pkg/calc.py">\ndef f():\n    return 1\n</file>'
    assert repository_context(repo, "task", "pkg/calc.py:2", use_index=False) == context


def test_repository_context_uses_the_indexer_when_enabled(tmp_path: Path) -> None:
    import subprocess

    (tmp_path / "calc.py").write_text("def f():\n    return 1\n")
    (tmp_path / "other.py").write_text("X = 2\n")
    fallback = repository_context(tmp_path, "fix f", "calc.py:2: AssertionError")
    assert fallback == failure_context(tmp_path, "calc.py:2")  # not a git work tree yet
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    text = repository_context(tmp_path, "fix f", "calc.py:2: AssertionError")
    assert "return 1" in text and "X = 2" in text  # the whole (small) repository


def test_fix_task_names_the_command_and_quotes_the_output() -> None:
    task = fix_task("pytest -q", "1 failed", "FAILED test_x.py::test_y\n")
    assert "`pytest -q`" in task and "1 failed" in task
    assert task.endswith("<test_output>\nFAILED test_x.py::test_y\n</test_output>")
