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


def test_the_child_stops_where_it_is_told(tmp_path: Path) -> None:
    tables = token_counter.table_file(default_tokenizer_file(), tmp_path)
    texts = [text for _, text in _FILES]
    job = background.BackgroundAnalysis(tables)
    assert job.stop_at(2)
    job.count(texts[:3])
    job.count(texts[3:])
    got = job.result()
    assert got.counts == get_tokenizer().count_batch(texts[:2])
    assert job.counted() == 2


def test_the_child_reports_how_far_it_has_counted(tmp_path: Path) -> None:
    tables = token_counter.table_file(default_tokenizer_file(), tmp_path)
    job = background.BackgroundAnalysis(tables)
    assert job.counted() == 0
    job.count([text for _, text in _FILES])
    assert len(job.result().counts) == job.counted() == len(_FILES)


def _counting_here(calls: list[list[str]]):
    def count(texts: list[str]) -> list[int]:
        calls.append(list(texts))
        return get_tokenizer().count_batch(texts) if texts else []

    return count


@pytest.mark.parametrize("child_stops_at", [None, 1])
def test_the_parent_counts_the_tail_and_any_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, child_stops_at: int | None
) -> None:
    """The parent takes over from item 3 (of texts, frame and outlines); the counts are
    exact and in order whether the child stops there or (it cannot, but nothing relies on
    that) earlier; only the child's counts are reported as encoded in the background."""
    tables = token_counter.table_file(default_tokenizer_file(), tmp_path)
    texts = [text for _, text in _FILES[:3]]
    frame = ["<repository name=x>\n", "</repository>\n"]
    monkeypatch.setattr(background, "parent_tail", lambda sizes, done, ready: 3)
    if child_stops_at is not None:
        real = background.BackgroundAnalysis.stop_at
        monkeypatch.setattr(
            background.BackgroundAnalysis, "stop_at", lambda job, i: real(job, child_stops_at)
        )
    calls: list[list[str]] = []
    count_here = _counting_here(calls)
    job = background.BackgroundAnalysis(tables)
    job.count(texts)  # in the indexer's order: texts, frame, then outlines as they come
    job.count(frame)
    pending = background.Pending(
        texts, [], job=job, frame=frame, fallback=count_here, rest=count_here
    )
    pending.outline_done("pkg/a.py", "    1| class A:\n")
    done = pending.finish()
    strings = texts + frame + [background.packer.outline_chunk("pkg/a.py", "    1| class A:\n")]
    expected = get_tokenizer().count_batch(strings)
    assert done.counts == expected[:3]
    assert done.frame_counts == dict(zip(frame, expected[3:5], strict=True))
    assert done.outline_counts == {"pkg/a.py": expected[5]}
    stop = 3 if child_stops_at is None else child_stops_at
    assert calls[0] == strings[3:]  # the tail, while the child counts the rest
    assert [s for call in calls[1:] for s in call] == strings[stop:3]
    assert done.tokens_encoded == sum(expected[:stop])


def test_the_parent_takes_the_tail_only_when_that_ends_sooner() -> None:
    chars = [200_000] * 10
    assert background.parent_tail(chars, done=10, parent_ready=True) == 10  # nothing left
    assert background.parent_tail(chars, done=9, parent_ready=True) == 10  # one item: no gain
    start = background.parent_tail(chars, done=0, parent_ready=True)
    assert 5 < start < 10  # the parent counts more slowly: less than half
    left = (start - 0) * 200_000 * background.COUNT_S_PER_CHAR
    own = (10 - start) * 200_000 * background.COUNT_S_PER_CHAR * background.PARENT_COUNT_SLOWDOWN
    step = 200_000 * background.COUNT_S_PER_CHAR * background.PARENT_COUNT_SLOWDOWN
    assert abs(left - own) <= step  # neither could give the other one more and finish sooner
    # The tables to read first make the parent take less.
    assert background.parent_tail(chars, done=0, parent_ready=False) >= start
    assert background.parent_tail([10_000] * 10, done=0, parent_ready=False) == 10
