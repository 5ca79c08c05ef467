"""The run_tests tool: configured command, exit code and summary."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dsv4.tools.base import ToolContext, run_tool
from dsv4.tools.run_tests import RunTestsTool, summarise


def _project(root: Path, passing: bool) -> None:
    body = "self.assertEqual(1 + 1, 2)" if passing else "self.assertEqual(1 + 1, 3)"
    (root / "test_demo.py").write_text(
        "import unittest\n\n\nclass T(unittest.TestCase):\n"
        "    def test_one(self):\n        pass\n\n"
        f"    def test_two(self):\n        {body}\n"
    )


@pytest.mark.parametrize("passing", [True, False])
def test_runs_the_configured_command(repo: Path, ctx: ToolContext, passing: bool):
    _project(repo, passing)
    ctx.test_command = f"{sys.executable} -m unittest -q"
    result = run_tool([RunTestsTool()], "run_tests", {}, ctx)
    assert result.ok is passing
    assert result.data["exit_code"] == (0 if passing else 1)
    assert result.data["summary"] == ("OK" if passing else "FAILED (failures=1)")
    assert result.text.startswith("Tests passed" if passing else "Tests FAILED")
    assert "test_two" in result.text or passing


@pytest.mark.slow
def test_pytest_summary_from_a_real_run(repo: Path, ctx: ToolContext):
    _project(repo, passing=False)
    ctx.test_command = f"{sys.executable} -m pytest -q -p no:cacheprovider"
    result = run_tool([RunTestsTool()], "run_tests", {}, ctx)
    assert not result.ok
    assert result.data["summary"].startswith("1 failed, 1 passed")


def test_without_a_command_is_an_error_result(ctx: ToolContext):
    result = run_tool([RunTestsTool()], "run_tests", {}, ctx)
    assert not result.ok and "No test command" in result.text


def test_a_model_command_goes_through_the_policy(repo: Path, ctx: ToolContext):
    ctx.test_command = "pytest"
    result = run_tool([RunTestsTool()], "run_tests", {"command": "curl http://x"}, ctx)
    assert not result.ok and result.data["denied"]


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("....\n==== 3 failed, 10 passed in 0.52s ====\n", "3 failed, 10 passed in 0.52s"),
        ("..\n2 passed in 0.01s\n", "2 passed in 0.01s"),
        ("Ran 4 tests in 0.001s\n\nFAILED (failures=1)\n", "FAILED (failures=1)"),
        ("test result: ok. 3 passed; 0 failed\n", "test result: ok. 3 passed; 0 failed"),
        ("compiling\n", None),
    ],
)
def test_summarise(output: str, expected: str | None):
    assert summarise(output) == expected
