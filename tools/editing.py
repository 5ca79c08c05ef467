"""The edit cascade: replace `old` by `new` in a text, exactly or by a unique fuzzy match.

Pure: strings in, an `EditOutcome` out. Tiers, in order:
  1. exact substring (unique, or every occurrence with `replace_all`);
  2. `trailing-whitespace`: whole lines equal after stripping trailing blanks;
  3. `indentation`: whole lines equal after removing each block's common indentation; the
     replacement is re-indented by the same shift;
  4. `unicode`: as 3, after NFKC and folding smart quotes and dashes to ASCII.
A fuzzy tier only ever applies a match that is unique within that tier; two candidates make
the edit fail (a looser tier would only find more). Line endings: a CRLF file is edited as
LF text and written back with CRLF; a file without a final newline keeps it missing.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

_FOLD = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u2032": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u201f": '"',
        "\u2033": '"',
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u2015": "-",
        "\u2212": "-",
    }
)


@dataclass(frozen=True)
class EditOutcome:
    """Result of `apply_edit`. On failure `text` is the input, unchanged."""

    ok: bool
    text: str
    message: str
    strategy: str | None = None
    """`exact`, `trailing-whitespace`, `indentation`, `unicode`, `create`, `already-applied`."""
    count: int = 0
    """Occurrences replaced."""
    line: int | None = None
    """1-based line where the (first) replacement starts."""

    @property
    def changed(self) -> bool:
        return self.ok and self.count > 0


def apply_edit(text: str | None, old: str, new: str, replace_all: bool = False) -> EditOutcome:
    """Replace `old` with `new` in `text` (None: the file does not exist)."""
    if text is None:
        if old == "":
            return EditOutcome(True, new, "created the file", "create", 1, 1)
        return EditOutcome(
            False, "", "the file does not exist (use an empty old_string to create it)"
        )
    if old == new:
        return EditOutcome(False, text, "old_string and new_string are identical; nothing to do")
    if old == "":
        if text == "":
            return EditOutcome(True, new, "filled the empty file", "create", 1, 1)
        return EditOutcome(False, text, "old_string is empty but the file already has content")
    crlf = _is_crlf(text)
    if crlf:
        text, old, new = (s.replace("\r\n", "\n") for s in (text, old, new))
    outcome = _cascade(text, old, new, replace_all)
    if crlf:
        return _with_crlf(outcome)
    return outcome


def _cascade(text: str, old: str, new: str, replace_all: bool) -> EditOutcome:
    exact = text.count(old)
    if exact == 1 or (exact > 1 and replace_all):
        line = text[: text.index(old)].count("\n") + 1
        replaced = text.replace(old, new)
        return EditOutcome(True, replaced, f"replaced {exact} occurrence(s)", "exact", exact, line)
    if exact > 1:
        return EditOutcome(
            False,
            text,
            f"old_string occurs {exact} times; add surrounding lines to make it unique, "
            "or set replace_all to replace every occurrence",
        )
    for name, normalise in _TIERS:
        starts = _find_windows(text, old, normalise)
        if len(starts) == 1:
            return _replace_window(text, old, new, starts[0], name)
        if len(starts) > 1:
            lines = ", ".join(str(s + 1) for s in starts[:10])
            return EditOutcome(
                False,
                text,
                f"old_string not found exactly; ignoring {name} it matches {len(starts)} places "
                f"(lines {lines}); add surrounding lines to make it unique",
            )
    return _not_found(text, old, new)


def _rstrip_lines(lines: list[str]) -> list[str]:
    return [line.rstrip() for line in lines]


def _dedent_lines(lines: list[str]) -> list[str]:
    stripped = _rstrip_lines(lines)
    indent = _common_indent(stripped)
    return [line[len(indent) :] for line in stripped]


def _fold_lines(lines: list[str]) -> list[str]:
    return _dedent_lines([_fold(line) for line in lines])


def _fold(line: str) -> str:
    return unicodedata.normalize("NFKC", line).translate(_FOLD)


_TIERS: tuple[tuple[str, Callable[[list[str]], list[str]]], ...] = (
    ("trailing-whitespace", _rstrip_lines),
    ("indentation", _dedent_lines),
    ("unicode", _fold_lines),
)


def _common_indent(lines: list[str]) -> str:
    """Longest whitespace prefix shared by all non-blank lines (blank lines are ignored)."""
    indents = [line[: len(line) - len(line.lstrip())] for line in lines if line.strip()]
    if not indents:
        return ""
    prefix = indents[0]
    for indent in indents[1:]:
        while not indent.startswith(prefix):
            prefix = prefix[:-1]
    return prefix


def _split(text: str) -> list[str]:
    """Lines without their newline; a final newline does not make an extra empty line."""
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return lines


def _find_windows(text: str, old: str, normalise: Callable[[list[str]], list[str]]) -> list[int]:
    """0-based start lines of every window of whole lines equal to `old` once normalised."""
    lines, wanted = _split(text), _split(old)
    target, n = normalise(wanted), len(wanted)
    if n == 0 or not any(t.strip() for t in target):
        return []  # a blank-only old_string would match almost anywhere
    # Equality in any tier implies equality of the folded, stripped lines: a cheap filter.
    keys, want = [_key(line) for line in lines], [_key(line) for line in wanted]
    starts = [
        i for i in range(len(lines) - n + 1) if keys[i] == want[0] and keys[i : i + n] == want
    ]
    return [i for i in starts if normalise(lines[i : i + n]) == target]


def _key(line: str) -> str:
    return _fold(line).strip()


def _replace_window(text: str, old: str, new: str, start: int, strategy: str) -> EditOutcome:
    lines = _split(text)
    n = len(_split(old))
    window = lines[start : start + n]
    new_lines = (
        _reindent(window, _split(old), _split(new))
        if strategy != "trailing-whitespace"
        else _split(new)
    )
    result = lines[:start] + new_lines + lines[start + n :]
    joined = "\n".join(result)
    if text.endswith("\n") and result:
        joined += "\n"  # the file's final newline (or its absence) is kept as it was
    message = f"replaced 1 occurrence (matched ignoring {strategy})"
    return EditOutcome(True, joined, message, strategy, 1, start + 1)


def _reindent(window: list[str], old: list[str], new: list[str]) -> list[str]:
    """Shift `new` from `old`'s indentation to the file's, keeping its relative indents."""
    have, had = _common_indent(window), _common_indent(old)
    out = []
    for line in new:
        if not line.strip():
            out.append("")
        elif line.startswith(had):
            out.append(have + line[len(had) :])
        else:  # less indented than old_string: keep what it has, on top of the file's base
            out.append(have + line.lstrip())
    return out


def _not_found(text: str, old: str, new: str) -> EditOutcome:
    if new.strip() and new in text:
        return EditOutcome(
            True,
            text,
            "already applied: new_string is present and old_string is not",
            "already-applied",
        )
    return EditOutcome(False, text, "old_string not found in the file." + nearest_lines(text, old))


def nearest_lines(text: str, old: str, context: int = 0) -> str:
    """A hint showing the lines of `text` most similar to `old`, numbered like `read`."""
    lines, wanted = _split(text), _split(old)
    n = max(1, len(wanted))
    if not lines or not wanted:
        return ""
    # Rank windows by their first line (cheap), then compare the best few in full.
    first = wanted[0].strip()
    scored = sorted(
        range(max(1, len(lines) - n + 1)),
        key=lambda i: -difflib.SequenceMatcher(None, lines[i].strip(), first).quick_ratio(),
    )[:20]
    target = "\n".join(wanted)
    best = max(
        scored,
        key=lambda i: difflib.SequenceMatcher(None, "\n".join(lines[i : i + n]), target).ratio(),
    )
    ratio = difflib.SequenceMatcher(None, "\n".join(lines[best : best + n]), target).ratio()
    if ratio < 0.5:
        return " No similar lines found; read the file to see its current content."
    lo, hi = max(0, best - context), min(len(lines), best + n + context)
    shown = "\n".join(f"{i + 1:6}\t{lines[i]}" for i in range(lo, hi))
    return f" The most similar lines ({ratio:.0%} similar) are:\n{shown}"


def _is_crlf(text: str) -> bool:
    """True when every newline in `text` is CRLF (mixed files are edited as they are)."""
    lf = text.count("\n")
    return lf > 0 and text.count("\r\n") == lf


def _with_crlf(outcome: EditOutcome) -> EditOutcome:
    text = outcome.text.replace("\r\n", "\n").replace("\n", "\r\n")
    return EditOutcome(
        outcome.ok, text, outcome.message, outcome.strategy, outcome.count, outcome.line
    )
