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
    """A parent that parses nothing leaves every file to the child."""
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
    assert got.tags == {i: tags.extract(path, text) for i, (path, text) in enumerate(_FILES)}
    assert any(t.definitions for t in got.tags.values())
    assert any(t.references for t in got.tags.values())
    for i, (path, text) in enumerate(_FILES):
        outline = tags.outline(tags.extract(path, text))
        chunk = background.packer.outline_chunk(path, outline)
        assert got.outline_counts[i] == (get_tokenizer().count(chunk) if outline else 0)


def test_parsing_alone_needs_no_tables() -> None:
    job = background.BackgroundAnalysis(None)
    job.parse(_FILES[:2])
    got = job.result()
    assert got.counts == [] and got.tags == {i: tags.extract(*f) for i, f in enumerate(_FILES[:2])}
    assert got.outline_counts == {0: None, 1: None}


def test_the_child_parses_only_what_the_parent_has_not_claimed() -> None:
    job = background.BackgroundAnalysis(None)
    assert job.claim(0) and job.claim(1) and job.claim(2)  # nothing claimed by the child yet
    job.parse(_FILES)
    got = job.result()
    assert sorted(got.tags) == [3, 4]  # from the last one back, down to the parent's claims
    assert not job.claim(3)  # the child has it, and every file after it


def test_the_child_parses_nothing_the_parent_claimed_first() -> None:
    job = background.BackgroundAnalysis(None)
    for i in range(len(_FILES)):
        assert job.claim(i)
    job.parse(_FILES)
    assert job.result().tags == {}


def test_a_failed_child_is_reported_with_its_error(tmp_path: Path) -> None:
    job = background.BackgroundAnalysis(tmp_path / "missing.marshal")
    job.count(["x = 1\n"])
    with pytest.raises(background.BackgroundError, match="(?s)exited 1.*missing.marshal"):
        job.result()


def test_a_child_given_no_work_returns_nothing() -> None:
    got = background.BackgroundAnalysis(None).result()
    assert got.counts == [] and got.tags == {}


def test_tags_survive_the_plain_round_trip() -> None:
    for path, text in _FILES:
        file_tags = tags.extract(path, text)
        assert tags.FileTags.from_plain(file_tags.to_plain()) == file_tags


def test_a_child_is_started_only_for_work_that_outweighs_its_start() -> None:
    assert not background.worth_starting(parse_chars=10_000, count_chars=0)
    assert background.worth_starting(parse_chars=5_000_000, count_chars=0)
    assert background.worth_starting(parse_chars=0, count_chars=5_000_000)


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


class _RacingChild:
    """A stand-in for the background process: it has counted `done` texts when first asked
    and counts one more each time it is asked again (as a child running alongside would),
    never past where it is told to stop."""

    def __init__(self, done: int, fail: bool = False) -> None:
        self.sent: list[str] = []
        self.done, self.stop, self.fail = done, 1 << 62, fail

    def count(self, texts: list[str]) -> None:
        self.sent += texts

    def counted(self) -> int:
        reached = self.done
        self.done = min(self.done + 1, len(self.sent), max(self.stop, self.done))
        return reached

    def stop_at(self, index: int) -> bool:
        self.stop = index
        return True

    def result(self) -> background.Analysis:
        if self.fail:
            raise background.BackgroundError("exited 1")
        while self.done < min(self.stop, len(self.sent)):
            self.done += 1
        return background.Analysis(get_tokenizer().count_batch(self.sent[: self.done]), {}, {})


_TEXTS = [text for _, text in _FILES]
_FRAME = ["<repository name=x>\n", "</repository>\n"]
_OUTLINE = "    1| class A:\n"


def _pending(job, calls: list[list[str]], parent_ready: bool = True) -> background.Pending:
    job.count(_TEXTS)  # in the indexer's order: texts, frame, then outlines as they come
    job.count(_FRAME)
    here = _counting_here(calls)
    pending = background.Pending(
        _TEXTS, [], job=job, frame=_FRAME, fallback=here, rest=here, parent_ready=parent_ready
    )
    pending.outline_done("pkg/a.py", _OUTLINE)
    return pending


def _all_strings() -> list[str]:
    return _TEXTS + _FRAME + [background.packer.outline_chunk("pkg/a.py", _OUTLINE)]


