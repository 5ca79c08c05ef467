"""The tool contract: schemas, argument validation and the dispatcher's error results."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest

from dsv4.tools.base import (
    ToolContext,
    ToolError,
    ToolResult,
    default_tools,
    mark_mutation,
    run_tool,
    tool_schemas,
)

EXPECTED = ["read", "write", "edit", "apply_patch", "glob", "grep", "bash", "run_tests", "git_diff"]


def test_schemas_are_valid_json_schemas():
    schemas = tool_schemas(default_tools())
    assert [s["name"] for s in schemas] == EXPECTED
    for schema in schemas:
        assert set(schema) == {"name", "description", "parameters"}
        jsonschema.Draft202012Validator.check_schema(schema["parameters"])
        assert set(schema["parameters"]["required"]) <= set(schema["parameters"]["properties"])


def test_mutating_flags():
    mutating = {t.name for t in default_tools() if t.mutating}
    assert mutating == {"write", "edit", "apply_patch", "bash"}


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ({}, "missing required parameter `file_path`"),
        ({"file_path": "a", "colour": 1}, "unknown parameter `colour`"),
        ({"file_path": 7}, "`file_path` must be string, got integer"),
        ({"file_path": "a", "offset": True}, "`offset` must be integer, got boolean"),
        ({"file_path": "a", "limit": "10"}, "`limit` must be integer, got string"),
        (["a"], "expected a JSON object"),
    ],
)
def test_bad_arguments_become_results(ctx: ToolContext, args, fragment: str):
    result = run_tool(default_tools(), "read", args, ctx)
    assert not result.ok and fragment in result.text


def test_unknown_tool_lists_the_known_ones(ctx: ToolContext):
    result = run_tool(default_tools(), "delete_everything", {}, ctx)
    assert not result.ok and "Unknown tool" in result.text and "apply_patch" in result.text


class _Raising:
    name = "boom"
    description = "raises"
    parameters = {"type": "object", "properties": {}, "required": []}
    mutating = False

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def run(self, args, ctx) -> ToolResult:
        raise self.exc


def test_tool_errors_and_os_errors_become_results(ctx: ToolContext):
    result = run_tool([_Raising(ToolError("nope", detail=1))], "boom", {}, ctx)
    assert (result.ok, result.text, result.data) == (False, "nope", {"detail": 1})
    io = run_tool([_Raising(PermissionError("read-only file system"))], "boom", {}, ctx)
    assert not io.ok and "read-only file system" in io.text


def test_context_resolves_its_root(tmp_path: Path):
    (tmp_path / "r").mkdir()
    assert ToolContext(root=tmp_path / "r" / ".." / "r").root == (tmp_path / "r").resolve()


def test_mutation_labels_say_what_changes(repo: Path, ctx: ToolContext):
    labels: list[str] = []
    ctx.before_mutation = labels.append
    (repo / "calc.py").write_text("x = 1\n")
    tools = default_tools()
    assert run_tool(
        tools, "edit", {"file_path": "calc.py", "old_string": "1", "new_string": "2"}, ctx
    ).ok
    assert run_tool(tools, "write", {"file_path": "new.py", "content": "y = 1\n"}, ctx).ok
    assert labels == ["edit calc.py", "write new.py"]


def test_mutation_label_is_one_short_line(ctx: ToolContext):
    labels: list[str] = []
    ctx.before_mutation = labels.append
    mark_mutation(ctx, "bash: " + "echo word\n" * 40)
    (label,) = labels
    assert "\n" not in label and label.startswith("bash: echo word echo word")
    assert len(label) <= 100 and label.endswith("...")
