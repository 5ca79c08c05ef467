"""The pure edit cascade: exact, unique, fallbacks, line endings, creation, already applied."""

from __future__ import annotations

import textwrap
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from dsv4.tools.editing import apply_edit


def test_exact_unique_match_is_replaced():
    out = apply_edit("a = 1\nb = 2\n", "b = 2", "b = 3")
    assert out.ok and out.changed and out.strategy == "exact"
    assert out.text == "a = 1\nb = 3\n"
    assert out.line == 2


def test_multiple_matches_fail_without_replace_all():
    text = "x = 1\nx = 1\n"
    out = apply_edit(text, "x = 1", "x = 2")
    assert not out.ok
    assert "2 times" in out.message
    assert out.text == text


def test_replace_all_replaces_every_occurrence():
    out = apply_edit("x = 1\ny\nx = 1\n", "x = 1", "x = 2", replace_all=True)
    assert out.ok and out.count == 2
    assert out.text == "x = 2\ny\nx = 2\n"


def test_no_match_shows_the_nearest_lines():
    text = "def alpha():\n    return 1\n\ndef beta():\n    return 2\n"
    out = apply_edit(text, "def betta():\n    return 2", "def beta():\n    return 3")
    assert not out.ok
    assert "not found" in out.message
    assert "     4\tdef beta():" in out.message
    assert out.text == text


def test_trailing_whitespace_tier():
    text = "if x:   \n    y()  \n"
    out = apply_edit(text, "if x:\n    y()\n", "if x:\n    z()\n")
    assert out.ok and out.strategy == "trailing-whitespace"
    assert out.text == "if x:\n    z()\n"


def test_indentation_tier_reindents_the_replacement():
    text = "class A:\n    def f(self):\n        if x:\n            return 1\n"
    old = "if x:\n    return 1\n"
    new = "if x:\n    log()\n    return 2\n"
    out = apply_edit(text, old, new)
    assert out.ok and out.strategy == "indentation"
    expected = (
        "class A:\n    def f(self):\n        if x:\n            log()\n            return 2\n"
    )
    assert out.text == expected


def test_indentation_tier_keeps_relative_indentation_strict():
    # Same words, different relative indentation: not a match in any tier.
    text = "def f():\n    a()\n    b()\n"
    out = apply_edit(text, "a()\n        b()", "c()")
    assert not out.ok


def test_unicode_tier_matches_smart_quotes_and_dashes():
    text = "msg = \u201chello\u201d  # a \u2014 b\n"
    out = apply_edit(text, 'msg = "hello"  # a - b', 'msg = "bye"  # a - b')
    assert out.ok and out.strategy == "unicode"
    assert out.text == 'msg = "bye"  # a - b\n'


def test_ambiguous_fuzzy_match_is_refused():
    text = "def f():\n    return 1  \n\ndef g():\n    return 1 \n"
    out = apply_edit(text, "return 1\n", "return 2\n")
    assert not out.ok
    assert "2 places" in out.message
    assert out.text == text


def test_crlf_file_keeps_crlf():
    text = "a\r\nb\r\nc\r\n"
    out = apply_edit(text, "b\n", "B\nB2\n")
    assert out.ok
    assert out.text == "a\r\nB\r\nB2\r\nc\r\n"


def test_missing_trailing_newline_stays_missing():
    out = apply_edit("a\nb", "b\n", "c\n")
    assert out.ok
    assert out.text == "a\nc"
    out2 = apply_edit("a\nb", "b", "c")
    assert out2.text == "a\nc"


def test_empty_old_string_creates_a_missing_file():
    out = apply_edit(None, "", "hello\n")
    assert out.ok and out.strategy == "create" and out.text == "hello\n"


def test_empty_old_string_on_non_empty_file_fails():
    out = apply_edit("x\n", "", "y\n")
    assert not out.ok and out.text == "x\n"


def test_missing_file_with_old_string_fails():
    assert not apply_edit(None, "x", "y").ok


def test_already_applied_is_detected():
    out = apply_edit("value = 2\n", "value = 1", "value = 2")
    assert out.ok and not out.changed
    assert out.strategy == "already-applied"
    assert out.text == "value = 2\n"


def test_identical_old_and_new_is_refused():
    assert not apply_edit("a\n", "a", "a").ok


# --- property: the cascade never applies a non-unique match --------------------------------

_LINES = st.sampled_from(
    ["x = 1", "x = 1 ", "  x = 1", "y = 2", "\u201cq\u201d", '"q"', "", "    y = 2"]
)
_MARK = "@@MARKER@@"


def _windows(text: str, old: str, norm) -> int:
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    want = old.split("\n")
    if old.endswith("\n"):
        want.pop()
    n = len(want)
    return sum(norm(lines[i : i + n]) == norm(want) for i in range(len(lines) - n + 1))


def _rstrip(lines):
    return [line.rstrip() for line in lines]


def _dedent(lines):
    return _rstrip(textwrap.dedent("\n".join(_rstrip(lines))).split("\n"))


def _fold(lines):
    table = str.maketrans({"\u201c": '"', "\u201d": '"'})
    return _dedent([unicodedata.normalize("NFKC", line).translate(table) for line in lines])


_ORACLE = {"trailing-whitespace": _rstrip, "indentation": _dedent, "unicode": _fold}


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINES, min_size=1, max_size=8), st.lists(_LINES, min_size=1, max_size=3))
def test_cascade_never_applies_a_non_unique_match(file_lines, old_lines):
    text = "\n".join(file_lines) + "\n"
    old = "\n".join(old_lines)
    out = apply_edit(text, old, _MARK)
    if not out.changed:
        assert out.text == text  # a refused edit changes nothing
        return
    assert out.text.count(_MARK) == 1
    if out.strategy == "exact":
        assert text.count(old) == 1
    else:
        assert text.count(old) == 0
        assert _windows(text, old, _ORACLE[out.strategy]) == 1
