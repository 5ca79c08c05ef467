"""A sequence being processed: prefill chunks of any length at any position, one-token decode,
and the operations that make its state reusable: fork, truncate, save and load.

Sessions share the model's weights and nothing else: each owns a `SequenceState`, the token
ids it has consumed, and a `SnapshotLog` of the places it can rewind to.

What `truncate(n)` gives: the compressed entries are append-only and are cut exactly; the
window ring and compressor rows are restored from the latest snapshot at or before n, and the
tokens from there to n are prefilled again from the session's own token list. At a snapshot
position (every `policy.interval` tokens, and the end of every multi-token prefill) the state
is restored bit for bit and nothing is recomputed; elsewhere the re-prefilled gap equals the
original computation up to the rounding of a different chunking (≤ 1e-4 in fp32).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from .model import LogitRows, Model
from .snapshots import SnapshotLog, SnapshotPolicy
from .state import SequenceState


class Session:
    def __init__(
        self,
        model: Model,
        state: SequenceState | None = None,
        tokens: Sequence[int] | None = None,
        snapshots: SnapshotLog | None = None,
    ) -> None:
        """`tokens`: the ids `state` holds (needed to rewind past a snapshot)."""
        self.model = model
        self.state = state if state is not None else model.new_state()
        self.tokens: list[int] = list(tokens or [])
        self.snapshots = snapshots if snapshots is not None else SnapshotLog()
        self.last_hidden: torch.Tensor | None = (
            None  # pre-hc_head streams of the last call (MTP input)
        )

    @property
    def pos(self) -> int:
        """Number of tokens processed so far (the position of the next token)."""
        return self.state.pos

    @property
    def policy(self) -> SnapshotPolicy:
        return self.snapshots.policy

    def _ids(self, token_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(token_ids, dtype=torch.int64).reshape(-1).to(self.model.device)
        vocab = self.model.args.vocab_size
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise ValueError(f"token ids must lie in [0, {vocab}); got {ids.min()}..{ids.max()}")
        return ids

    # -- feeding tokens ----------------------------------------------------------------------
    def prefill(
        self, token_ids: Sequence[int] | torch.Tensor, logits: LogitRows = "all"
    ) -> torch.Tensor:
        """Feed a chunk of tokens; fp32 logits [len, vocab], row i = after token i. With
        `logits="last"` only the last row ([1, vocab]), with "none" no row ([0, vocab]): what
        a long prompt needs (all rows of a 1 M-token prompt would be ~500 GB). Then
        `last_hidden` keeps the last position only.

        The chunk is split at the periodic snapshot positions so the state can be snapshotted
        there; the split changes nothing but rounding.
        """
        ids = self._ids(token_ids)
        if ids.numel() == 0:
            return torch.empty(0, self.model.args.vocab_size, dtype=torch.float32)
        start, total = self.pos, ids.numel()
        out_rows, hidden = [], []
        for end in self.policy.chunk_ends(start, start + total):
            chunk = ids[self.pos - start : end - start]
            rows = logits if logits == "all" or end == start + total else "none"
            out, h = self.model.forward(chunk, self.state, rows)
            self.tokens.extend(chunk.tolist())
            out_rows.append(out)
            hidden.append(h if logits == "all" else h[-1:])
            if end % self.policy.interval == 0:
                self.snapshots.add(self.state.snapshot())
        if self.policy.at_prefill_end and total > 1 and self.pos % self.policy.interval:
            self.snapshots.add(self.state.snapshot())
        self.last_hidden = hidden[0] if len(hidden) == 1 else torch.cat(hidden)
        if logits != "all":
            self.last_hidden = hidden[-1]
        return out_rows[0] if len(out_rows) == 1 else torch.cat(out_rows)

    def decode(self, token_id: int) -> torch.Tensor:
        """Feed one token; fp32 logits [vocab] for the next position. (`prefill` of one token,
        without its chunking: one token is one chunk, and ends on a snapshot position only
        when the next position is a multiple of the interval.)"""
        tid = int(token_id)
        if not 0 <= tid < self.model.args.vocab_size:
            self._ids([tid])  # raises its error
        ids = torch.tensor([tid], dtype=torch.int64, device=self.model.device)
        out, self.last_hidden = self.model.forward(ids, self.state, "all")
        self.tokens.append(tid)
        if self.pos % self.policy.interval == 0:
            self.snapshots.add(self.state.snapshot())
        return out[0]

    # -- state operations --------------------------------------------------------------------
    def fork(self) -> Session:
        """An independent copy of this session (same model, cloned state)."""
        twin = Session(self.model, self.state.fork(), self.tokens, self.snapshots.copy())
        twin.last_hidden = None if self.last_hidden is None else self.last_hidden.clone()
        return twin

    def truncate(self, n: int) -> int:
        """Rewind to position n (keep the first n tokens); returns how many tokens had to be
        prefilled again (0 when n is a snapshot position). `last_hidden` is cleared."""
        if not 0 <= n <= self.pos:
            raise ValueError(f"truncate({n}): expected 0 <= n <= {self.pos} (the position)")
        if n == self.pos:
            return 0
        if len(self.tokens) != self.pos:
            raise ValueError(
                f"truncate({n}): this session holds {self.pos} positions but knows "
                f"{len(self.tokens)} token ids (it was built from a bare state), so it cannot "
                "re-prefill; build it with `tokens=`"
            )
        snap = self.snapshots.latest_at_or_before(n)
        if snap is None:
            self.state = self.model.new_state()
        else:
            self.state.restore(snap)
        self.snapshots.drop_after(n)
        gap = self.tokens[self.pos : n]
        del self.tokens[self.pos :]
        if gap:
            self.prefill(gap, logits="none")
        self.last_hidden = None
        return len(gap)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the state, token ids and snapshots to a safetensors file (see `session_file`)."""
        from .session_file import save_session

        save_session(self, path)

    def load(self, path: str | os.PathLike[str]) -> None:
        """Replace this session's state with one saved by `save` from the same model config."""
        from .session_file import read_session

        self.state, self.tokens, self.snapshots = read_session(self.model, path, self.policy)
        self.last_hidden = None
