"""Test-command detection, running with timeouts, and output summaries."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from dsv4.agent.testcmd import detect_test_command, run_tests, summarize, truncate


def make(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"pyproject.toml": "[project]\nname='x'\n"}, "pytest"),
        ({"setup.cfg": ""}, "pytest"),
        ({"pytest.ini": "[pytest]\n"}, "pytest"),
        ({"tests/test_x.py": "def test(): pass\n"}, "pytest"),
        ({"package.json": json.dumps({"scripts": {"test": "node --test"}})}, "npm test"),
        ({"Cargo.toml": "[package]\n"}, "cargo test"),
        ({"go.mod": "module x\n"}, "go test ./..."),
        ({"Makefile": "all:\n\tcc x.c\n\ntest: all\n\t./run\n"}, "make test"),
        ({"Makefile": "check test: build\n\t./run\n"}, "make test"),
    ],
)
def test_detects_common_layouts(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    command = detect_test_command(make(tmp_path, files))
    assert command is not None and command.endswith(expected)


@pytest.mark.parametrize(
    "files",
    [
        {},
        {"README.md": "hi\n"},
        # npm's placeholder script always fails; it is not a test suite.
        {
            "package.json": json.dumps(
                {"scripts": {"test": 'echo "Error: no test specified" && exit 1'}}
            )
        },
        {"package.json": json.dumps({"scripts": {"build": "tsc"}})},
        {"package.json": "{not json"},
        {"Makefile": "TEST := 1\ntest := yes\nall:\n\tcc x.c\n"},
        # A tests folder with no Python tests in it (e.g. a C project's data).
        {"tests/input.txt": "1 2 3\n"},
    ],
)
def test_no_command_when_nothing_fits(tmp_path: Path, files: dict[str, str]) -> None:
    assert detect_test_command(make(tmp_path, files)) is None


def test_python_project_prefers_its_own_virtualenv(tmp_path: Path) -> None:
    make(tmp_path, {"pyproject.toml": "", ".venv/bin/python": ""})
    assert detect_test_command(tmp_path) == ".venv/bin/python -m pytest"


def test_python_markers_win_over_a_makefile(tmp_path: Path) -> None:
    make(tmp_path, {"pyproject.toml": "", "Makefile": "test:\n\ttrue\n"})
    assert "pytest" in (detect_test_command(tmp_path) or "")


def test_run_passing_and_failing(tmp_path: Path) -> None:
    ok = run_tests("echo '3 passed in 0.01s'", tmp_path, timeout=30)
    assert (ok.passed, ok.exit_code, ok.summary, ok.timed_out) == (True, 0, "3 passed", False)
    assert ok.output == "3 passed in 0.01s\n" and ok.duration_s >= 0
    bad = run_tests("echo out; echo err >&2; exit 3", tmp_path, timeout=30)
    assert (bad.passed, bad.exit_code, bad.summary) == (False, 3, "failed (exit 3)")
    assert "out" in bad.output and "err" in bad.output, "stderr is kept with stdout"


def test_runs_in_the_given_folder(tmp_path: Path) -> None:
    (tmp_path / "marker.txt").write_text("here\n")
    assert run_tests("cat marker.txt", tmp_path, timeout=30).output == "here\n"


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    # The shell starts a background grandchild that would outlive a plain kill of the shell.
    command = f"sleep 60 & echo $! > {pid_file}; echo started; wait"
    start = time.monotonic()
    result = run_tests(command, tmp_path, timeout=1)
    assert time.monotonic() - start < 10
    assert result.timed_out and not result.passed and result.exit_code is None
    assert result.summary.startswith("timed out after 1s")
    assert "started" in result.output
    child = int(pid_file.read_text())
    for _ in range(50):  # the kill is delivered; give the kernel a moment to reap
        if not _alive(child):
            break
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers signal 0; it has exited all the same.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


@pytest.mark.parametrize(
    ("output", "exit_code", "expected"),
    [
        ("....F\n===== 1 failed, 4 passed, 2 warnings in 0.12s =====\n", 1, "1 failed, 4 passed"),
        ("E\n1 error in 0.3s\n", 2, "1 error"),
        (
            "# tests 6\n# pass 2\n# fail 4\n# cancelled 0\n# skipped 0\n# todo 0\n",
            1,
            "2 passed, 4 failed",
        ),
        (
            "test result: ok. 3 passed; 0 failed; 0 ignored\n"
            "test result: FAILED. 1 passed; 2 failed; 0 ignored\n",
            101,
            "4 passed, 2 failed",
        ),
        (
            "--- FAIL: TestX\nFAIL\tex.com/a\t0.1s\nok  \tex.com/b\t0.2s\n",
            1,
            "1 package ok, 1 package failed",
        ),
        ("3 passed, 2 failed\nmake: *** [Makefile:4: test] Error 1\n", 2, "3 passed, 2 failed"),
        ("all good\n", 0, "passed (exit 0)"),
        ("", 139, "failed (exit 139)"),
    ],
)
def test_summaries(output: str, exit_code: int, expected: str) -> None:
    assert summarize(output, exit_code) == expected


def test_truncate_keeps_head_and_tail() -> None:
    lines = "".join(f"line {i}\n" for i in range(1000))
    cut = truncate(lines, head=100, tail=200)
    assert cut.startswith(lines[:100]) and cut.endswith(lines[-200:])
    assert "characters" in cut and "lines omitted" in cut
    assert len(cut) < 400
    assert truncate("short", head=100, tail=200) == "short"
