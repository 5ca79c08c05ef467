"""The permission policy: paths, commands, precedence and non-interactive runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dsv4.tools.base import ToolContext, default_tools, run_tool
from dsv4.tools.policy import Policy, split_command


@pytest.mark.parametrize("path", ["../x.txt", "a/../../x.txt", "/etc/passwd"])
def test_paths_outside_the_repository_are_denied(repo: Path, path: str):
    for write in (False, True):
        assert Policy().check_path(repo, path, write).action == "deny"


def test_absolute_path_inside_is_allowed(repo: Path):
    assert Policy().check_path(repo, str(repo / "src/x.py"), write=True).allowed


def test_symlink_out_of_the_repository_is_denied(repo: Path, tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, repo / "link")
    decision = Policy().check_path(repo, "link/file.txt", write=True)
    assert decision.action == "deny" and "outside" in decision.reason


def test_symlink_into_git_is_protected(repo: Path):
    (repo / ".git").mkdir()
    os.symlink(repo / ".git", repo / "innocent")
    assert Policy().check_path(repo, "innocent/config", write=True).action == "deny"


def test_git_dir_is_readable_but_never_writable(repo: Path):
    policy = Policy(allow_paths=["**", ".git/*"])
    assert policy.check_path(repo, ".git/HEAD", write=False).allowed
    assert policy.check_path(repo, ".git/HEAD", write=True).action == "deny"
    assert policy.check_path(repo, "sub/.git/config", write=True).action == "deny"


def test_deny_beats_allow_beats_ask():
    policy = Policy(allow_commands=["make*"], ask_commands=["make*"], deny_commands=["make clean*"])
    assert policy.decide_command("make build").action == "allow"
    assert policy.decide_command("make clean all").action == "deny"
    paths = Policy(allow_paths=["docs/*"], ask_paths=["docs/*"], deny_paths=["docs/secret*"])
    assert paths.decide_path("docs/a.md", write=True).action == "allow"
    assert paths.decide_path("docs/secret.md", write=True).action == "deny"


def test_default_allow_list_and_unknown_commands():
    policy = Policy()
    for allowed in ("pytest -q", "python -m pytest tests", "git status", "git diff HEAD", "ls -la"):
        assert policy.decide_command(allowed).allowed, allowed
    for asked in ("pip install x", "rm -rf build", "curl http://example.com", "git commit -m x"):
        assert policy.decide_command(asked).action == "ask", asked
    for denied in ("sudo rm x", "rm -rf /", "git push origin main"):
        assert policy.decide_command(denied).action == "deny", denied


def test_every_part_of_a_compound_command_is_judged():
    policy = Policy()
    assert policy.decide_command("ls && rm -rf /").action == "deny"
    assert policy.decide_command("git status; curl x").action == "ask"
    assert policy.decide_command("pytest -q 2>&1 | tail -5").allowed
    assert policy.decide_command('python -c "import a; print(1)"').allowed


def test_allowed_command_that_writes_is_asked():
    policy = Policy()
    assert policy.decide_command("cat a > b").action == "ask"
    assert policy.decide_command("echo $(whoami)").action == "ask"
    assert policy.decide_command("find . -name '*.pyc' -delete").action == "ask"
    assert policy.decide_command("ls > /dev/null").allowed


def test_split_command_respects_quotes():
    assert split_command("a 'x;y' && b \"p|q\"") == ["a 'x;y' ", ' b "p|q"']


def test_non_interactive_never_prompts(repo: Path):
    def ask(question: str) -> bool:
        raise AssertionError(f"prompted in a non-interactive run: {question}")

    ctx = ToolContext(root=repo, policy=Policy(non_interactive=True), ask=ask)
    result = run_tool(default_tools(), "bash", {"command": "touch made-by-ask"}, ctx)
    assert not result.ok and result.data["denied"]
    assert not (repo / "made-by-ask").exists()


def test_ask_callback_decides_when_interactive(repo: Path):
    questions: list[str] = []

    def ask(question: str) -> bool:
        questions.append(question)
        return len(questions) == 1  # approve the first, decline the second

    ctx = ToolContext(root=repo, ask=ask)
    assert run_tool(default_tools(), "bash", {"command": "touch one"}, ctx).ok
    declined = run_tool(default_tools(), "bash", {"command": "touch two"}, ctx)
    assert not declined.ok and "declined" in declined.text
    assert (repo / "one").exists() and not (repo / "two").exists()
    assert questions == ["Run `touch one`?", "Run `touch two`?"]


def test_ask_answer_yes_and_no(repo: Path):
    yes = ToolContext(root=repo, policy=Policy(ask_answer="yes", non_interactive=True))
    assert run_tool(default_tools(), "bash", {"command": "touch yes"}, yes).ok
    no = ToolContext(root=repo, policy=Policy(ask_answer="no"), ask=lambda q: True)
    assert not run_tool(default_tools(), "bash", {"command": "touch no"}, no).ok
    denied = ToolContext(root=repo, policy=Policy(ask_answer="yes"))
    assert not run_tool(default_tools(), "bash", {"command": "sudo true"}, denied).ok
