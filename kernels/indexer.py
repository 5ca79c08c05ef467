"""Lightning-indexer scoring and top-k selection for CSA layers (SPEC §4.6).

score[t, j] = Σ_h w[t, h]·relu(q[t, h]·k[j]), with REF's precision: the q·k product is
rounded to the activation dtype (bf16 in production), and relu, ×w and the head sum stay in
that dtype. Selection keeps the `topk` best causal entries (j < (pos+1)//ratio); exact ties
go to the LOWER entry index, and picks that are masked become −1.

`index_scores_ref` + `index_topk_ref` are the definition; they materialize the [M, H, N]
product, which at long context is gigabytes. `index_score_topk_ref` gives the same indices
from tiles of queries × keys with a running top-k per query, so memory is bounded by the tile.
Its exactness rests on two facts:

* Each tile's scores are `index_scores_ref` of the tile, and they equal the full tensor's
  scores bit for bit as long as key tiles start at multiples of `_KEY_ALIGN`, no key tile is
  narrower than `_MIN_TILE` columns and no query tile has fewer than `_MIN_TILE` GEMM rows
  (queries × heads). The CPU GEMM switches to other kernels, with another summation order,
  for products a few rows or columns wide, and the head sum treats the vector-tail columns
  of a row apart, whose position modulo the vector width the alignment preserves. Tests
  check this with `torch.equal` on irregular shapes.
* Each (score, j) becomes a distinct int64 sort key — the score's order-preserving integer
  in the high word, 2^32−1−j in the low word — so "top k keys" is exactly the reference's
  stable descending sort, whatever order the tiles are merged in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .dispatch import native_lib, use_triton

_KEY_ALIGN = 256  # key tiles start at multiples of this (a multiple of every vector width)
_MIN_TILE = 32  # fewer GEMM rows or key columns join the previous tile (no skinny GEMMs)
_MASKED = torch.iinfo(torch.int64).min  # sort key of entries a query cannot see
Span = tuple[int, int]  # [start, stop) of a tile along one axis


class IndexerArgumentError(ValueError):
    """An indexer argument is out of range (the message names it and the expected range)."""


@dataclass(frozen=True)
class IndexTiles:
    """How `index_score_topk_ref` tiles the [M, H, N] score product."""

    queries: int = 128  # query rows per tile
    elements: int = 1 << 22  # cap on a tile's M·H·N product (the key width follows from it)

    def __post_init__(self) -> None:
        if self.queries < 1 or self.elements < 1:
            raise IndexerArgumentError(
                f"IndexTiles(queries={self.queries}, elements={self.elements}): both must be >= 1"
            )

    def key_width(self, rows: int, heads: int) -> int:
        """Keys per tile for `rows` queries of `heads` heads: a multiple of `_KEY_ALIGN`."""
        fit = self.elements // max(1, rows * heads)
        return max(_KEY_ALIGN, fit // _KEY_ALIGN * _KEY_ALIGN)


def index_scores_ref(q: torch.Tensor, k: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """q act [B,M,H,d], k act [B,N,d], weights act [B,M,H] -> act [B,M,N]."""
    b, m, h, d = q.shape
    s = torch.bmm(q.reshape(b, m * h, d), k.to(q.dtype).transpose(1, 2)).view(b, m, h, -1)
    # In place: the same rounding as out of place, without two more [M,H,N] temporaries.
    return s.relu_().mul_(weights.to(q.dtype).unsqueeze(-1)).sum(dim=2)


def _visible_limit(q_pos: torch.Tensor, ratio: int, device: torch.device) -> torch.Tensor:
    """int64 [1, M, 1]: query t sees entries j < (pos_t + 1) // ratio."""
    return ((q_pos.to(device) + 1) // ratio).view(1, -1, 1)


def index_topk_ref(
    scores: torch.Tensor, q_pos: torch.Tensor, ratio: int, topk: int
) -> torch.Tensor:
    """scores [B,M,N], q_pos int64 [M] -> int32 [B,M,min(topk,N)] (−1 where nothing visible)."""
    n = scores.shape[-1]
    k = min(topk, n)
    limit = _visible_limit(q_pos, ratio, scores.device)
    j = torch.arange(n, device=scores.device).view(1, 1, -1)
    masked = scores.float().masked_fill(j >= limit, float("-inf"))
    # A stable descending sort keeps equal scores in index order: ties go to the lower index.
    idx = torch.sort(masked, dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.where(idx >= limit, -1, idx).to(torch.int32)


def _sort_keys(scores: torch.Tensor, start: int, limit: torch.Tensor) -> torch.Tensor:
    """scores act [B,m,n] of entries start.. -> distinct int64 keys [B,m,n] whose descending
    order is the reference's: by score (NaN highest, −0 = +0), then by lower entry index
    (entry indices must fit the low 32 bits: 4G entries, far beyond 1M tokens / 4)."""
    s = scores.float() + 0.0  # −0 + 0 = +0: the sort treats the two zeros as equal
    s = torch.where(s.isnan(), float("nan"), s)  # one NaN bit pattern, above +inf
    bits = s.view(torch.int32)
    hi = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)  # monotone in s
    j = torch.arange(start, start + s.shape[-1], device=s.device).view(1, 1, -1)
    keys = (hi << 32) | (0xFFFFFFFF - j)
    return keys.masked_fill(j >= limit, _MASKED)


def _entries(keys: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
    """Sort keys -> entry indices int32, −1 for masked picks (and for `_MASKED` padding)."""
    j = 0xFFFFFFFF - (keys & 0xFFFFFFFF)
    return torch.where(j < limit, j, -1).to(torch.int32)


def _spans(n: int, step: int, unit: int = 1) -> list[Span]:
    """[start, stop) tiles covering 0..n, starting at multiples of `step`; a remainder of
    fewer than `_MIN_TILE` GEMM rows or columns (`unit` of them per item) joins the tile
    before it."""
    starts = list(range(0, n, step))
    if len(starts) > 1 and (n - starts[-1]) * unit < _MIN_TILE:
        starts.pop()
    return list(zip(starts, starts[1:] + [n], strict=True))


def _tiling(m: int, h: int, n: int, tiles: IndexTiles) -> tuple[list[Span], list[Span]]:
    """The query spans and key spans that tile an [m, h, n] score product."""
    rows = max(tiles.queries, -(-_MIN_TILE // h))  # at least _MIN_TILE GEMM rows
    width = tiles.key_width(min(m, rows), h)
    return _spans(m, rows, unit=h), _spans(n, width)


def _select_rows(q, k, weights, limit: torch.Tensor, k_out: int, spans: list[Span]) -> torch.Tensor:
    """Top-k sort keys [B,m,k_out] of one query tile, folding in one key tile at a time;
    key tiles wholly past the tile's last visible entry are skipped (causal)."""
    best = torch.full((*q.shape[:2], k_out), _MASKED, dtype=torch.int64, device=q.device)
    reach = int(limit.max())
    for start, stop in spans:
        if start >= reach:
            break
        scores = index_scores_ref(q, k[:, start:stop], weights)
        pool = torch.cat((best, _sort_keys(scores, start, limit)), dim=-1)
        best = pool.topk(k_out, dim=-1, sorted=False).values
    return best.sort(dim=-1, descending=True).values


def _check_selection(ratio: int, topk: int) -> None:
    if ratio < 1 or topk < 1:
        raise IndexerArgumentError(f"arguments `ratio`={ratio}, `topk`={topk}: expected >= 1")


def index_score_topk_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    weights: torch.Tensor,
    q_pos: torch.Tensor,
    ratio: int,
    topk: int,
    tiles: IndexTiles = IndexTiles(),
) -> torch.Tensor:
    """`index_topk_ref(index_scores_ref(q, k, weights), q_pos, ratio, topk)`, bit for bit,
    in memory bounded by `tiles`: q act [B,M,H,d], k act [B,N,d], weights act [B,M,H],
    q_pos int [M] -> int32 [B,M,min(topk,N)]."""
    _check_selection(ratio, topk)
    b, m, h, _ = q.shape
    n = k.shape[1]
    out = torch.full((b, m, min(topk, n)), -1, dtype=torch.int32, device=q.device)
    if out.numel() == 0:
        return out
    query_spans, key_spans = _tiling(m, h, n, tiles)
    if len(query_spans) == 1 and len(key_spans) == 1:  # one tile (decode): the reference
        return index_topk_ref(index_scores_ref(q, k, weights), q_pos, ratio, topk)
    limit = _visible_limit(q_pos, ratio, q.device)
    for start, stop in query_spans:
        lim = limit[:, start:stop]
        best = _select_rows(q[:, start:stop], k, weights[:, start:stop], lim,
                            out.shape[2], key_spans)  # fmt: skip
        out[:, start:stop] = _entries(best, lim)
    return out


def index_scores(q, k, weights) -> torch.Tensor:
    if use_triton(q, k, weights):
        from .indexer_triton import index_scores_triton

        return index_scores_triton(q, k, weights)
    return index_scores_ref(q, k, weights)


def index_topk(scores, q_pos, ratio: int, topk: int) -> torch.Tensor:
    if use_triton(scores, q_pos):
        from .indexer_triton import index_topk_triton

        return index_topk_triton(scores, q_pos, ratio, topk)
    return index_topk_ref(scores, q_pos, ratio, topk)


def index_score_topk(q, k, weights, q_pos, ratio: int, topk: int) -> torch.Tensor:
    """Scores and selection in one call (the engine's entry point). The torch path tiles;
    the Triton path and the C one (CPU) are fused kernels that never write the [M, N]
    scores to memory."""
    if use_triton(q, k, weights, q_pos):
        from .indexer_triton import index_score_topk_triton

        return index_score_topk_triton(q, k, weights, q_pos, ratio, topk)
    if (lib := native_lib("indexer", q, k, weights, q_pos)) is not None:
        from .indexer_native import index_score_topk as native_topk

        return native_topk(lib, q, k, weights, q_pos, ratio, topk)
    return index_score_topk_ref(q, k, weights, q_pos, ratio, topk)
