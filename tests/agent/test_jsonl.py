"""JSON Lines reading: line numbers, blank lines, torn tails, and errors naming the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsv4.agent.jsonl import read_jsonl


class _CallerError(ValueError):
    pass


def test_values_come_with_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n  \n["x\u2028y"]\n', encoding="utf-8")
    assert read_jsonl(path, "log", _CallerError) == [(1, {"a": 1}), (4, ["x\u2028y"])]


def test_a_bad_line_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n{oops\n{"b": 2}\n')
    with pytest.raises(_CallerError, match=r"a\.jsonl:2: not a JSON record"):
        read_jsonl(path, "log", _CallerError)


def test_a_torn_last_line_is_dropped_only_when_allowed(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n{"b": ')
    assert read_jsonl(path, "log", _CallerError, torn_tail_ok=True) == [(1, {"a": 1})]
    with pytest.raises(_CallerError, match=r"a\.jsonl:2:"):
        read_jsonl(path, "log", _CallerError)


def test_unreadable_files_name_the_kind_of_file(tmp_path: Path) -> None:
    with pytest.raises(_CallerError, match=r"cannot read script .*missing\.jsonl"):
        read_jsonl(tmp_path / "missing.jsonl", "script", _CallerError)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"a": "\xe9"}\n')
    with pytest.raises(_CallerError, match=r"script .*latin\.jsonl is not UTF-8"):
        read_jsonl(latin, "script", _CallerError)
