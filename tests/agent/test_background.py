"""The background analysis process: counts and tags equal to in-process ones; the split."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsv4.agent import background, tags, token_counter
from dsv4.engine.tokenizer import default_tokenizer_file, get_tokenizer

_FILES = [
    ("pkg/a.py", "class A:\n    def run(self, x):\n        return helper(x)\n"),
    ("src/b.c", "struct S { int x; };\nint f(struct S *s) { return g(s->x); }\n"),
    ("web/c.js", "function main() { return new Widget(render()); }\n"),
    ("README.md", "# Title\n\n## Usage\ntext\n"),
    ("notes.txt", "plain text, no grammar\n"),
]


def test_counts_and_tags_match_the_in_process_ones(tmp_path: Path) -> None:
    tables = token_counter.table_file(default_tokenizer_file(), tmp_path)
    texts = [text for _, text in _FILES] + ["x <|EOT|> y", "café 中文 🎉\n"]
    job = background.BackgroundAnalysis(tables)
    job.count(texts[:3])
    job.count(texts[3:])
    job.parse(_FILES)
    got = job.result()
    expected = get_tokenizer().count_batch(texts)
    assert got.counts[:-2] == expected[:-2]
    assert got.counts[-2] is None  # a control token: declined, never miscounted
    assert got.counts[-1] in (None, expected[-1])
    assert got.tags == [tags.extract(path, text) for path, text in _FILES]
    assert any(t.definitions for t in got.tags) and any(t.references for t in got.tags)


def test_parsing_alone_needs_no_tables() -> None:
    job = background.BackgroundAnalysis(None)
    job.parse(_FILES[:1])
    job.parse(_FILES[1:2])
    got = job.result()
    assert got.counts == [] and got.tags == [tags.extract(p, t) for p, t in _FILES[:2]]


def test_a_failed_child_is_reported_with_its_error(tmp_path: Path) -> None:
    job = background.BackgroundAnalysis(tmp_path / "missing.marshal")
    job.count(["x = 1\n"])
    with pytest.raises(background.BackgroundError, match="(?s)exited 1.*missing.marshal"):
        job.result()


def test_a_child_given_no_work_returns_nothing() -> None:
    got = background.BackgroundAnalysis(None).result()
    assert got.counts == [] and got.tags == []


def test_tags_survive_the_plain_round_trip() -> None:
    for path, text in _FILES:
        file_tags = tags.extract(path, text)
        assert tags.FileTags.from_plain(file_tags.to_plain()) == file_tags


def test_the_share_balances_both_processes() -> None:
    files = [100_000] * 20  # 6e-1 s of parsing
    share = background.child_share(files, count_chars=0)
    parent = (20 - share) * 100_000 * background.PARSE_S_PER_CHAR
    child = background.CHILD_START_S + share * 100_000 * background.PARSE_S_PER_CHAR
    # Neither side could give the other one more file and finish sooner.
    step = 100_000 * background.PARSE_S_PER_CHAR
    assert abs(parent - child) <= step
    assert max(parent, child) < 20 * step


def test_a_child_started_earlier_takes_more() -> None:
    files = [100_000] * 20
    assert background.child_share(files, 0, started_s=1.0) > background.child_share(files, 0)


def test_no_share_when_counting_alone_fills_the_child() -> None:
    assert background.child_share([50_000] * 10, count_chars=10_000_000) == 0
    assert background.child_share([1_000] * 3, count_chars=0) == 0  # start-up outweighs it
    assert background.child_share([0] * 10, count_chars=0) == 0  # nothing to parse
