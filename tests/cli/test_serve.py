"""`dsv4 serve` as a process, and `dsv4 agent fix --endpoint` against it end to end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
GOLDEN = ROOT / "tests" / "data" / "golden" / "checkpoint"
DSV4 = str(Path(sys.executable).with_name("dsv4"))
CI_STEP = EXAMPLES / "ci" / "dsv4-ci-step.sh"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}


def env_for(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, **GIT_ENV, "DSV4_STATE_DIR": str(tmp_path / "state"), "NO_COLOR": "1"}
    for name in ("DSV4_MODEL", "DSV4_API_KEY", "OPENAI_API_KEY", "DSV4_SERVE_API_KEY"):
        env.pop(name, None)
    return env


@contextmanager
def serving(tmp_path: Path, *args: str) -> Iterator[str]:
    """`dsv4 serve --port 0 ARGS` in the background; yields its base URL (…/v1)."""
    proc = subprocess.Popen(
        [DSV4, "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(tmp_path),
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("serving "):
            proc.kill()
            raise AssertionError(f"dsv4 serve did not start: {line}{proc.communicate()[1]}")
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def health(url: str) -> dict:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=10) as resp:
        return json.loads(resp.read())


def example_repo(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(EXAMPLES / name, root)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "initial"]):
        subprocess.run(
            ["git", *args], cwd=root, env=env_for(tmp_path), check=True, capture_output=True
        )
    return root


def agent_fix(tmp_path: Path, repo: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [DSV4, "agent", "fix", str(repo), "--endpoint", url, "--ci", "--json", *args],
        capture_output=True,
        text=True,
        env=env_for(tmp_path),
        stdin=subprocess.DEVNULL,
        timeout=600,
        check=False,
    )


def result_event(proc: subprocess.CompletedProcess) -> dict:
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert events and events[-1]["type"] == "result", proc.stderr[-2000:]
    return events[-1]


def test_serve_without_model_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [DSV4, "serve"],
        capture_output=True,
        text=True,
        env=env_for(tmp_path),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "--model" in proc.stderr


def ci_step(tmp_path: Path, repo: Path, url: str) -> tuple[subprocess.CompletedProcess, Path]:
    """examples/ci/dsv4-ci-step.sh against `url`; (the process, its output folder)."""
    out = tmp_path / "ci-out"
    env = {
        **env_for(tmp_path),
        "DSV4_ENDPOINT": url,
        "DSV4_REPO": str(repo),
        "DSV4_OUT": str(out),
        "PATH": f"{Path(DSV4).parent}{os.pathsep}{os.environ['PATH']}",
    }
    proc = subprocess.run(
        ["bash", str(CI_STEP)],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=600,
        check=False,
    )
    return proc, out


def test_ci_step_needs_an_endpoint(tmp_path: Path) -> None:
    env = {k: v for k, v in env_for(tmp_path).items() if k != "DSV4_ENDPOINT"}
    proc = subprocess.run(
        ["bash", str(CI_STEP)], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert proc.returncode == 2 and "DSV4_ENDPOINT" in proc.stderr


def test_github_workflow_runs_the_contract_and_uploads_artifacts() -> None:
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load((EXAMPLES / "ci" / "github-actions.yml").read_text())
    steps = workflow["jobs"]["dsv4-fix"]["steps"]
    run = next(s for s in steps if s.get("id") == "fix")
    assert "dsv4 agent fix . --ci --json --endpoint" in run["run"]
    assert run["env"]["DSV4_API_KEY"] == "${{ secrets.DSV4_API_KEY }}"
    uploads = [s["with"]["path"] for s in steps if "upload-artifact" in s.get("uses", "")]
    assert any("sessions/" in p for p in uploads) and any("fix.diff" in p for p in uploads)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_ci_step_fixes_example_through_serve_with_replayed_completions(tmp_path: Path) -> None:
    """The recorded fix session, replayed by the server in place of weights: the CI step, the
    agent's OpenAI client, the HTTP server, the DSML <-> tool_calls translation and the
    agent's tools all run for real, and the example's tests pass at the end."""
    repo = example_repo(tmp_path, "python-calc")
    script = EXAMPLES / "python-calc.fix.jsonl"
    with serving(tmp_path, "--replay", str(script), "--thinking") as url:
        proc, out = ci_step(tmp_path, repo, url)
        served = health(url)["requests_served"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "events.ndjson").read_text().splitlines()[-1])
    assert result["type"] == "result" and result["status"] == "fixed"
    assert served == result["steps"] >= 2
    assert "+    return a / b" in (out / "fix.diff").read_text()
    assert list((out / "sessions").glob("*.jsonl"))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_ci_step_passes_the_exit_code_through(tmp_path: Path) -> None:
    repo = example_repo(tmp_path, "python-calc")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc, out = ci_step(tmp_path, repo, f"http://127.0.0.1:{port}/v1")
    result = json.loads((out / "events.ndjson").read_text().splitlines()[-1])
    assert proc.returncode == result["exit_code"] == 4 and result["status"] == "model_error"


@pytest.mark.slow
@pytest.mark.skipif(not GOLDEN.exists(), reason="golden checkpoint missing")
def test_agent_fix_against_serve_with_tiny_checkpoint(tmp_path: Path) -> None:
    """A noise model fixes nothing, but every request is answered and the run ends with a
    documented exit code (1 still failing, 3 step limit), not an endpoint failure (4)."""
    repo = example_repo(tmp_path, "python-calc")
    with serving(tmp_path, "--model", str(GOLDEN), "--max-tokens", "2", "--dtype", "bf16") as url:
        proc = agent_fix(tmp_path, repo, url, "--max-steps", "2", "--no-index")
        status = health(url)
    result = result_event(proc)
    assert proc.returncode in (1, 3), (result, proc.stderr[-2000:])
    assert status["requests_served"] == result["steps"] >= 1
    assert status["prefix_cache"]["prefilled_tokens"] > 0
