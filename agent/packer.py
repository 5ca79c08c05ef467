"""Budget fitting and layout of the packed repository context.

Layout, chosen so that token counts add up exactly and the prompt cache survives edits:

    <repository name="NAME">            preamble
    <tree>                              paths of files shown by name only, sorted
    path/one.rs
    </tree>
    <file path="a.py" mode="outline">   signature outlines
    <file path="b.py" mode="full">      full text, most relevant file last
    </repository>

Exactness. The V4 pre-tokenizer never joins text across the seam `>\\n` + `<`: `>\\n` is
one punctuation pre-token that cannot take `<` in, and `<` starts a new one. Every unit
(preamble, tree open/close, file chunk, closing tag) ends in `>\\n` and the next starts
with `<`; tree lines are whole paths ending in a newline and starting with a non-space.
BPE never merges across pre-tokens and digits only group inside a run, so the count of
the whole text is the sum of the counts of its units (tests check this on real text).

Order. Files are placed by a coarse relevance tier (half-octaves of the score relative to a
uniform score), then by path; the most relevant tier comes last, closest to the question.
Tiers make the order immune to the small score changes a one-file edit causes, so the text
before an edited file's chunk stays byte-identical and the engine's prefix cache stays warm.

Pure: counts come in with the files; nothing here reads disk or runs the tokenizer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Mode = Literal["full", "outline", "tree", "excluded"]

TREE_OPEN = "<tree>\n"
TREE_CLOSE = "</tree>\n"
CLOSING = "</repository>\n"
# `chunk_floor`: ASCII letters and digits become "a", every other byte a space, so that
# `split()` returns one item per run.
_ALNUM_RUNS = bytes(b"a"[0] if chr(i).isalnum() and i < 128 else 32 for i in range(256))
_VISIBLE_LINE = re.compile(r"^[ \t\r\f\v]*[!-~]", re.MULTILINE)
# Every added token of the V4 vocabulary has one of these shapes (tests check it).
SPECIAL_TOKEN = re.compile(
    r"<\uff5c[^\uff5c\n]{1,64}\uff5c>|<\|[\w\u2581]{1,64}\|>|<\uff5c/?\w{1,32}>\uff5c|</?think>|\uff5cDSML\uff5c|</?dsml:"
)


@dataclass(frozen=True)
class PackFile:
    """One includable file with the token counts of each way of showing it."""

    path: str
    score: float
    text: str
    """File content (secrets already redacted), ending in a newline (or empty)."""
    full_tokens: int
    """Tokens of `full_chunk(path, text)`; -1 when not counted yet: `fit` then uses
    `full_floor`, and the caller counts the files `fit` chose and fits again
    (`needs_full_counts`)."""
    outline: str
    """Outline lines (may be empty: then the file cannot be shown as an outline)."""
    outline_tokens: int
    """Tokens of `outline_chunk(path, outline)`; 0 when there is no outline; -1 when not
    counted yet: `fit` then uses an optimistic estimate, and the caller counts the outlines
    `fit` chose and fits again (`needs_outline_counts`)."""
    tree_tokens: int
    """Tokens of `tree_line(path)`."""
    full_floor: int = 0
    """A lower bound on `full_tokens` (`chunk_floor(text)`), used while it is -1."""
    outline_floor: int = 0
    """A lower bound on `outline_tokens` (`chunk_floor(outline)`), used while it is -1."""


@dataclass(frozen=True)
class Placement:
    path: str
    mode: Mode
    tokens: int
    """Tokens the file adds to the packed text (0 when excluded)."""
    reason: str


def preamble(name: str) -> str:
    return f'<repository name="{_attr(name)}">\n'


def full_chunk(path: str, text: str) -> str:
    return f'<file path="{_attr(path)}" mode="full">\n{text}</file>\n'


def outline_chunk(path: str, outline: str) -> str:
    return f'<file path="{_attr(path)}" mode="outline">\n{outline}</file>\n'


def tree_line(path: str) -> str:
    # One path per line and no indentation: a line never starts with whitespace, which
    # keeps the line seams clean for the pre-tokenizer.
    return path.replace("\n", "\\n") + "\n"


def normalise_text(text: str) -> str:
    """File text as packed: control-token look-alikes defused, a final newline added.

    The V4 tokenizer turns `<｜User｜>`, `<think>`, `｜DSML｜` and the other added tokens into
    control ids wherever they occur, so a file quoting them (a tokenizer module, a prompt
    template) would inject turns into the prompt. A zero-width space after the first
    character turns each back into plain text.
    """
    text = SPECIAL_TOKEN.sub(lambda m: m.group(0)[0] + "\u200b" + m.group(0)[1:], text)
    return text if text.endswith("\n") or not text else text + "\n"


def fit(
    files: Sequence[PackFile], budget: int, fixed_tokens: int, tree_frame_tokens: int
) -> list[Placement]:
    """Choose full/outline/tree per file, best-ranked first, never exceeding `budget`.

    `fixed_tokens`: preamble and closing tag; `tree_frame_tokens`: `<tree>` plus `</tree>`.
    Every file starts as a tree line; going down the ranking each is upgraded to full text
    when that fits, else to an outline when that fits. If even the tree does not fit, the
    lowest-ranked tree lines are dropped.
    """
    ranked = sorted(files, key=lambda f: (-f.score, f.path))
    modes: dict[str, Mode] = {f.path: "tree" for f in ranked}
    used = fixed_tokens + tree_frame_tokens + sum(f.tree_tokens for f in ranked)
    for f in reversed(ranked):
        if used <= budget:
            break
        modes[f.path] = "excluded"
        used -= f.tree_tokens
    for f in ranked:
        if modes[f.path] == "excluded":
            continue
        if used - f.tree_tokens + full_cost(f) <= budget:
            modes[f.path] = "full"
            used += full_cost(f) - f.tree_tokens
        elif f.outline and used - f.tree_tokens + outline_cost(f) <= budget:
            modes[f.path] = "outline"
            used += outline_cost(f) - f.tree_tokens
    return [_placement(f, modes[f.path]) for f in ranked]


def chunk_floor(text: str) -> int:
    """A lower bound on the tokens of `full_chunk(path, text)` and of
    `outline_chunk(path, text)`, for any path.

    A pre-token holds at most one run of letters, digit runs are split off first, and no
    pre-token holds a newline followed by a visible character. So each run of ASCII
    letters and digits between ASCII separators is at least one token of its own, and so
    is each line with visible content; the chunk's opening and closing lines add one each.
    Runs give ~45% of the true count on source code, lines ~12%: lines serve only for text
    with non-ASCII characters (which may join runs) or added tokens (one token, many runs).
    """
    closing = 1 if text.endswith("\n") or not text else 0  # else `</file>` may join a line
    if text.isascii() and not SPECIAL_TOKEN.search(text):
        runs = len(text.encode().translate(_ALNUM_RUNS).split())
        return runs + 1 + closing
    return len(_VISIBLE_LINE.findall(text)) + 1 + closing


def needs_full_counts(files: Sequence[PackFile], placements: Sequence[Placement]) -> list[str]:
    """Paths placed in full whose text was never counted, best-ranked first."""
    uncounted = {f.path for f in files if f.full_tokens < 0}
    return [p.path for p in placements if p.mode == "full" and p.path in uncounted]


def needs_outline_counts(files: Sequence[PackFile], placements: Sequence[Placement]) -> list[str]:
    """Paths placed as outlines whose outline was never counted: count them and fit again."""
    uncounted = {f.path for f in files if f.outline and f.outline_tokens < 0}
    return [p.path for p in placements if p.mode == "outline" and p.path in uncounted]


def render(
    name: str, files: Sequence[PackFile], placements: Sequence[Placement], n_files: int
) -> str:
    """The packed text for the chosen placements (layout in the module docstring)."""
    by_path = {f.path: f for f in files}
    modes = {p.path: p.mode for p in placements}
    parts = [preamble(name)]
    tree = sorted(p for p, m in modes.items() if m == "tree")
    if tree:
        parts += [TREE_OPEN, *map(tree_line, tree), TREE_CLOSE]
    for mode in ("outline", "full"):
        chosen = [by_path[p] for p, m in modes.items() if m == mode]
        for f in sorted(chosen, key=lambda f: (_tier(f.score, n_files), f.path)):
            parts.append(
                full_chunk(f.path, f.text) if mode == "full" else outline_chunk(f.path, f.outline)
            )
    parts.append(CLOSING)
    return "".join(parts)


def total_tokens(placements: Sequence[Placement], fixed_tokens: int, tree_frame_tokens: int) -> int:
    """Exact token count of `render`'s text: the units add up (module docstring)."""
    has_tree = any(p.mode == "tree" for p in placements)
    return fixed_tokens + (tree_frame_tokens if has_tree else 0) + sum(p.tokens for p in placements)


