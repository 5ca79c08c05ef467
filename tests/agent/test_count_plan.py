"""Counting rounds: they end at the exact fit, and a tight budget counts little."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from dsv4.agent import count_plan
from dsv4.agent.count_plan import RoundConfig
from dsv4.agent.packer import PackFile, fit


def _files(seed: int, n: int = 200) -> list[PackFile]:
    """Files with exact counts, and lower bounds ~40% of them as `chunk_floor` gives."""
    rng = random.Random(seed)
    files = []
    for i in range(n):
        full = rng.randint(50, 8000)
        text = "x" * int(full * rng.uniform(3.0, 4.8))  # length only drives the estimates
        outline_lines = rng.choice([0, rng.randint(1, 40)])
        outline = "  1| def f():\n" * outline_lines
        outline_tokens = 6 * outline_lines + 8 if outline_lines else 0
        files.append(
            PackFile(
                f"src/m{i:03}.py",
                rng.random(),
                text,
                full,
                outline,
                outline_tokens,
                rng.randint(3, 8),
                full_floor=int(full * rng.uniform(0.3, 0.5)),
                outline_floor=int(outline_tokens * 0.5),
            )
        )
    return files


def _pack_by_rounds(
    exact: list[PackFile], budget: int, config: RoundConfig
) -> tuple[list, int, int]:
    """(placements, tokens counted, rounds) of the indexer's loop on uncounted files."""
    by_path = {f.path: f for f in exact}
    files = [replace(f, full_tokens=-1, outline_tokens=-1 if f.outline else 0) for f in exact]
    counted = rounds = 0
    while True:
        placements = fit(files, budget, 5, 4)
        left = budget - 9 - count_plan.exact_tokens(files, placements)
        plan = count_plan.next_round(files, placements, left, config)
        if plan is None:
            return placements, counted, rounds
        rounds += 1
        fulls, outlines = set(plan.fulls), set(plan.outlines)
        assert fulls or outlines
        for i, f in enumerate(files):
            if f.path in fulls:
                f = replace(f, full_tokens=by_path[f.path].full_tokens)
                counted += f.full_tokens
            if f.path in outlines:
                f = replace(f, outline_tokens=by_path[f.path].outline_tokens)
                counted += f.outline_tokens
            files[i] = f


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("share", [0.05, 0.25, 0.5, 1.2])
def test_rounds_end_at_the_exact_fit(seed: int, share: float) -> None:
    exact = _files(seed)
    total = sum(f.full_tokens for f in exact)
    budget = int(total * share)
    placements, _, rounds = _pack_by_rounds(exact, budget, RoundConfig())
    assert placements == fit(exact, budget, 5, 4)
    assert rounds <= 30


@pytest.mark.parametrize("seed", range(4))
def test_a_tight_budget_counts_about_a_budget_worth(seed: int) -> None:
    exact = _files(seed)
    total = sum(f.full_tokens for f in exact)
    budget = total // 8
    _, counted, _ = _pack_by_rounds(exact, budget, RoundConfig())
    assert counted < 2.5 * budget  # against the whole: 8 budgets' worth


def test_nothing_to_count_when_every_choice_is_exact() -> None:
    exact = _files(0, n=20)
    placements = fit(exact, 10_000, 5, 4)
    assert count_plan.next_round(exact, placements, 10_000) is None
    assert count_plan.exact_tokens(exact, placements) == sum(p.tokens for p in placements)


def test_a_round_counts_at_least_one_chosen_file_even_over_the_room() -> None:
    exact = _files(1, n=10)
    files = [replace(f, full_tokens=-1) for f in exact]
    placements = fit(files, 10**9, 5, 4)
    plan = count_plan.next_round(files, placements, 0, RoundConfig(min_tokens=0))
    assert plan is not None and len(plan.fulls) == 1
    assert plan.fulls[0] == placements[0].path  # the best-ranked first
