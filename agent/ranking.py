"""File ranking: personalised PageRank over the definition/reference graph.

File A links to file B for every name A references that B defines. A link's weight is
sqrt(occurrences) / (number of files defining the name), so a name defined everywhere
(`__init__`, `get`) says little and a name used fifty times does not drown the rest; names of
one or two characters, and dunders, count a tenth. The random walk restarts at the focus
files (named in the task or by failing tests) when there are any, otherwise uniformly, so
the ranking answers "what is this code, seen from the files the task is about".

Pure: inputs are plain mappings, the output a score per path (scores sum to 1).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath


@dataclass(frozen=True)
class RankConfig:
    damping: float = 0.85
    """Probability of following a link rather than restarting."""
    focus_weight: float = 100.0
    """Restart mass of a focus file relative to any other file."""
    iterations: int = 60
    tolerance: float = 1e-10
    """Stop when the L1 change of the score vector falls below this."""

    def __post_init__(self) -> None:
        if not 0.0 < self.damping < 1.0:
            raise ValueError(f"RankConfig.damping must lie in (0, 1), got {self.damping}")


def build_graph(
    definitions: Mapping[str, Iterable[str]], references: Mapping[str, Iterable[tuple[str, int]]]
) -> dict[str, dict[str, float]]:
    """Weighted links `{from_path: {to_path: weight}}` from defined and referenced names."""
    definers: dict[str, list[str]] = defaultdict(list)
    for path in sorted(definitions):
        for name in set(definitions[path]):
            definers[name].append(path)
    graph: dict[str, dict[str, float]] = {}
    for path in sorted(references):
        links: dict[str, float] = defaultdict(float)
        for name, count in references[path]:
            targets = definers.get(name)
            if not targets:
                continue
            weight = math.sqrt(count) * _name_weight(name) / len(targets)
            for target in targets:
                if target != path:
                    links[target] += weight
        if links:
            graph[path] = dict(links)
    return graph


def rank(
    paths: Sequence[str],
    graph: Mapping[str, Mapping[str, float]],
    focus: Iterable[str] = (),
    config: RankConfig = RankConfig(),
) -> dict[str, float]:
    """PageRank score per path (sums to 1); restarts favour the `focus` paths."""
    n = len(paths)
    if n == 0:
        return {}
    index = {p: i for i, p in enumerate(paths)}
    restart = _restart_vector(paths, index, focus, config.focus_weight)
    links = _normalised_links(paths, index, graph)
    if len(links[0]) * config.iterations <= _PYTHON_MAX_STEPS:
        scores = _iterate_python(n, links, restart, config)
    else:
        scores = _iterate_numpy(n, links, restart, config)
    return {p: scores[i] for p, i in index.items()}


# Up to this many edge visits (edges x iterations) the walk runs in plain Python: cheaper
# than importing numpy (~0.1-0.2 s), which a repository of a few hundred files would spend
# most of its ranking time on.
_PYTHON_MAX_STEPS = 2_000_000
_Links = tuple[list[int], list[int], list[float]]
"""(source, target, weight) per edge."""


def _iterate_python(n: int, links: _Links, restart: list[float], config: RankConfig) -> list[float]:
    src, dst, weight = links
    out: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for i, j, w in zip(src, dst, weight, strict=True):
        out[i].append((j, w))
    dangling = [i for i in range(n) if i not in out]
    edges = sorted(out.items())
    d = config.damping
    scores = list(restart)
    for _ in range(config.iterations):
        flow = [0.0] * n
        for i, targets in edges:
            s = scores[i]
            for j, w in targets:
                flow[j] += s * w
        lost = sum(scores[i] for i in dangling)
        new = [d * (f + lost * r) + (1.0 - d) * r for f, r in zip(flow, restart, strict=True)]
        delta = sum(abs(a - b) for a, b in zip(new, scores, strict=True))
        scores = new
        if delta < config.tolerance:
            break
    return scores


def _iterate_numpy(
    n: int, links: _Links, restart_list: list[float], config: RankConfig
) -> list[float]:
    import numpy as np  # here, not at module level: most rankings never need it

    restart = np.array(restart_list)
    src_a, dst_a, w_a = (np.array(a) for a in links)
    src_a, dst_a = src_a.astype(np.int64), dst_a.astype(np.int64)
    dangling_mask = np.bincount(src_a, minlength=n) == 0
    scores = restart.copy()
    d = config.damping
    for _ in range(config.iterations):
        flow = np.bincount(dst_a, weights=scores[src_a] * w_a, minlength=n)
        dangling = scores[dangling_mask].sum()
        new = d * (flow + dangling * restart) + (1.0 - d) * restart
        delta = np.abs(new - scores).sum()
        scores = new
        if delta < config.tolerance:
            break
    return [float(x) for x in scores]


def focus_paths(paths: Iterable[str], focus: Iterable[str], task: str) -> list[str]:
    """Paths named explicitly, or whose path or file name appears in the task text."""
    wanted = {f.strip("./") for f in focus}
    words = set(re.findall(r"[\w./\-]+", task))
    chosen = []
    for path in paths:
        if path in wanted or path in words:
            chosen.append(path)
            continue
        name = path.rpartition("/")[2]
        # A bare file name counts only when its stem is long enough not to be a word.
        if name in words and len(PurePosixPath(name).stem) >= 3:
            chosen.append(path)
    return chosen


def _name_weight(name: str) -> float:
    if len(name) <= 2 or (name.startswith("__") and name.endswith("__")):
        return 0.1
    return 1.0


def _restart_vector(
    paths: Sequence[str], index: Mapping[str, int], focus: Iterable[str], weight: float
) -> list[float]:
    raw = [1.0] * len(paths)
    for path in focus:
        if path in index:
            raw[index[path]] = weight
    total = sum(raw)
    return [x / total for x in raw]


def _normalised_links(
    paths: Sequence[str], index: Mapping[str, int], graph: Mapping[str, Mapping[str, float]]
) -> tuple[list[int], list[int], list[float]]:
    """Edge lists (source, target, weight) with each source's weights summing to 1."""
    src: list[int] = []
    dst: list[int] = []
    weight: list[float] = []
    for i, path in enumerate(paths):
        links = {t: w for t, w in graph.get(path, {}).items() if t in index and w > 0}
        total = sum(links.values())
        for target, w in sorted(links.items()):
            src.append(i)
            dst.append(index[target])
            weight.append(w / total)
    return src, dst, weight
