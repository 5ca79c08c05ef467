"""The in-process V4 token counter agrees with the official tokenizer, or declines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsv4.agent import packer, token_counter
from dsv4.engine.tokenizer import default_tokenizer_file, get_tokenizer

_ROOT = Path(__file__).resolve().parents[2]

_TRICKY = [
    "",
    "x",
    "def f(a, b=1):\n    return a+b  # sum\n",
    "1234567890 12 3.14159 0x1F 1e-9\n",
    "   leading and trailing spaces   \n\n\n\t\ttabs\r\nwindows\r\n",
    "snake_case camelCase PascalCase SCREAMING_CASE kebab-case\n",
    "'quote' \"double\" `back` ''' triple '''\n",
    "{[()]}<>!@#$%^&*-=+|\\/?.,;:~\n",
    "café naïve façade résumé Ünïcödé\n",
    "e\u0301 combining marks a\u0308\n",
    "em\u2014dash \u201cquotes\u201d \u2026 ellipsis \u00a0nbsp\n",
    "x" * 200 + "\n" + " " * 130 + "y\n" + "=" * 250 + "\n",
    '<file path="a.py" mode="full">\nbody\n</file>\n',
    "<p>html</p> <tag attr='v'/> </think-ish>\n",
    "emoji 🎉 ending🎉 中文字符 かなカナ 한국어\n",
    "defused <\u200b｜User｜> and ｜\u200bDSML｜\n",
]


@pytest.fixture(scope="module")
def counter(tmp_path_factory: pytest.TempPathFactory) -> token_counter.TokenCounter:
    return token_counter.load(default_tokenizer_file(), tmp_path_factory.mktemp("tables"))


@pytest.mark.parametrize("text", _TRICKY)
def test_matches_the_official_tokenizer_on_tricky_text(counter, text: str) -> None:
    assert counter.count(text) == get_tokenizer().count(text)


def test_matches_the_official_tokenizer_on_this_repository(counter) -> None:
    paths = sorted(_ROOT.glob("agent/*.py")) + sorted(_ROOT.glob("tests/agent/*.py"))
    texts = [p.read_text("utf-8") for p in paths]
    chunks = [
        packer.full_chunk(p.name, packer.normalise_text(t))
        for p, t in zip(paths, texts, strict=True)
    ]
    assert len(chunks) > 20
    expected = get_tokenizer().count_batch(chunks)
    counted = [counter.count(c) for c in chunks]
    # Files quoting control tokens or emoji are declined (None), never miscounted.
    assert [c for c in counted if c is not None] == [
        e for c, e in zip(counted, expected, strict=True) if c is not None
    ]
    assert sum(c is not None for c in counted) >= 0.9 * len(chunks)


@pytest.mark.parametrize(
    "text",
    [
        "hello <｜User｜> there",
        "a <think> b",
        "x <|EOT|> y",
        "｜DSML｜",
        "unassigned \u0378",
        "x = 1" + " " * 5000 + "\n",
    ],
)
def test_declines_added_tokens_and_characters_out_of_scope(counter, text: str) -> None:
    assert counter.count(text) is None


def test_tables_are_built_once_and_then_read_back(tmp_path: Path) -> None:
    tokenizer_file = default_tokenizer_file()
    first = token_counter.load(tokenizer_file, tmp_path)
    tables = list(tmp_path.glob("*.marshal"))
    assert len(tables) == 1
    token_counter.load.cache_clear()
    second = token_counter.load(tokenizer_file, tmp_path)
    assert second is not first
    assert second.count("def main():\n    pass\n") == get_tokenizer().count(
        "def main():\n    pass\n"
    )


def test_a_corrupt_table_file_is_rebuilt(tmp_path: Path) -> None:
    token_counter.load(default_tokenizer_file(), tmp_path)
    (table,) = tmp_path.glob("*.marshal")
    table.write_bytes(b"not marshal data")
    token_counter.load.cache_clear()
    fresh = token_counter.load(default_tokenizer_file(), tmp_path)
    assert fresh.count("x = 1\n") == get_tokenizer().count("x = 1\n")
    assert table.read_bytes() != b"not marshal data"


def test_pre_tokenizer_is_read_from_the_tokenizer_file(counter) -> None:
    spec = json.loads(default_tokenizer_file().read_text())["pre_tokenizer"]
    assert counter._tables.patterns == [
        s["pattern"]["Regex"] for s in spec["pretokenizers"] if s["type"] == "Split"
    ]
    unsupported = {"type": "Sequence", "pretokenizers": [{"type": "Metaspace"}]}
    with pytest.raises(ValueError, match="not supported"):
        token_counter.split_patterns(unsupported, Path("tokenizer.json"))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.text(
        alphabet=st.one_of(
            st.sampled_from(
                list(" \t\r\n_-=+*/.,;:()[]{}<>'\"#@!?0123456789aZéü中かカ한🎉\u00a0\u2014")
            ),
            st.characters(codec="utf-8"),
        ),
        max_size=200,
    )
)
def test_counts_agree_with_the_official_tokenizer_or_decline(counter, text: str) -> None:
    got = counter.count(text)
    assert got is None or got == get_tokenizer().count(text)


_ASCII_ALPHABET = list(" \t\r\n_-=+*/.,;:()[]{}<>'\"#@!?$%&^`|~\\0123456789abcXYZ")


def test_ascii_shortcut_is_on_for_the_v4_patterns_only(counter) -> None:
    assert counter._ascii_shortcut
    tables = counter._tables
    other = token_counter._Tables(tables.byte_ids, tables.merges, [r"\s+"], tables.byte_pairs)
    assert not token_counter.TokenCounter(other)._ascii_shortcut


def test_ascii_shortcut_cuts_like_the_three_passes_on_this_repository(counter) -> None:
    paths = sorted(_ROOT.glob("*/*.py")) + sorted(_ROOT.glob("tests/*/*.py"))
    paths += sorted(_ROOT.glob("*.md")) + sorted(_ROOT.glob("benchmarks/*.md"))
    texts = [p.read_text("utf-8") for p in paths]
    assert sum(t.isascii() for t in texts) > 100
    assert sum(not t.isascii() for t in texts) > 10  # mixed: stretches take the shortcut
    for text in texts:
        assert counter._pretokenize(text) == counter._pretokenize_passes(text)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(alphabet=st.sampled_from(_ASCII_ALPHABET), max_size=120))
def test_ascii_shortcut_cuts_like_the_three_passes(counter, text: str) -> None:
    assert counter._pretokenize(text) == counter._pretokenize_passes(text)
    assert counter.count(text) == get_tokenizer().count(text)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.text(
        alphabet=st.sampled_from(
            [*_ASCII_ALPHABET, " ", "\n", "\n", "é", "中", "🎉", "\u00a0", "\x1f", "\x85"]
        ),
        max_size=120,
    )
)
def test_mixed_text_cut_at_safe_line_ends_pre_tokenizes_like_the_passes(counter, text) -> None:
    assert counter._pretokenize(text) == counter._pretokenize_passes(text)


@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.text(
        alphabet=st.one_of(
            st.sampled_from(
                [*_ASCII_ALPHABET, "\n", "中", "文", "か", "カ", "・", "゛", "ー", "゠", "\u3099"]
                + ["\u3040", "\u0301", "é", "²", "½", "\u0660", "\u00a0", "\u2014", "🎉", "한"]
                + ["\x85"]
            ),
            st.characters(codec="utf-8"),
        ),
        max_size=80,
    )
)
def test_the_combined_pattern_cuts_like_the_three_passes(counter, text: str) -> None:
    assert counter._pretokenize_general(text) == counter._pretokenize_passes(text)


@pytest.mark.parametrize("text", ["a\x0bb", "x\x00y 1", "tab\x1fsep", "del\x7f"])
def test_ascii_control_characters_take_the_general_path(counter, text: str) -> None:
    assert counter._pretokenize(text) == counter._pretokenize_passes(text)
    assert counter.count(text) == get_tokenizer().count(text)


def _split_by_loop(pattern, text: str) -> list[str]:
    """The isolated split written out: every match and every stretch between two."""
    parts, pos = [], 0
    for m in pattern.finditer(text):
        parts += [text[pos : m.start()]] if m.start() > pos else []
        parts += [m.group()] if m.end() > m.start() else []
        pos = m.end()
    return parts + ([text[pos:]] if pos < len(text) else [])


@pytest.mark.parametrize(
    "pattern",
    [r"[a-z]+|\s+", r"[a-z]+", r"([a-z])+", r"x*", r"\d{1,3}|\s+|[^\d\s]+"],
    ids=["tiling", "gaps", "group", "empty matches", "tiling 2"],
)
@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="ab xz19\n.-é", max_size=40))
def test_isolated_split_equals_the_loop_whether_or_not_matches_tile(pattern, text) -> None:
    import regex

    compiled = regex.compile(pattern)
    assert token_counter._split_isolated(compiled, text) == _split_by_loop(compiled, text)


def test_plain_ascii_text_is_counted_without_the_regex_module(tmp_path: Path) -> None:
    """A one-file re-index of plain source saves the `regex` import and compiles."""
    import subprocess
    import sys

    token_counter.table_file(default_tokenizer_file(), tmp_path)  # built beforehand
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from dsv4.agent import token_counter\n"
        "from dsv4.engine.tokenizer import default_tokenizer_file\n"
        f"c = token_counter.load(default_tokenizer_file(), Path({str(tmp_path)!r}))\n"
        "n = c.count('def f(x):\\n    return x + 1\\n')\n"
        "print(n, 'regex' in sys.modules)\n"
        "c.count('caf\\u00e9')\n"
        "print('regex' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    first, second = out.stdout.splitlines()
    expected = get_tokenizer().count("def f(x):\n    return x + 1\n")
    assert first == f"{expected} False"
    assert second == "True"  # other text compiles the patterns on first use
