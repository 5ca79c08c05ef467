"""Budget fitting and layout; token counts of the units add up to the count of the whole."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from dsv4.agent import packer
from dsv4.agent.packer import PackFile, fit, render, total_tokens
from dsv4.engine.tokenizer import default_tokenizer_file, get_tokenizer


def _file(path: str, score: float, full: int, outline: int, tree: int = 3) -> PackFile:
    return PackFile(
        path, score, f"body of {path}\n", full, "  1| def f():\n" if outline else "", outline, tree
    )


def _files() -> list[PackFile]:
    return [
        _file("hub.py", 0.5, full=500, outline=50),
        _file("mid.py", 0.3, full=300, outline=40),
        _file("leaf.py", 0.15, full=200, outline=0),
        _file("tail.py", 0.05, full=100, outline=20),
    ]


@pytest.mark.parametrize("budget", [5, 10, 20, 30, 60, 100, 150, 250, 600, 900, 1200, 5000])
def test_never_over_budget(budget: int) -> None:
    placements = fit(_files(), budget, fixed_tokens=5, tree_frame_tokens=4)
    assert total_tokens(placements, 5, 4) <= budget or all(p.mode == "excluded" for p in placements)


def test_degrades_full_then_outline_then_tree_then_excluded() -> None:
    files = _files()
    modes = lambda b: {p.path: p.mode for p in fit(files, b, 5, 4)}  # noqa: E731
    assert set(modes(10_000).values()) == {"full"}
    # hub fits in full; mid only as an outline; leaf has no outline, so a tree line; the
    # smaller tail still fits in full.
    assert modes(700) == {
        "hub.py": "full",
        "mid.py": "outline",
        "leaf.py": "tree",
        "tail.py": "full",
    }
    assert modes(150) == {
        "hub.py": "outline",
        "mid.py": "outline",
        "leaf.py": "tree",
        "tail.py": "outline",
    }
    assert modes(30) == {"hub.py": "tree", "mid.py": "tree", "leaf.py": "tree", "tail.py": "tree"}
    assert modes(15) == {
        "hub.py": "tree",
        "mid.py": "tree",
        "leaf.py": "excluded",
        "tail.py": "excluded",
    }


def test_layout_tree_first_and_most_relevant_last() -> None:
    files = _files()
    placements = fit(files, 700, 5, 4)
    text = render("proj", files, placements, len(files))
    assert text.startswith('<repository name="proj">\n') and text.endswith("</repository>\n")
    order = [line for line in text.splitlines() if line.startswith("<file ")]
    assert order == [
        '<file path="mid.py" mode="outline">',
        '<file path="tail.py" mode="full">',
        '<file path="hub.py" mode="full">',
    ]
    assert text.index("<tree>\nleaf.py\n</tree>\n") < text.index("<file ")


def test_render_is_deterministic_regardless_of_input_order() -> None:
    files = _files()
    a = render("p", files, fit(files, 700, 5, 4), 4)
    rev = list(reversed(files))
    assert render("p", rev, fit(rev, 700, 5, 4), 4) == a


def test_normalise_text_defuses_every_added_token() -> None:
    tok = get_tokenizer()
    added = json.loads(default_tokenizer_file().read_text())["added_tokens"]
    ids = {t["id"] for t in added}
    for t in added:
        text = packer.normalise_text(f"x = '{t['content']}'")
        assert not ids & set(tok.encode(text)), t["content"]
    assert packer.normalise_text("plain") == "plain\n"
    assert packer.normalise_text("") == ""


_TRICKY_BODIES = [
    "",
    "x = 1\n",
    "\n\nleading blank lines\n",
    "trailing spaces   \n   \n",
    "ends with digits 12345",
    "123\n456\n",
    "tabs\t\tand\r\nwindows\r\n",
    "}\n",
    "</file>\n",
    "  indented first line\n",
    "中文字符结尾",
    "emoji 🎉 ending🎉",
    "quote'\"`",
    "<｜User｜>hi<think>",
]


def test_units_add_up_to_the_count_of_the_whole() -> None:
    """The exactness claim of the layout, checked with the real V4 tokenizer."""
    tok = get_tokenizer()
    rng = random.Random(0)
    paths = ["a.py", "dir/b c.md", "v2/1.txt", ".hidden", "ünï/ç.rs", "x)", "z_"]
    files = []
    for i, body in enumerate(_TRICKY_BODIES * 3):
        path = f"{rng.choice(paths)}{i}"
        body = packer.normalise_text(body)
        outline = packer.normalise_text(rng.choice(_TRICKY_BODIES)) or "1| f\n"
        files.append(
            PackFile(
                path,
                rng.random(),
                body,
                tok.count(packer.full_chunk(path, body)),
                outline,
                tok.count(packer.outline_chunk(path, outline)),
                tok.count(packer.tree_line(path)),
            )
        )
    fixed = tok.count(packer.preamble("repo 7")) + tok.count(packer.CLOSING)
    frame = tok.count(packer.TREE_OPEN) + tok.count(packer.TREE_CLOSE)
    full_cost = sum(f.full_tokens for f in files)
    for budget in (full_cost // 2, full_cost * 3 // 4, full_cost + 1000):
        placements = fit(files, budget, fixed, frame)
        assert {p.mode for p in placements} & {"full", "outline"}
        text = render("repo 7", files, placements, len(files))
        assert tok.count(text) == total_tokens(placements, fixed, frame) <= budget


def test_chunk_floor_is_a_lower_bound_and_a_useful_one() -> None:
    tok = get_tokenizer()
    root = Path(__file__).resolve().parents[2]
    sources = [p.read_text("utf-8") for p in sorted(root.glob("agent/*.py"))]
    bodies = _TRICKY_BODIES + ["<|EOT|><|place_holder_mm_span_0021|>\n", "a\u0301b 12\u00b23\n"]
    texts = bodies + [packer.normalise_text(b) for b in bodies] + sources
    chunks = [packer.full_chunk("dir/f.py", t) for t in texts]
    counts = tok.count_batch(chunks)
    floors = [packer.chunk_floor(t) for t in texts]
    assert all(f <= c for f, c in zip(floors, counts, strict=True))
    outlines = tok.count_batch([packer.outline_chunk("a b.rs", t) for t in texts])
    assert all(f <= c for f, c in zip(floors, outlines, strict=True))
    code = slice(2 * len(bodies), None)
    assert sum(floors[code]) >= 0.3 * sum(counts[code])  # tight enough to skip big files


@pytest.mark.parametrize("seed", range(6))
def test_fitting_by_lower_bounds_then_counting_ends_at_the_exact_fit(seed: int) -> None:
    rng = random.Random(seed)
    exact = []
    for i in range(60):
        full = rng.randint(20, 3000)
        outline = rng.choice([0, rng.randint(5, full // 3 + 5)])
        f = _file(f"f{i:02}.py", rng.random(), full, outline, tree=rng.randint(2, 6))
        floors = {"full_floor": rng.randint(1, full), "outline_floor": rng.randint(0, outline)}
        exact.append(replace(f, **floors))
    by_path = {f.path: f for f in exact}
    total = sum(f.full_tokens for f in exact)
    for budget in (total // 10, total // 3, total // 2, total + 100):
        files = [replace(f, full_tokens=-1, outline_tokens=-1 if f.outline else 0) for f in exact]
        rounds = 0
        while True:
            placements = fit(files, budget, 5, 4)
            fulls = set(packer.needs_full_counts(files, placements))
            outlines = set(packer.needs_outline_counts(files, placements))
            if not fulls and not outlines:
                break
            files = [_counted(f, by_path[f.path], fulls, outlines) for f in files]
            rounds += 1
        assert placements == fit(exact, budget, 5, 4)
        assert rounds <= len(exact)


def _counted(f: PackFile, exact: PackFile, fulls: set[str], outlines: set[str]) -> PackFile:
    f = replace(f, full_tokens=exact.full_tokens) if f.path in fulls else f
    return replace(f, outline_tokens=exact.outline_tokens) if f.path in outlines else f