def mode_counts(placements: Sequence[Placement]) -> Mapping[str, int]:
    counts = {"full": 0, "outline": 0, "tree": 0, "excluded": 0}
    for p in placements:
        counts[p.mode] += 1
    return counts


def _placement(f: PackFile, mode: Mode) -> Placement:
    if mode == "full":
        return Placement(f.path, mode, full_cost(f), "")
    if mode == "outline":
        return Placement(f.path, mode, outline_cost(f), "full text over budget")
    if mode == "tree":
        why = "outline over budget" if f.outline else "full text over budget; no outline"
        return Placement(f.path, mode, f.tree_tokens, why)
    return Placement(f.path, mode, 0, "over budget even as a tree line")


def full_cost(f: PackFile) -> int:
    """Tokens of `f` in full: exact, or a lower bound while uncounted."""
    # As for outlines: with a true lower bound, fitting, counting the chosen and fitting
    # again ends at the fit that all exact counts would give.
    return f.full_tokens if f.full_tokens >= 0 else f.full_floor


def outline_cost(f: PackFile) -> int:
    """Tokens of `f` as an outline: exact, or a lower bound while uncounted."""
    # An uncounted outline costs at least 3 tokens a line: its line number (digits are
    # pre-tokenized apart), the `|`, and the signature. With a true lower bound, fitting,
    # counting what was chosen and fitting again ends at the fit all counts would give.
    if f.outline_tokens >= 0:
        return f.outline_tokens
    return max(3 * f.outline.count("\n"), f.outline_floor)


def _tier(score: float, n_files: int) -> int:
    # Half-octaves relative to the uniform score 1/n: coarse enough to be stable, fine
    # enough to keep the most relevant files at the end.
    return math.floor(2 * math.log2(max(score * n_files, 1e-12)))


def _attr(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("\n", " ")
