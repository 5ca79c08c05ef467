"""The agent loop with the scripted model and the real file tools on a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dsv4.agent.backend import ModelTurn
from dsv4.agent.events import Events
from dsv4.agent.loop import AgentLoop, Limits
from dsv4.agent.prompt import PromptParts, initial_messages
from dsv4.agent.scripted import ScriptedBackend
from dsv4.engine.dsml import ToolCall, render_tool_calls
from dsv4.tools.base import ToolContext, tool_schemas
from dsv4.tools.edit import EditTool
from dsv4.tools.read import ReadTool
from dsv4.tools.write import WriteTool

EOS = "<｜end▁of▁sentence｜>"


def completion(reasoning: str, content: str = "", calls: list[ToolCall] | None = None) -> str:
    """The raw thinking-mode text V4 generates for one turn."""
    block = "\n\n" + render_tool_calls(calls) if calls else ""
    return f"{reasoning}</think>{content}{block}{EOS}"


def edit_call(old: str, new: str) -> ToolCall:
    return ToolCall("edit", {"file_path": "app.py", "old_string": old, "new_string": new})


READ = ToolCall("read", {"file_path": "app.py"})
DONE = completion("All good.", "Fixed the bug.")
# One case per kind of malformed output the DSML parser reports.
_BLOCK = render_tool_calls([READ])
MALFORMED = {
    "unclosed invoke": 'r</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="read">\n'
    '<｜DSML｜parameter name="file_path" string="true">app.py</｜DSML｜parameter>\n'
    "</｜DSML｜tool_calls>" + EOS,
    "bad JSON": 'r</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="read">\n'
    '<｜DSML｜parameter name="file_path" string="false">{a</｜DSML｜parameter>\n'
    "</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + EOS,
    "unknown tool": completion("r", calls=[ToolCall("nope", {"x": 1})]),
    "missing parameter": completion("r", calls=[ToolCall("read", {})]),
    "text after block": f"r</think>\n\n{_BLOCK}trailing{EOS}",
    "cut at the limit": "r</think>\n\n" + _BLOCK[:40],
}


class RecordingLog:
    """A session log in memory (the MessageLog protocol)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def append(self, kind: str, **fields: Any) -> None:
        self.records.append({"kind": kind, **json.loads(json.dumps(fields))})


def make_loop(tmp_path: Path, turns: list[str], **limits: Any) -> tuple[AgentLoop, dict]:
    script = tmp_path / "script.jsonl"
    script.write_text("".join(json.dumps({"completion": t}) + "\n" for t in turns))
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    (repo / "app.py").write_text("def add(a, b):\n    return a - b\n")
    seen: dict[str, Any] = {"events": [], "mutations": [], "log": RecordingLog()}
    ctx = ToolContext(root=repo, before_mutation=seen["mutations"].append)
    events = Events([seen["events"].append])
    tools = [ReadTool(), EditTool(), WriteTool()]
    loop = AgentLoop(ScriptedBackend(script), tools, ctx, Limits(**limits), events, seen["log"])
    seen["repo"] = repo
    return loop, seen


def first_messages(loop: AgentLoop) -> list[dict[str, Any]]:
    return initial_messages(PromptParts(task="Fix add()."), tool_schemas(loop.tools))


def kinds(seen: dict) -> list[str]:
    return [e["type"] for e in seen["events"]]


def test_a_turn_without_tool_calls_ends_the_loop(tmp_path: Path) -> None:
    loop, seen = make_loop(tmp_path, [DONE])
    result = loop.run(first_messages(loop))
    assert (result.status, result.steps) == ("done", 1)
    assert result.messages[-1] == {
        "role": "assistant",
        "content": "Fixed the bug.",
        "reasoning_content": "All good.",
    }
    assert kinds(seen) == ["turn"]
    assert result.tokens.completion > 0 and result.tokens.prompt > 0


def test_tool_calls_run_and_their_results_become_observations(tmp_path: Path) -> None:
    turns = [
        completion("Look first.", calls=[READ]),
        completion("Subtraction bug.", calls=[edit_call("a - b", "a + b")]),
        DONE,
    ]
    loop, seen = make_loop(tmp_path, turns)
    result = loop.run(first_messages(loop))
    assert result.status == "done" and result.steps == 3
    assert (seen["repo"] / "app.py").read_text() == "def add(a, b):\n    return a + b\n"
    tool_msgs = [m for m in result.messages if m["role"] == "tool"]
    assert "return a - b" in tool_msgs[0]["content"]  # the read result, numbered lines
    assert tool_msgs[0]["tool_call_id"] == "call_1_0"
    assert kinds(seen) == [
        "turn",
        "tool_call",
        "tool_result",
        "turn",
        "tool_call",
        "tool_result",
        "edit",
        "turn",
    ]
    edit = next(e for e in seen["events"] if e["type"] == "edit")
    assert edit["files"] == ["app.py"] and result.edited == ["app.py"]
    assert seen["mutations"] == ["edit app.py"]  # one snapshot, before the edit only


