"""Which uncounted texts a packing round counts: about a budget's worth, best-ranked first.

Counting every file of a large repository with the V4 tokenizer costs more than all the
other indexing work together, and most such files end as tree lines. So the indexer fits
with lower bounds (`packer.chunk_floor`) for what it has not counted, counts what the fit
chose, and fits again until everything chosen is exact (the result is then the fit that
exact counts everywhere would give; `packer.fit` explains why). This module decides how
much one round counts: enough that a few rounds settle a pack, not so much that files
which end as tree lines get counted.

Pure: inputs are the pack files and the fit's placements; estimates only steer how much
is counted at once, never what the pack holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .packer import (
    PackFile,
    Placement,
    full_cost,
    needs_full_counts,
    needs_outline_counts,
    outline_cost,
)

Unit = Literal["full", "outline"]

CHARS_PER_TOKEN = 3.9
"""V4 averages ~3.9 characters a token on source code."""
# `packer.chunk_floor` gives ~45% of the true count on typical code.
_FLOOR_TO_TOKENS = 2.0


@dataclass(frozen=True)
class RoundConfig:
    slack: float = 1.0
    """A round counts chosen texts whose estimates fill the budget left times this."""
    min_tokens: int = 10_000
    """...and at least this many (estimated) tokens, topped up with texts that might still
    fit: near a full budget that settles the tail in a few rounds, not one per file."""


@dataclass(frozen=True)
class Round:
    fulls: list[str]
    """Paths whose full text to count, best-ranked first."""
    outlines: list[str]
    """Paths whose outline to count."""


def next_round(
    files: Sequence[PackFile],
    placements: Sequence[Placement],
    budget_left: int,
    config: RoundConfig = RoundConfig(),
) -> Round | None:
    """What to count before fitting again; None when the fit holds only exact counts.

    `placements` is `packer.fit`'s result for `files` (best-ranked first); `budget_left`
    the budget minus everything placed with an exact count.
    """
    chosen_full = needs_full_counts(files, placements)
    chosen_outline = needs_outline_counts(files, placements)
    if not chosen_full and not chosen_outline:
        return None
    by_path = {f.path: f for f in files}
    ranked = [by_path[p.path] for p in placements]
    return Round(
        _batch([by_path[p] for p in chosen_full], ranked, budget_left, "full", config),
        _batch([by_path[p] for p in chosen_outline], ranked, budget_left, "outline", config),
    )


def exact_tokens(files: Sequence[PackFile], placements: Sequence[Placement]) -> int:
    """Tokens of the placements whose counts are exact (not lower bounds)."""
    by_path = {f.path: f for f in files}

    def exact(p: Placement) -> bool:
        f = by_path[p.path]
        return (
            p.mode == "tree"
            or (p.mode == "full" and f.full_tokens >= 0)
            or (p.mode == "outline" and f.outline_tokens >= 0)
        )

    return sum(p.tokens for p in placements if exact(p))


def estimate(f: PackFile, unit: Unit) -> float:
    """Likely tokens: by length, or by the lower bound when that says more (dense code)."""
    if unit == "full":
        return max(len(f.text) / CHARS_PER_TOKEN, _FLOOR_TO_TOKENS * f.full_floor)
    return max(len(f.outline) / CHARS_PER_TOKEN, _FLOOR_TO_TOKENS * f.outline_floor)


def _batch(
    chosen: list[PackFile],
    ranked: list[PackFile],
    budget_left: int,
    unit: Unit,
    config: RoundConfig,
) -> list[str]:
    taken = _take(chosen, budget_left * config.slack, unit) if chosen else []
    spare = config.min_tokens - sum(estimate(f, unit) for f in taken)
    if spare > 0:
        done = {f.path for f in taken}
        maybe = [f for f in ranked if f.path not in done and _may_fit(f, budget_left, unit)]
        taken += _take(maybe, spare, unit)
    return [f.path for f in taken]


def _take(files: list[PackFile], room: float, unit: Unit) -> list[PackFile]:
    """The first `files` (at least one) whose estimated tokens fill `room`."""
    taken: list[PackFile] = []
    total = 0.0
    for f in files:
        total += estimate(f, unit)
        if taken and total > room:
            break
        taken.append(f)
    return taken


def _may_fit(f: PackFile, budget_left: int, unit: Unit) -> bool:
    """Whether an uncounted text or outline might still fit: by lower bound and estimate."""
    if unit == "full":
        floor, uncounted = full_cost(f), f.full_tokens < 0
    else:
        floor, uncounted = outline_cost(f), f.outline_tokens < 0 and bool(f.outline)
    return uncounted and floor <= budget_left and estimate(f, unit) <= 2 * budget_left
