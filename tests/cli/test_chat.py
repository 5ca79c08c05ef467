"""`dsv4 chat` driven in a real pseudo-terminal: it answers, shows a diff, and /undo reverts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dsv4.engine.dsml import ToolCall, render_tool_calls

pexpect = pytest.importorskip("pexpect")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DSV4 = str(Path(sys.executable).with_name("dsv4"))
EOS = "<｜end▁of▁sentence｜>"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}


def repo(tmp_path: Path) -> Path:
    root = tmp_path / "calc"
    shutil.copytree(EXAMPLES / "python-calc", root)
    env = {**os.environ, **GIT_ENV}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "initial"]):
        subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True)
    return root


def script(tmp_path: Path) -> Path:
    edit = ToolCall(
        "edit",
        {
            "file_path": "calc.py",
            "old_string": "    return a // b\n",
            "new_string": "    return a / b\n",
        },
    )
    turns = [
        f"Floor division is the bug.</think>\n\n{render_tool_calls([edit])}{EOS}",
        f"Done.</think>DIVIDE-NOW-USES-TRUE-DIVISION{EOS}",
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"completion": t}) + "\n" for t in turns))
    return path


@pytest.mark.slow
def test_chat_answers_shows_a_diff_and_undo_reverts(tmp_path: Path) -> None:
    root = repo(tmp_path)
    original = (root / "calc.py").read_text()
    env = {
        **os.environ,
        "DSV4_STATE_DIR": str(tmp_path / "state"),
        "TERM": "xterm",
        "NO_COLOR": "1",
        "COLUMNS": "120",
        "LINES": "40",
    }
    child = pexpect.spawn(
        DSV4,
        ["chat", str(root), "--script", str(script(tmp_path))],
        env=env,
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 120),
    )
    try:
        child.expect("›")
        child.sendline("please fix divide")
        child.expect("DIVIDE-NOW-USES-TRUE-DIVISION")
        child.expect("›")
        assert "return a / b" in (root / "calc.py").read_text()
        child.sendline("/diff")
        child.expect(r"\+    return a / b")
        child.expect("›")
        child.sendline("/undo")
        child.expect("undone")
        child.expect("›")
        assert (root / "calc.py").read_text() == original
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    # The conversation was logged: header, then every message sent to or from the model.
    (log,) = (tmp_path / "state").rglob("*.jsonl")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[0]["kind"] == "header" and records[0]["command"] == "chat"
    roles = [r["message"]["role"] for r in records if r["kind"] == "message"]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