def test_tool_failures_are_observations_not_crashes(tmp_path: Path) -> None:
    turns = [completion("Edit blind.", calls=[edit_call("no such text", "x")]), DONE]
    loop, seen = make_loop(tmp_path, turns)
    before = (seen["repo"] / "app.py").read_bytes()
    result = loop.run(first_messages(loop))
    assert result.status == "done"
    failed = next(e for e in seen["events"] if e["type"] == "tool_result")
    assert failed["ok"] is False and failed["text"]
    assert (seen["repo"] / "app.py").read_bytes() == before


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_output_is_fed_back_and_the_run_continues(tmp_path: Path, case: str) -> None:
    loop, seen = make_loop(tmp_path, [MALFORMED[case], DONE])
    result = loop.run(first_messages(loop))
    assert result.status == "done" and result.steps == 2
    turn = next(e for e in seen["events"] if e["type"] == "turn")
    feedback = result.messages[-2]
    assert feedback["role"] == "user" and "could not be parsed" in feedback["content"]
    assert turn["errors"][0] in feedback["content"]
    assert "tool_call" not in kinds(seen)  # nothing from the malformed turn ran


def test_three_malformed_turns_in_a_row_end_with_a_model_error(tmp_path: Path) -> None:
    # Each turn holds a well-formed edit followed by junk: the edit must never run.
    bad = f"r</think>\n\n{render_tool_calls([edit_call('a - b', 'a + b')])}junk{EOS}"
    loop, seen = make_loop(tmp_path, [bad, bad, bad, DONE])
    before = (seen["repo"] / "app.py").read_bytes()
    result = loop.run(first_messages(loop))
    assert result.status == "model_error" and result.steps == 3
    assert "3 malformed model turns in a row" in result.reason
    assert (seen["repo"] / "app.py").read_bytes() == before
    assert seen["mutations"] == []


def test_format_error_count_resets_after_a_good_turn(tmp_path: Path) -> None:
    bad = MALFORMED["unknown tool"]
    turns = [bad, bad, completion("ok", calls=[READ]), bad, bad, DONE]
    loop, _ = make_loop(tmp_path, turns)
    assert loop.run(first_messages(loop)).status == "done"


def test_the_same_call_with_the_same_result_three_times_ends_the_run(tmp_path: Path) -> None:
    turns = [completion(f"Again {i}.", calls=[READ]) for i in range(5)]
    loop, _ = make_loop(tmp_path, turns)
    result = loop.run(first_messages(loop))
    assert result.status == "repetition" and result.steps == 3
    assert "read 3 times" in result.reason


@pytest.mark.parametrize(
    ("limits", "steps", "needle"),
    [
        ({"max_steps": 2}, 2, "step limit"),
        ({"max_generated_tokens": 1}, 1, "token limit"),
        ({"timeout_s": 1e-9}, 0, "time limit"),
    ],
)
def test_limits_end_the_run(tmp_path: Path, limits: dict, steps: int, needle: str) -> None:
    turns = [
        completion(f"step {i}", calls=[ToolCall("read", {"file_path": f"f{i}"})]) for i in range(5)
    ]
    loop, _ = make_loop(tmp_path, turns, **limits)
    result = loop.run(first_messages(loop))
    assert (result.status, result.steps) == ("limit", steps)
    assert needle in result.reason


def test_a_script_that_runs_out_is_a_model_error(tmp_path: Path) -> None:
    loop, _ = make_loop(tmp_path, [completion("look", calls=[READ])])
    result = loop.run(first_messages(loop))
    assert result.status == "model_error"
    assert "ran out of model turns" in result.reason and "script.jsonl" in result.reason


def test_the_log_rebuilds_the_exact_conversation(tmp_path: Path) -> None:
    turns = [completion("look", calls=[READ]), completion("fix", calls=[edit_call("-", "+")]), DONE]
    loop, seen = make_loop(tmp_path, turns)
    start = first_messages(loop)
    for message in start:
        seen["log"].append("message", message=message)
    result = loop.run(start)
    logged = [r["message"] for r in seen["log"].records if r["kind"] == "message"]
    assert logged == result.messages
    assert [r["kind"] for r in seen["log"].records].count("turn") == 3


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_steps"):
        Limits(max_steps=0)


def test_model_turn_from_a_parse_keeps_everything() -> None:
    from dsv4.engine.dsml import parse_completion

    parsed = parse_completion(completion("why", "what", [READ]))
    turn = ModelTurn.from_parsed(parsed, prompt_tokens=7)
    assert (turn.reasoning, turn.content, turn.tool_calls) == ("why", "what", [READ])
    assert turn.prompt_tokens == 7 and turn.finish == "eos"
