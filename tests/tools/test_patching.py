"""Unified-diff parsing and pure application."""

from __future__ import annotations

import pytest

from dsv4.tools.patching import PatchError, apply_file_patch, parse_patch

TEXT = "".join(f"line{i}\n" for i in range(1, 21))


def _one(patch: str):
    (fp,) = parse_patch(patch)
    return fp


def test_parses_git_headers_and_strips_prefixes():
    patch = (
        "diff --git a/p.py b/p.py\nindex 1..2 100644\n"
        "--- a/p.py\n+++ b/p.py\n@@ -1,2 +1,2 @@\n-a\n+b\n c\n"
    )
    fp = _one(patch)
    assert (fp.old_path, fp.new_path) == ("p.py", "p.py")
    assert fp.hunks[0].lines == ["-a", "+b", " c"]


def test_applies_two_hunks():
    patch = (
        "--- a/f\n+++ b/f\n@@ -2,3 +2,3 @@\n line2\n-line3\n+LINE3\n line4\n"
        "@@ -10,2 +10,3 @@\n line10\n+inserted\n line11\n"
    )
    out = apply_file_patch(TEXT, _one(patch))
    assert out is not None
    lines = out.splitlines()
    assert lines[2] == "LINE3"
    assert lines[10] == "inserted" and lines[11] == "line11"
    assert len(lines) == 21


def test_hunk_found_at_an_offset():
    patch = "--- a/f\n+++ b/f\n@@ -1,3 +1,3 @@\n line7\n-line8\n+EIGHT\n line9\n"
    out = apply_file_patch(TEXT, _one(patch))
    assert out is not None and out.splitlines()[7] == "EIGHT"


def test_wrong_context_is_refused_with_file_and_hunk():
    patch = "--- a/f\n+++ b/f\n@@ -2,3 +2,3 @@\n line2\n-lineX\n+Y\n line4\n"
    with pytest.raises(PatchError, match=r"f: hunk 1 .*does not apply"):
        apply_file_patch(TEXT, _one(patch))


def test_creation_and_deletion():
    created = apply_file_patch(
        None, _one("--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1,2 @@\n+hi\n+there\n")
    )
    assert created == "hi\nthere\n"
    deleted = apply_file_patch(
        "a\nb\n", _one("--- a/old.txt\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-a\n-b\n")
    )
    assert deleted is None


def test_creating_an_existing_file_is_refused():
    with pytest.raises(PatchError, match="already exists"):
        apply_file_patch("x\n", _one("--- /dev/null\n+++ b/x\n@@ -0,0 +1 @@\n+y\n"))


def test_blank_context_line_without_space_is_accepted():
    patch = "--- a/f\n+++ b/f\n@@ -1,3 +1,3 @@\n a\n\n-b\n+B\n"
    assert apply_file_patch("a\n\nb\n", _one(patch)) == "a\n\nB\n"


def test_unprefixed_line_inside_a_hunk_is_an_error():
    patch = "--- a/f\n+++ b/f\n@@ -1,3 +1,3 @@\n a\nb\n-c\n+C\n"
    with pytest.raises(PatchError, match="not a hunk line"):
        parse_patch(patch)


def test_no_newline_markers():
    patch = "--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+c\n"
    assert apply_file_patch("a\nb", _one(patch)) == "a\nc\n"
    patch2 = "--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n\\ No newline at end of file\n"
    assert apply_file_patch("a\nb\n", _one(patch2)) == "a\nc"


def test_missing_newline_stays_missing_without_markers():
    patch = "--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n"
    assert apply_file_patch("a\nb", _one(patch)) == "a\nc"


def test_crlf_file_keeps_crlf():
    patch = "--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n"
    assert apply_file_patch("a\r\nb\r\n", _one(patch)) == "a\r\nc\r\n"


def test_text_without_headers_is_an_error():
    with pytest.raises(PatchError, match="no file headers"):
        parse_patch("just some text\n")


def test_markdown_fence_around_the_patch_is_ignored():
    patch = "```diff\n--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n```\n"
    assert apply_file_patch("a\n", _one(patch)) == "b\n"
