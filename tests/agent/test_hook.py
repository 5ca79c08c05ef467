"""The pre-commit hook on real temporary git repositories."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsv4.agent import hook

# A check that passes only when the file holds "good": tells which version the check saw.
CHECK = f"{sys.executable} -c \"import sys; sys.exit(open('value.txt').read().strip() != 'good')\""


def _git(root: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
    return out.stdout


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q", "-b", "main")
    _git(root, "config", "user.name", "Test")
    _git(root, "config", "user.email", "test@example.com")
    (root / "value.txt").write_text("good\n")
    (root / "other.txt").write_text("one\n")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "init")
    return root


def _run(root: Path, **cfg) -> hook.HookOutcome:
    return hook.run_hook(
        root, hook.HookConfig(checks=[CHECK], **cfg), fixer=None, confirm=None, report=print
    )


def test_checks_the_staged_version_and_restores_unstaged_work(repo: Path) -> None:
    (repo / "other.txt").write_text("two\n")
    _git(repo, "add", "other.txt")  # a staged change; value.txt stays "good" in the index
    (repo / "value.txt").write_bytes(b"bad unstaged\r\nno newline")  # would fail the check
    (repo / "other.txt").unlink()  # an unstaged deletion of a staged file
    (repo / "untracked.txt").write_text("left alone\n")
    index_before = _git(repo, "diff", "--cached", "--binary")
    outcome = _run(repo)
    assert outcome.exit_code == 0, outcome.message
    assert (repo / "value.txt").read_bytes() == b"bad unstaged\r\nno newline"
    assert not (repo / "other.txt").exists()
    assert (repo / "untracked.txt").read_text() == "left alone\n"
    assert _git(repo, "diff", "--cached", "--binary") == index_before


def test_failing_staged_state_blocks_and_restores(repo: Path) -> None:
    (repo / "value.txt").write_text("bad\n")
    _git(repo, "add", "value.txt")
    (repo / "value.txt").write_text("good\n")  # the fix exists only unstaged: not committed
    outcome = _run(repo)
    assert outcome.exit_code == 1
    assert "blocked" in outcome.message
    assert (repo / "value.txt").read_text() == "good\n"
    assert _git(repo, "show", ":value.txt") == "bad\n"
    assert not list((repo / ".git" / "dsv4" / "hook").glob("*.patch"))


def test_time_budget_is_enforced(repo: Path) -> None:
    start = time.monotonic()
    outcome = hook.run_hook(
        repo, hook.HookConfig(checks=["sleep 20"], budget_s=1.0), fixer=None, confirm=None,
        report=lambda m: None,
    )  # fmt: skip
    assert outcome.exit_code == 1
    assert "time budget" in outcome.message
    assert time.monotonic() - start < 10


def test_no_recursion_inside_a_dsv4_run(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hook.ACTIVE_ENV, "1")
    (repo / "value.txt").write_text("bad\n")
    _git(repo, "add", "value.txt")
    assert _run(repo).exit_code == 0


def test_fixer_changes_are_restaged_only_when_confirmed(repo: Path) -> None:
    (repo / "value.txt").write_text("bad\n")
    _git(repo, "add", "value.txt")
    (repo / "other.txt").write_text("unstaged edit\n")

    def fixer(root: Path, timeout_s: float, command: str) -> int:
        assert (root / "other.txt").read_text() == "one\n"  # sees the staged snapshot
        (root / "value.txt").write_text("good\n")
        return 0

    cfg = hook.HookConfig(checks=[CHECK])
    declined = hook.run_hook(repo, cfg, fixer=fixer, confirm=lambda diff: False, report=print)
    assert declined.exit_code == 1
    assert _git(repo, "show", ":value.txt") == "bad\n"
    assert (repo / "value.txt").read_text() == "bad\n"

    seen: list[str] = []
    accepted = hook.run_hook(
        repo, cfg, fixer=fixer, confirm=lambda diff: seen.append(diff) or True, report=print
    )
    assert accepted.exit_code == 0, accepted.message
    assert accepted.restaged == ["value.txt"]
    assert "+good" in seen[0]
    assert _git(repo, "show", ":value.txt") == "good\n"
    assert (repo / "other.txt").read_text() == "unstaged edit\n"


def test_non_interactive_ask_does_not_stage(repo: Path) -> None:
    (repo / "value.txt").write_text("bad\n")
    _git(repo, "add", "value.txt")

    def fixer(root: Path, timeout_s: float, command: str) -> int:
        (root / "value.txt").write_text("good\n")
        return 0

    outcome = hook.run_hook(
        repo, hook.HookConfig(checks=[CHECK]), fixer=fixer, confirm=None, report=print
    )
    assert outcome.exit_code == 1
    assert _git(repo, "show", ":value.txt") == "bad\n"


def _hooks(repo: Path) -> Path:
    return repo / ".git" / "hooks"


def test_install_chains_and_uninstall_restores_existing_hook(repo: Path) -> None:
    existing = _hooks(repo) / "pre-commit"
    existing.write_text("#!/bin/sh\necho chained-ran >> chained.log\nexit 0\n")
    existing.chmod(0o755)
    note = hook.install(repo, [sys.executable, "-c", "from dsv4.cli.app import main; main()"])
    assert "runs first" in note
    assert hook.HOOK_MARKER in existing.read_text()
    assert (_hooks(repo) / hook.CHAINED_NAME).read_text().startswith("#!/bin/sh\necho chained")
    hook.uninstall(repo)
    assert existing.read_text() == "#!/bin/sh\necho chained-ran >> chained.log\nexit 0\n"
    assert not (_hooks(repo) / hook.CHAINED_NAME).exists()


def test_uninstall_leaves_a_foreign_hook_alone(repo: Path) -> None:
    foreign = _hooks(repo) / "pre-commit"
    foreign.write_text("#!/bin/sh\nexit 0\n")
    with pytest.raises(hook.HookError, match="not written by dsv4"):
        hook.uninstall(repo)
    assert foreign.read_text() == "#!/bin/sh\nexit 0\n"


def _install_with_check(repo: Path, check: str) -> None:
    (repo / ".dsv4.toml").write_text(f"[hook]\nchecks = [{json.dumps(check)}]\nbudget_s = 60\n")
    _git(repo, "add", ".dsv4.toml")
    _git(repo, "commit", "-qm", "hook config")
    hook.install(repo, [sys.executable, "-c", "from dsv4.cli.app import main; main()"])


def test_installed_hook_blocks_a_failing_commit(repo: Path) -> None:
    _install_with_check(repo, CHECK)
    (repo / "value.txt").write_text("bad\n")
    _git(repo, "add", "value.txt")
    head = _git(repo, "rev-parse", "HEAD")
    env = {k: v for k, v in os.environ.items() if k != hook.ACTIVE_ENV}
    proc = subprocess.run(["git", "commit", "-qm", "bad"], cwd=repo, capture_output=True,
                          text=True, env=env)  # fmt: skip
    assert proc.returncode != 0
    assert "blocked" in proc.stderr
    assert _git(repo, "rev-parse", "HEAD") == head
    (repo / "value.txt").write_text("good\n")
    (repo / "other.txt").write_text("two\n")
    _git(repo, "add", "value.txt", "other.txt")
    proc = subprocess.run(["git", "commit", "-qm", "good"], cwd=repo, capture_output=True,
                          text=True, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_restores_unstaged_work(repo: Path, sig: signal.Signals) -> None:
    (repo / "value.txt").write_text("bad\n")
    _git(repo, "add", "value.txt")
    (repo / "value.txt").write_bytes(b"precious unstaged work\x00\xff\n")
    marker = repo.parent / "started"
    check = f"touch {marker} && sleep 30"
    env = {k: v for k, v in os.environ.items() if k != hook.ACTIVE_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from dsv4.cli.app import main; main()", "hook", "run",
         str(repo), "--check", check],
        cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 90  # a loaded CI machine starts Python slowly
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the check never started"
    assert (repo / "value.txt").read_text() == "bad\n"  # the staged version is checked out
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert (repo / "value.txt").read_bytes() == b"precious unstaged work\x00\xff\n"
    assert _git(repo, "show", ":value.txt") == "bad\n"


def test_config_errors_name_the_file(repo: Path) -> None:
    (repo / ".dsv4.toml").write_text("[hook]\nbudget = 3\n")
    with pytest.raises(hook.HookError, match=r"\.dsv4\.toml.*unknown hook setting"):
        hook.load_hook_config(repo)
    (repo / ".dsv4.toml").write_text("[hook]\nrestage = 'sometimes'\n")
    with pytest.raises(hook.HookError, match="restage"):
        hook.load_hook_config(repo)


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _example_repo(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(EXAMPLES / name, root)
    _git_init(root)
    return root


def _git_init(root: Path) -> None:
    _git(root, "init", "-q", "-b", "main")
    _git(root, "config", "user.name", "Test")
    _git(root, "config", "user.email", "test@example.com")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "init")


def _dsv4(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != hook.ACTIVE_ENV}
    env["DSV4_STATE_DIR"] = str(cwd.parent / "state")
    cmd = [sys.executable, "-c", "from dsv4.cli.app import main; main()", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def test_scripted_agent_fixes_and_restages_through_the_cli(tmp_path: Path) -> None:
    root = _example_repo(tmp_path, "python-calc")
    readme = root / "NOTES.md"
    readme.write_text("a staged change\n")
    _git(root, "add", "NOTES.md")
    (root / "unstaged.txt").write_text("untracked, left alone\n")
    script = EXAMPLES / "python-calc.fix.jsonl"
    test = f"{sys.executable} -m pytest -q -p no:cacheprovider"
    out = _dsv4("hook", "run", str(root), "--check", test, "--script", str(script),
                "--restage", "always", cwd=root)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "re-staged" in out.stderr
    staged = _git(root, "diff", "--cached", "--name-only").split()
    assert "calc.py" in staged and "NOTES.md" in staged
    assert "return a / b" in _git(root, "show", ":calc.py")
    assert (root / "unstaged.txt").read_text() == "untracked, left alone\n"


def test_scripted_agent_that_fails_blocks_and_changes_nothing(tmp_path: Path) -> None:
    root = _example_repo(tmp_path, "python-calc")
    before = (root / "calc.py").read_bytes()
    script = EXAMPLES / "python-calc.nofix.jsonl"
    test = f"{sys.executable} -m pytest -q -p no:cacheprovider"
    out = _dsv4("hook", "run", str(root), "--check", test, "--script", str(script),
                "--restage", "always", cwd=root)  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert "blocked" in out.stderr
    assert (root / "calc.py").read_bytes() == before
    assert _git(root, "status", "--porcelain") == ""


@pytest.mark.slow
def test_pre_commit_framework_runs_the_hook_from_a_clone(tmp_path: Path) -> None:
    """`pre-commit try-repo` with a clone of this repository runs hook id `dsv4`."""
    pre_commit = shutil.which("pre-commit", path=str(Path(sys.executable).parent))
    if pre_commit is None:
        pytest.skip("the pre-commit framework is not installed (test extra)")
    project = Path(__file__).resolve().parents[2]
    hook_repo = tmp_path / "dsv4-hooks"
    hook_repo.mkdir()
    shutil.copy(project / ".pre-commit-hooks.yaml", hook_repo)
    _git_init(hook_repo)  # the framework needs a git repository holding the manifest
    user = tmp_path / "user"
    user.mkdir()
    (user / "pyproject.toml").write_text('[project]\nname = "user"\nversion = "0"\n')
    (user / "tests").mkdir()
    (user / "tests" / "test_ok.py").write_text("def test_ok():\n    assert True\n")
    _git_init(user)
    env = {k: v for k, v in os.environ.items() if k != hook.ACTIVE_ENV}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PRE_COMMIT_HOME"] = str(tmp_path / "pre-commit-home")
    run = [pre_commit, "try-repo", str(hook_repo), "dsv4", "--all-files"]
    ok = subprocess.run(run, cwd=user, capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Passed" in ok.stdout
    (user / "tests" / "test_bad.py").write_text("def test_bad():\n    assert False\n")
    _git(user, "add", "-A")
    bad = subprocess.run(run, cwd=user, capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 1
    assert "commit blocked" in bad.stdout
