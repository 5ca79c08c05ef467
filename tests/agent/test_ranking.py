"""Ranking over the definition/reference graph."""

from __future__ import annotations

import random

import pytest

from dsv4.agent import ranking
from dsv4.agent.ranking import RankConfig, build_graph, focus_paths, rank


def _star(n_leaves: int) -> tuple[list[str], dict, dict]:
    """`core.py` defines `engine`, every leaf calls it; one leaf also defines `helper`."""
    paths = ["core.py"] + [f"leaf{i}.py" for i in range(n_leaves)]
    defs = {"core.py": ["engine"], "leaf0.py": ["helper"]}
    defs.update({p: [f"only_{p[:-3]}"] for p in paths[2:]})
    refs = {p: [("engine", 3)] for p in paths[1:]}
    return paths, defs, refs


def test_file_referenced_by_many_outranks_leaves() -> None:
    paths, defs, refs = _star(6)
    scores = rank(paths, build_graph(defs, refs))
    assert sum(scores.values()) == pytest.approx(1.0)
    assert max(scores, key=scores.get) == "core.py"
    assert all(scores["core.py"] > 3 * scores[p] for p in paths[1:])


def test_focus_personalises_the_ranking() -> None:
    paths, defs, refs = _star(6)
    graph = build_graph(defs, refs)
    plain = rank(paths, graph)
    focused = rank(paths, graph, focus=["leaf3.py"])
    assert focused["leaf3.py"] > 5 * plain["leaf3.py"]
    # A focus file's neighbours gain too: core.py is what leaf3 uses.
    assert focused["core.py"] > focused["leaf4.py"]


def test_graph_weights() -> None:
    defs = {"a.py": ["shared", "x"], "b.py": ["shared"], "c.py": ["unique"]}
    refs = {"d.py": [("shared", 4), ("unique", 4), ("x", 1), ("missing", 9)]}
    links = build_graph(defs, refs)["d.py"]
    # `shared` is split across its two definers; `unique` goes whole to c.py.
    assert links["c.py"] == pytest.approx(2.0)
    assert links["b.py"] == pytest.approx(1.0)
    assert links["a.py"] == pytest.approx(1.0 + 0.1)  # `x` is a one-letter name: a tenth
    # Self references do not count.
    assert build_graph({"a.py": ["f"]}, {"a.py": [("f", 5)]}) == {}


def test_rank_is_deterministic_and_handles_edge_cases() -> None:
    paths, defs, refs = _star(4)
    graph = build_graph(defs, refs)
    assert rank(paths, graph) == rank(list(paths), build_graph(defs, refs))
    assert rank([], {}) == {}
    lonely = rank(["a", "b"], {})
    assert lonely == {"a": pytest.approx(0.5), "b": pytest.approx(0.5)}
    with pytest.raises(ValueError, match="damping"):
        RankConfig(damping=1.0)


def test_focus_paths_from_task_text_and_explicit_list() -> None:
    paths = ["src/calc.py", "src/util.py", "tests/test_calc.py", "pkg/a.py"]
    task = "Fix the failing test tests/test_calc.py: division in calc.py rounds wrongly."
    assert focus_paths(paths, [], task) == ["src/calc.py", "tests/test_calc.py"]
    assert focus_paths(paths, ["./src/util.py"], "") == ["src/util.py"]
    # Short names are too ambiguous to match inside prose.
    assert focus_paths(paths, [], "see a.py") == []


def test_the_python_and_numpy_walks_agree(monkeypatch) -> None:
    rng = random.Random(7)
    paths = [f"m{i}.py" for i in range(60)]
    graph = {
        p: {rng.choice(paths): rng.random() for _ in range(rng.randrange(0, 6))}
        for p in paths[:50]  # the last ten are dangling
    }
    focus = paths[3:5]
    small = ranking.rank(paths, graph, focus)
    monkeypatch.setattr(ranking, "_PYTHON_MAX_STEPS", 0)  # force the numpy walk
    large = ranking.rank(paths, graph, focus)
    assert small.keys() == large.keys()
    assert all(abs(small[p] - large[p]) < 1e-12 for p in paths)
    assert abs(sum(small.values()) - 1.0) < 1e-9
