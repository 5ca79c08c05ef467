"""Head-and-tail truncation of long outputs."""

from __future__ import annotations

from dsv4.tools.output import head_tail


def test_short_text_is_untouched():
    assert head_tail("abc\n", 10) == ("abc\n", False)


def test_cut_keeps_whole_lines_from_both_ends():
    text = "".join(f"row {i:04d}\n" for i in range(1000))
    shown, cut = head_tail(text, 500)
    assert cut
    head, _, tail = shown.partition("\n[...")
    assert head.startswith("row 0000\n") and tail.rstrip().endswith("row 0999")
    assert all(line.startswith("row ") and len(line) == 8 for line in head.splitlines())
    body = tail.split("...]\n", 1)[1]
    assert all(line.startswith("row ") and len(line) == 8 for line in body.splitlines())
    assert len(shown) <= 560
