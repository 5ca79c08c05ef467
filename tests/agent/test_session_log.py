"""The JSON Lines session log: location, append/read round trip, resume, torn lines."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from dsv4.agent.session_log import (
    SessionLog,
    SessionLogError,
    list_sessions,
    new_session_id,
    sessions_dir,
)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"DSV4_STATE_DIR": str(tmp_path / "state")}


def test_sessions_dir_precedence(tmp_path: Path) -> None:
    assert sessions_dir({"DSV4_STATE_DIR": "/s", "XDG_STATE_HOME": "/x"}) == Path("/s/sessions")
    assert sessions_dir({"XDG_STATE_HOME": "/x"}) == Path("/x/dsv4/sessions")
    assert sessions_dir({}) == Path.home() / ".local/state/dsv4/sessions"


def test_create_append_and_read_back(tmp_path: Path, env: dict[str, str]) -> None:
    log = SessionLog.create(tmp_path, {"model": "scripted:x.jsonl", "max_steps": 5}, env=env)
    assert log.path.parent == tmp_path / "state" / "sessions"
    assert log.path.name == f"{log.id}.jsonl"
    log.append("message", message={"role": "user", "content": "fix the tests ✓"})
    log.append("tool_result", name="read", ok=True, text="x = 1\n")
    log.close()

    records = log.records()
    assert [r["kind"] for r in records] == ["header", "message", "tool_result"]
    assert [r["seq"] for r in records] == [0, 1, 2]
    header = records[0]
    assert (header["id"], header["root"], header["model"], header["max_steps"]) == (
        log.id,
        str(tmp_path.resolve()),
        "scripted:x.jsonl",
        5,
    )
    assert records[1]["message"]["content"] == "fix the tests ✓"
    lines = log.path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records, "one JSON object per line"


def test_folder_is_private(tmp_path: Path, env: dict[str, str]) -> None:
    log = SessionLog.create(tmp_path, {}, env=env)
    assert stat.S_IMODE(os.stat(log.path.parent).st_mode) == 0o700


def test_messages_rebuild_the_conversation(tmp_path: Path, env: dict[str, str]) -> None:
    with SessionLog.create(tmp_path, {}, env=env) as log:
        sent = [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "", "tool_calls": [{"name": "read"}]},
        ]
        for message in sent:
            log.append("message", message=message)
            log.append("event", what="not part of the conversation")
    assert SessionLog.open(log.id, env=env).messages() == sent


def test_open_by_id_prefix_and_path_then_continue(tmp_path: Path, env: dict[str, str]) -> None:
    first = SessionLog.create(tmp_path, {}, env=env)
    first.append("step", n=1)
    first.close()
    by_path = SessionLog.open(first.path, env=env)
    by_prefix = SessionLog.open(first.id[:-2], env=env)
    assert by_path.id == by_prefix.id == first.id
    by_path.append("step", n=2)
    by_path.close()
    assert [r.get("n") for r in first.records()] == [None, 1, 2]
    assert first.records()[-1]["seq"] == 2
    assert list_sessions(env) == [first.path]


def test_open_errors_name_what_was_tried(tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(SessionLogError, match="no session log 'nope'"):
        SessionLog.open("nope", env=env)
    (tmp_path / "state" / "sessions").mkdir(parents=True)
    for suffix in ("aaa", "aab"):
        (tmp_path / "state" / "sessions" / f"2025-{suffix}.jsonl").write_text(
            '{"kind": "header"}\n'
        )
    with pytest.raises(SessionLogError, match="ambiguous"):
        SessionLog.open("2025-aa", env=env)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "header"}\nnot json\n{"kind": "x"}\n')
    with pytest.raises(SessionLogError, match=r"bad.jsonl:2: not a JSON record"):
        SessionLog.open(bad, env=env)
    headless = tmp_path / "headless.jsonl"
    headless.write_text('{"kind": "message"}\n')
    with pytest.raises(SessionLogError, match="no header"):
        SessionLog.open(headless, env=env)


def test_torn_last_line_is_dropped_and_appends_continue(
    tmp_path: Path, env: dict[str, str]
) -> None:
    log = SessionLog.create(tmp_path, {}, env=env)
    log.append("step", n=1)
    log.close()
    with log.path.open("a", encoding="utf-8") as f:
        f.write('{"seq": 2, "kind": "st')  # a crash in the middle of a write
    assert [r["kind"] for r in log.records()] == ["header", "step"]
    resumed = SessionLog.open(log.path, env=env)
    resumed.append("step", n=2)
    resumed.close()
    assert [r.get("n") for r in resumed.records()] == [None, 1, 2]


def test_header_is_written_once(tmp_path: Path, env: dict[str, str]) -> None:
    log = SessionLog.create(tmp_path, {"kind": "ignored", "id": "ignored"}, env=env)
    assert log.header["kind"] == "header" and log.header["id"] == log.id
    with pytest.raises(SessionLogError, match="header"):
        log.append("header")


def test_session_ids_sort_by_time_and_differ() -> None:
    a, b = new_session_id(1_000_000_000), new_session_id(2_000_000_000)
    assert a < b
    assert new_session_id(5.0) != new_session_id(5.0)
