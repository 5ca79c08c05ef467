"""Permission policy for tool calls: which commands may run and which paths may be touched.

Pure decisions (no subprocess, no prompting). The only file-system access is resolving a
path's symlinks in `Policy.check_path`, because a link inside the repository may point out
of it and only the resolved target tells.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

Action = Literal["allow", "ask", "deny"]
Mode = Literal["read-only", "workspace-write"]
AskAnswer = Literal["prompt", "yes", "no"]

# Commands that only read, or run a project's tests. Everything else asks first.
DEFAULT_ALLOW_COMMANDS: tuple[str, ...] = (
    "pytest",
    "pytest *",
    "python -m pytest*",
    "python3 -m pytest*",
    "python -m unittest*",
    "python3 -m unittest*",
    "python -c *",
    "python3 -c *",
    "tox",
    "tox *",
    "nox*",
    "make test*",
    "make check*",
    "npm test*",
    "npm run test*",
    "yarn test*",
    "cargo test*",
    "go test*",
    "go vet*",
    "ruff check*",
    "mypy*",
    "git status*",
    "git diff*",
    "git log*",
    "git show*",
    "git blame*",
    "git ls-files*",
    "git grep*",
    "git rev-parse*",
    "git branch",
    "git branch --list*",
    "ls",
    "ls *",
    "cat *",
    "head *",
    "tail *",
    "wc *",
    "grep *",
    "rg *",
    "find *",
    "tree*",
    "pwd",
    "echo *",
    "which *",
    "file *",
    "stat *",
    "diff *",
    "sort *",
    "uniq *",
)

# Commands never run whatever the other lists say: they touch things outside the workspace
# or destroy history that the undo snapshots cannot bring back.
DEFAULT_DENY_COMMANDS: tuple[str, ...] = (
    "sudo *",
    "su *",
    "rm -rf /*",
    "rm -fr /*",
    "rm -rf ~*",
    "rm -fr ~*",
    "rm -rf .git*",
    "rm -fr .git*",
    "mkfs*",
    "dd *of=/dev/*",
    "shutdown*",
    "reboot*",
    "git push*",
    "git clean*",
    "chmod -R 777 /*",
)

# Constructs that make an otherwise allowed command able to write or run anything: such a
# segment is never allowed automatically (it is asked about instead).
_ESCALATIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\$\(|`"), "command substitution"),
    (re.compile(r"(?<!>)>>?(?![>&])(?!\s*/dev/null\b)"), "output redirection to a file"),
    (
        re.compile(r"\s-(delete|exec|execdir|ok|okdir|fprint\w*)\b"),
        "find action that writes or runs",
    ),
    (re.compile(r"\s--output(=|\s)"), "writes an output file"),
)

# Separators between simple commands in a shell line; each part is judged on its own.
_SEPARATORS = ("&&", "||", ";", "|", "&", "\n")
_RANK: dict[Action, int] = {"allow": 0, "ask": 1, "deny": 2}


@dataclass(frozen=True)
class Decision:
    """The verdict on one command or path, with the reason the model is shown."""

    action: Action
    reason: str

    @property
    def allowed(self) -> bool:
        return self.action == "allow"


@dataclass
class Policy:
    """Allow/ask/deny rules for commands and paths. `deny` beats `allow` beats `ask`.

    Command rules are shell-style globs on the whitespace-normalised command line
    (`"git status*"`). Path rules are globs on the repository-relative POSIX path
    (`"secrets/*"`, `"*.lock"`).
    """

    mode: Mode = "workspace-write"
    """`workspace-write`: reads and writes inside the repository; `read-only`: no writes."""
    allow_commands: list[str] = field(default_factory=lambda: list(DEFAULT_ALLOW_COMMANDS))
    ask_commands: list[str] = field(default_factory=list)
    deny_commands: list[str] = field(default_factory=lambda: list(DEFAULT_DENY_COMMANDS))
    allow_paths: list[str] = field(default_factory=list)
    """Paths always allowed (still only inside the repository, never `.git/` for writes)."""
    ask_paths: list[str] = field(default_factory=list)
    deny_paths: list[str] = field(default_factory=list)
    ask_answer: AskAnswer = "prompt"
    """How an `ask` is settled: `prompt` the user, or answer `yes` (--yes) / `no` for them."""
    non_interactive: bool = False
    """Never prompt (--ci): an `ask` not answered by `ask_answer` becomes a denial."""

    def decide_command(self, command: str) -> Decision:
        """The verdict for a shell command line; the strictest of its parts wins."""
        parts = [p.strip() for p in split_command(command) if p.strip()]
        if not parts:
            return Decision("deny", "empty command")
        whole = self._decide_segment(_normalise(command))
        if whole.action == "deny":
            return whole
        verdicts = [self._decide_segment(_normalise(p)) for p in parts]
        return max(verdicts, key=lambda d: _RANK[d.action])

    def check_path(self, root: Path, path: str | Path, write: bool) -> Decision:
        """The verdict for reading or writing `path` (relative to `root`, or absolute)."""
        rel = repo_relative(root, path)
        if rel is None:
            return Decision("deny", f"{path} is outside the repository")
        return self.decide_path(rel, write)

    def decide_path(self, rel: str, write: bool) -> Decision:
        """The verdict for a repository-relative POSIX path (already known to be inside)."""
        verb = "writing" if write else "reading"
        if write and ".git" in rel.split("/"):
            return Decision("deny", f"{verb} {rel}: .git/ is never writable by tools")
        if _matches(rel, self.deny_paths):
            return Decision("deny", f"{verb} {rel} is denied by the path rules")
        if _matches(rel, self.allow_paths):
            return Decision("allow", f"{verb} {rel} is allowed by the path rules")
        if write and self.mode == "read-only":
            return Decision("deny", f"{verb} {rel}: the policy is read-only")
        if _matches(rel, self.ask_paths):
            return Decision("ask", f"{verb} {rel} needs confirmation")
        return Decision("allow", f"{verb} {rel} inside the repository")

    def settle(self, decision: Decision, can_prompt: bool) -> Decision | None:
        """Turn an `ask` into allow/deny where no prompt is needed; None means prompt."""
        if decision.action != "ask":
            return decision
        if self.ask_answer == "yes":
            return Decision("allow", f"{decision.reason} (approved by --yes)")
        if self.ask_answer == "no" or self.non_interactive or not can_prompt:
            return Decision("deny", f"{decision.reason}; not approved (non-interactive)")
        return None

    def _decide_segment(self, segment: str) -> Decision:
        if _matches(segment, self.deny_commands):
            return Decision("deny", f"`{segment}` is on the deny list")
        escalation = _escalation(segment)
        if _matches(segment, self.allow_commands) and escalation is None:
            return Decision("allow", f"`{segment}` is on the allow list")
        why = f" ({escalation})" if escalation else ""
        return Decision("ask", f"`{segment}` needs confirmation{why}")


def repo_relative(root: Path, path: str | Path) -> str | None:
    """`path` as a POSIX path relative to `root` after resolving symlinks; None if outside."""
    root = Path(root).resolve()
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = root / candidate
    resolved = candidate.resolve()
    try:
        rel = resolved.relative_to(root)
    except ValueError:
        return None
    return rel.as_posix()


def split_command(command: str) -> list[str]:
    """Split a shell line at `&&`, `||`, `;`, `|`, `&` and newlines outside quotes."""
    parts, current, quote, i = [], [], "", 0
    while i < len(command):
        ch = command[i]
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "\\":  # an escaped character never separates
            current.append(command[i : i + 2])
            i += 2
            continue
        else:
            sep = next((s for s in _SEPARATORS if command.startswith(s, i)), None)
            if sep and not _is_redirect_ampersand(command, i):
                parts.append("".join(current))
                current, i = [], i + len(sep)
                continue
        current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _is_redirect_ampersand(command: str, i: int) -> bool:
    """`2>&1` and `&>file` use `&` as part of a redirection, not as a separator."""
    return command[i] == "&" and (command[i - 1 : i] == ">" or command[i + 1 : i + 2] == ">")


def _normalise(command: str) -> str:
    """Collapse whitespace so `git   status` matches `git status*`."""
    return " ".join(command.split())


def _matches(text: str, patterns: list[str]) -> bool:
    return any(fnmatchcase(text, p) for p in patterns)


def _escalation(segment: str) -> str | None:
    for pattern, why in _ESCALATIONS:
        if pattern.search(segment):
            return why
    return None