@pytest.mark.parametrize("done", [0, 3, 6, 8])
def test_the_parent_counts_back_from_the_last_text_until_the_child_reaches_it(
    done: int,
) -> None:
    """The counts are exact and in order wherever the two meet; the parent counts only
    what the child had not reached, last first, and reports only the child's counts as
    counted in the background."""
    calls: list[list[str]] = []
    job = _RacingChild(done)
    got = _pending(job, calls).finish()
    strings = _all_strings()
    expected = get_tokenizer().count_batch(strings)
    assert got.counts == expected[: len(_TEXTS)]
    assert got.frame_counts == dict(zip(_FRAME, expected[5:7], strict=True))
    assert got.outline_counts == {"pkg/a.py": expected[7]}
    here = [s for call in calls for s in call]
    met = len(strings) - len(here)
    assert here == strings[met:][::-1]  # one at a time, from the last
    assert done <= met  # never what the child had counted before the parent began
    assert got.tokens_encoded == sum(expected[:met])


def test_the_parent_reads_no_tables_for_a_child_about_to_finish() -> None:
    calls: list[list[str]] = []
    got = _pending(_RacingChild(len(_all_strings()) - 1), calls, parent_ready=False).finish()
    assert not any(calls)  # nothing counted here
    assert len(got.counts) == len(_TEXTS)


def test_a_failed_child_is_redone_here_after_a_take_over() -> None:
    calls: list[list[str]] = []
    got = _pending(_RacingChild(2, fail=True), calls).finish()
    assert got.counts == get_tokenizer().count_batch(_TEXTS) and got.tokens_encoded == 0


def test_a_real_child_and_the_parent_together_count_exactly(tmp_path: Path) -> None:
    tables = token_counter.table_file(default_tokenizer_file(), tmp_path)
    texts = [f"def f{i}(x):\n    return x * {i} + g(x)\n" * (1 + i % 40) for i in range(300)]
    calls: list[list[str]] = []
    job = background.BackgroundAnalysis(tables)
    job.count(texts)
    here = _counting_here(calls)
    got = background.Pending(texts, [], job=job, fallback=here, rest=here).finish()
    assert got.counts == get_tokenizer().count_batch(texts)
    taken = sum(len(call) for call in calls)
    assert got.tokens_encoded == sum(got.counts[: len(texts) - taken])


def test_taking_over_pays_once_the_tables_are_read_or_the_child_has_much_left() -> None:
    assert background.worth_taking_over(1, parent_ready=True)
    assert not background.worth_taking_over(10_000, parent_ready=False)
    assert background.worth_taking_over(10_000_000, parent_ready=False)


def test_a_truncated_message_fails_the_child_with_its_error() -> None:
    import marshal
    import subprocess
    import sys

    data = marshal.dumps(("parse", _FILES[:1]))
    stream = len(data).to_bytes(8, "little") + data[: len(data) // 2]  # cut short
    proc = subprocess.run(
        [sys.executable, "-m", "dsv4.agent.background", "-", "-1"],
        input=stream,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert b"EOFError" in proc.stderr or b"ValueError" in proc.stderr


def test_parent_and_child_parsing_at_once_cover_every_file() -> None:
    """Both sides claim at full speed: the parent from the first file on, the child from
    the last one back. Together they cover every file, overlapping on one at most, and a
    file neither took can only be the one where they met."""
    import time

    files = [(f"pkg/m{i}.py", f"def f{i}(x):\n    return g{i}(x)\n" * 40) for i in range(60)]
    for _ in range(3):  # the meeting point differs from run to run
        job = background.BackgroundAnalysis(None)
        job.parse(files)
        here = 0
        while here < len(files) and job.claim(here):
            tags.extract(*files[here])
            time.sleep(0.002)  # slower than the child: it takes a good share
            here += 1
        got = job.result()
        theirs = sorted(got.tags)
        if theirs:
            assert theirs == list(range(theirs[0], len(files)))  # from the last one back
        else:
            assert here == len(files)
        assert all(got.tags[i] == tags.extract(*files[i]) for i in theirs)
        missing = set(range(len(files))) - set(range(here)) - set(theirs)
        assert len(missing) <= 1 and missing <= {here}
        assert not theirs or theirs[0] >= here - 1  # overlap: the meeting file at most


def test_only_the_last_files_up_to_the_share_cap_are_offered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A large tree's first files never reach the child (memory): it parses only among the
    last ones, by their index in the whole list, and the parent parses the others."""
    sizes = [len(text) for _, text in _FILES]
    monkeypatch.setattr(background, "SHARE_CHARS", sizes[-1] + sizes[-2])
    job = background.BackgroundAnalysis(None)
    job.parse(_FILES)
    got = job.result()
    assert got.tags == {3: tags.extract(*_FILES[3]), 4: tags.extract(*_FILES[4])}
    assert job.claim(2) and not job.claim(3)
