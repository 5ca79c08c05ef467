"""`fix` / `run_task` on copies of the example repositories, with recorded model sessions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from dsv4.agent.backend import BackendOptions
from dsv4.agent.events import Events, event_schema
from dsv4.agent.fix import RunConfig, fix, run_task
from dsv4.agent.loop import Limits
from dsv4.agent.snapshot import Snapshots

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EOS = "<｜end▁of▁sentence｜>"
# A fast stand-in for the example's pytest suite (same two assertions that fail as shipped);
# the detected `pytest` command itself is exercised by tests/cli/test_agent.py.
QUICK_TEST = (
    'python -c "import calc; assert calc.divide(7, 2) == 3.5; assert calc.mean([1, 2, 3]) == 2"'
)
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}


def git(root: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(
        ["git", *args], cwd=root, env=env, check=True, capture_output=True, text=True
    ).stdout


def example_repo(tmp_path: Path, name: str) -> Path:
    """A copy of `examples/<name>` as a fresh git repository with one commit."""
    root = tmp_path / name
    shutil.copytree(EXAMPLES / name, root)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSV4_STATE_DIR", str(tmp_path / "state"))


def run_fix(root: Path, script: Path | None, **overrides: Any) -> tuple[int, list[dict]]:
    seen: list[dict] = []
    overrides.setdefault("test_command", QUICK_TEST)
    cfg = RunConfig(root=root, backend=BackendOptions(script=script), use_index=False, **overrides)
    code = fix(cfg, Events([seen.append]))
    return code, seen


def result_of(events: list[dict]) -> dict:
    results = [e for e in events if e["type"] == "result"]
    assert len(results) == 1
    return results[0]


def test_fix_repairs_the_python_example_and_reports_valid_events(tmp_path: Path) -> None:
    root = example_repo(tmp_path, "python-calc")
    code, events = run_fix(root, EXAMPLES / "python-calc.fix.jsonl")
    result = result_of(events)
    assert code == 0 and result["status"] == "fixed", result["message"]
    assert result["files_changed"] == ["calc.py"]
    assert [e["phase"] for e in events if e["type"] == "test_run"][0] == "initial"
    assert [e for e in events if e["type"] == "test_run"][-1]["passed"] is True
    validator = jsonschema.Draft202012Validator(event_schema())
    for event in events:
        validator.validate(json.loads(json.dumps(event)))
    # Every mutating step was snapshotted: undoing them all brings the failure back.
    history = Snapshots(root).history()
    assert history
    Snapshots(root).undo(len(history))
    assert git(root, "status", "--porcelain") == ""


def test_a_script_that_does_not_fix_leaves_the_tests_failing(tmp_path: Path) -> None:
    root = example_repo(tmp_path, "python-calc")
    code, events = run_fix(root, EXAMPLES / "python-calc.nofix.jsonl")
    assert code in (1, 3)
    assert result_of(events)["status"] in ("failing", "limit")
    assert events[-2]["type"] == "test_run" and events[-2]["passed"] is False


def test_already_green_exits_0_without_building_a_backend(tmp_path: Path) -> None:
    root = example_repo(tmp_path, "python-calc")
    code, events = run_fix(root, tmp_path / "missing-script.jsonl", test_command="true")
    assert code == 0 and result_of(events)["status"] == "already_green"
    assert [e["type"] for e in events] == ["test_run", "result"]


def test_no_model_is_a_usage_error_that_says_how_to_give_one(tmp_path: Path) -> None:
    root = example_repo(tmp_path, "python-calc")
    code, events = run_fix(root, None)
    message = result_of(events)["message"]
    assert code == 2
    for hint in ("--model", "DSV4_MODEL", "--endpoint", "--script", "never downloads"):
        assert hint in message


@pytest.mark.parametrize("problem", ["not a git repo", "no test command"])
def test_setup_problems_are_usage_errors(tmp_path: Path, problem: str) -> None:
    root = tmp_path / "plain"
    root.mkdir()
    if problem == "not a git repo":
        (root / "test_x.py").write_text("def test_x():\n    assert False\n")
        overrides: dict[str, Any] = {"test_command": "false"}
    else:
        git(root, "init", "-q")
        overrides = {"test_command": None}
    code, events = run_fix(root, EXAMPLES / "python-calc.fix.jsonl", **overrides)
    assert code == 2
    assert ("git init" if problem == "not a git repo" else "--test") in result_of(events)["message"]


def test_three_malformed_turns_exit_4_and_change_nothing(tmp_path: Path) -> None:
    root = example_repo(tmp_path, "python-calc")
    bad = (
        'r</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="write">\n'
        '<｜DSML｜parameter name="file_path" string="true">calc.py</｜DSML｜parameter>\n'
        '<｜DSML｜parameter name="content" string="true">x = 1\n</｜DSML｜parameter>\n'
        f"</｜DSML｜invoke>\n</｜DSML｜tool_calls>trailing junk{EOS}"
    )
    script = tmp_path / "bad.jsonl"
    script.write_text((json.dumps({"completion": bad}) + "\n") * 4)
    code, events = run_fix(root, script)
    assert code == 4 and result_of(events)["status"] == "model_error"
    assert result_of(events)["files_changed"] == []
    assert git(root, "status", "--porcelain") == ""


def test_commit_makes_one_commit_and_keeps_other_uncommitted_work(tmp_path: Path) -> None:
    root = example_repo(tmp_path, "python-calc")
    (root / "notes.txt").write_text("my own work in progress\n")
    code, events = run_fix(root, EXAMPLES / "python-calc.fix.jsonl", commit=True)
    assert code == 0 and "committed" in result_of(events)["message"]
    log = git(root, "log", "--format=%s").splitlines()
    assert len(log) == 2 and log[0].startswith("dsv4:")
    assert git(root, "show", "--name-only", "--format=", "HEAD").split() == ["calc.py"]
    assert git(root, "status", "--porcelain").strip() == "?? notes.txt"


def test_resume_continues_a_run_from_its_log(tmp_path: Path) -> None:
    root = example_repo(tmp_path, "python-calc")
    lines = (EXAMPLES / "python-calc.fix.jsonl").read_text().splitlines()
    code, events = run_fix(root, EXAMPLES / "python-calc.fix.jsonl", limits=Limits(max_steps=1))
    first = result_of(events)
    assert code == 3 and first["session_id"]
    rest = tmp_path / "rest.jsonl"
    rest.write_text("\n".join(lines[1:]) + "\n")
    code, events = run_fix(root, rest, resume=first["session_id"])
    assert code == 0, result_of(events)["message"]
    assert result_of(events)["steps"] == len(lines)


def test_run_task_finishes_with_0(tmp_path: Path) -> None:
    root = example_repo(tmp_path, "python-calc")
    script = tmp_path / "task.jsonl"
    script.write_text(json.dumps({"completion": f"Nothing to do.</think>Done.{EOS}"}) + "\n")
    seen: list[dict] = []
    cfg = RunConfig(root=root, backend=BackendOptions(script=script), use_index=False)
    assert run_task("Say hello.", cfg, Events([seen.append])) == 0
    assert result_of(seen)["status"] == "done" and result_of(seen)["steps"] == 1
