"""The bash tool: output, exit codes, timeouts that kill the whole group, truncation."""

from __future__ import annotations

import os
import time
from pathlib import Path

from dsv4.tools.base import ToolContext, run_tool
from dsv4.tools.bash import BashTool
from dsv4.tools.policy import Policy


def _bash(ctx: ToolContext, command: str, tool: BashTool | None = None, **extra):
    return run_tool([tool or BashTool()], "bash", {"command": command, **extra}, ctx)


def _approving(repo: Path, scratch: Path) -> ToolContext:
    return ToolContext(root=repo, policy=Policy(ask_answer="yes"), scratch_dir=scratch)


def test_runs_in_the_repository_root(repo: Path, ctx: ToolContext):
    (repo / "marker.txt").write_text("m")
    result = _bash(ctx, "ls")
    assert result.ok and "marker.txt" in result.text
    assert result.data["exit_code"] == 0


def test_failing_command_reports_its_exit_code(repo: Path, tmp_path: Path):
    result = _bash(_approving(repo, tmp_path), "echo oops >&2; exit 3")
    assert not result.ok
    assert "oops" in result.text and "[exit code 3]" in result.text
    assert result.data["exit_code"] == 3


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child of an exited parent may linger as a zombie until init reaps it.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_timeout_kills_the_whole_process_group(repo: Path, tmp_path: Path):
    pid_file = tmp_path / "grandchild.pid"
    command = f"bash -c 'sleep 60 & echo $! > {pid_file}; wait' ; echo never"
    start = time.monotonic()
    result = _bash(_approving(repo, tmp_path), command, timeout=1)
    assert time.monotonic() - start < 10
    assert not result.ok and result.data["timed_out"]
    assert "killed after 1s" in result.text and "never" not in result.text
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_long_output_keeps_head_and_tail_and_saves_the_rest(repo: Path, ctx: ToolContext):
    tool = BashTool(max_output_chars=2000)
    result = _bash(ctx, "python -c \"print('\\n'.join(f'line{i}' for i in range(5000)))\"", tool)
    assert result.ok and result.truncated
    assert "line0\n" in result.text and "line4999" in result.text
    assert "line2500\n" not in result.text and "omitted" in result.text
    assert len(result.text) < 2600
    assert result.full_output_path is not None
    saved = Path(result.full_output_path).read_text()
    assert saved.count("\n") >= 5000 and "line2500\n" in saved
    assert not Path(result.full_output_path).is_relative_to(repo)


def test_snapshot_hook_runs_before_the_command(repo: Path, ctx: ToolContext):
    seen: list[tuple[str, bool]] = []
    ctx.before_mutation = lambda label: seen.append((label, (repo / "made").exists()))
    ctx.policy = Policy(ask_answer="yes")
    assert _bash(ctx, "touch made").ok
    assert seen == [("bash: touch made", False)]


def test_network_is_isolated_or_the_result_says_partial(repo: Path, ctx: ToolContext):
    result = _bash(ctx, "cat /proc/net/dev")
    assert result.data["isolation"] in ("network-isolated", "partial")
    if result.data["isolation"] == "network-isolated":
        interfaces = [
            line.split(":")[0].strip() for line in result.text.splitlines() if ":" in line
        ]
        assert interfaces == ["lo"]  # only loopback exists in the fresh network namespace
    else:
        assert "isolation is partial" in result.text
