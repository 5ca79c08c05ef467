"""The example repositories fail as shipped; their .fix sessions fix them, .nofix ones do not.

The edits of a session are applied here with a plain string replace, independent of the
agent loop, so this checks the examples and the scripts themselves.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from dsv4.agent.testcmd import detect_test_command, run_tests

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
INVOKE = re.compile(r'<｜DSML｜invoke name="([^"]+)">\n(.*?)\n</｜DSML｜invoke>', re.DOTALL)
PARAM = re.compile(
    r'<｜DSML｜parameter name="([^"]+)" string="(true|false)">(.*?)</｜DSML｜parameter>', re.DOTALL
)
EOS = "<｜end▁of▁sentence｜>"

# name -> (program the tests need, the command to run them here)
CASES = {
    # Without the test environment's pytest plugins: they only slow the start-up down.
    "python-calc": (
        None,
        f"PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 {sys.executable} -m pytest -q -p no:cacheprovider",
    ),
    "js-slugify": ("npm", "npm test"),
    "c-stack": ("make", "make test"),
}


def tool_calls(completion: str) -> list[tuple[str, dict[str, object]]]:
    calls = []
    for name, body in INVOKE.findall(completion):
        params = {
            key: value if is_str == "true" else json.loads(value)
            for key, is_str, value in PARAM.findall(body)
        }
        calls.append((name, params))
    return calls


def load_session(path: Path) -> list[str]:
    return [json.loads(line)["completion"] for line in path.read_text().splitlines()]


def apply_edits(root: Path, completions: list[str]) -> int:
    """Apply every edit/write call in order; return how many were applied."""
    applied = 0
    for completion in completions:
        for name, params in tool_calls(completion):
            if name not in ("edit", "write"):
                continue
            target = root / str(params["file_path"])
            if name == "write":
                target.write_text(str(params["content"]))
            else:
                text = target.read_text()
                old, new = str(params["old_string"]), str(params["new_string"])
                assert text.count(old) == 1, f"old_string must match once in {target.name}: {old!r}"
                target.write_text(text.replace(old, new))
            applied += 1
    return applied


@pytest.fixture(params=sorted(CASES))
def example(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path, str]:
    name = request.param
    program, command = CASES[name]
    if program and shutil.which(program) is None:
        pytest.skip(f"{program} is not installed")
    if name == "c-stack" and shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    copy = tmp_path / name
    shutil.copytree(EXAMPLES / name, copy)
    return name, copy, command


def test_fails_as_shipped_and_fix_session_fixes_it(example: tuple[str, Path, str]) -> None:
    name, root, command = example
    assert detect_test_command(root) is not None
    before = run_tests(command, root, timeout=120)
    assert not before.passed, f"{name} should fail as shipped:\n{before.output}"
    assert "failed" in before.summary

    applied = apply_edits(root, load_session(EXAMPLES / f"{name}.fix.jsonl"))
    assert applied >= 1
    after = run_tests(command, root, timeout=120)
    assert after.passed, f"{name} after the .fix session:\n{after.output}"


def test_nofix_session_leaves_tests_failing(example: tuple[str, Path, str]) -> None:
    name, root, command = example
    assert apply_edits(root, load_session(EXAMPLES / f"{name}.nofix.jsonl")) >= 1
    result = run_tests(command, root, timeout=120)
    assert not result.passed, f"{name} after the .nofix session should still fail"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.jsonl")), ids=lambda p: p.name)
def test_session_turns_are_well_formed(path: Path) -> None:
    completions = load_session(path)
    assert len(completions) >= 2
    for completion in completions:
        assert completion.endswith(EOS) and completion.count("</think>") == 1
        reasoning, rest = completion.split("</think>")
        assert reasoning.strip()
        if "<｜DSML｜tool_calls>" in rest:
            assert rest.endswith(f"</｜DSML｜tool_calls>{EOS}")
            assert "\n\n<｜DSML｜tool_calls>\n" in rest and tool_calls(rest)
    # A session ends with a final answer: no tool calls, some text for the user.
    last = completions[-1].split("</think>")[1]
    assert "<｜DSML｜" not in last and last.removesuffix(EOS).strip()


def test_sessions_match_their_generator() -> None:
    spec = importlib.util.spec_from_file_location("write_sessions", EXAMPLES / "write_sessions.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, turns in module.SESSIONS.items():
        assert (EXAMPLES / f"{name}.jsonl").read_text() == module.render(turns), name
