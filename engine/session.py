"""A sequence being processed: prefill chunks of any length at any position, one-token decode.

Sessions share the model's weights and nothing else: each owns a `SequenceState`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .model import Model
from .state import SequenceState


class Session:
    def __init__(self, model: Model, state: SequenceState | None = None) -> None:
        self.model = model
        self.state = state if state is not None else model.new_state()
        self.last_hidden: torch.Tensor | None = (
            None  # pre-hc_head streams of the last call (MTP input)
        )

    @property
    def pos(self) -> int:
        """Number of tokens processed so far (the position of the next token)."""
        return self.state.pos

    def _ids(self, token_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(token_ids, dtype=torch.int64).reshape(-1).to(self.model.device)
        vocab = self.model.args.vocab_size
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise ValueError(f"token ids must lie in [0, {vocab}); got {ids.min()}..{ids.max()}")
        return ids

    def prefill(self, token_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Feed a chunk of tokens; fp32 logits [len, vocab], row i = after token i."""
        ids = self._ids(token_ids)
        if ids.numel() == 0:
            return torch.empty(0, self.model.args.vocab_size, dtype=torch.float32)
        logits, self.last_hidden = self.model.forward(ids, self.state)
        return logits

    def decode(self, token_id: int) -> torch.Tensor:
        """Feed one token; fp32 logits [vocab] for the next position."""
        return self.prefill([int(token_id)])[0]

    def fork(self) -> Session:
        """An independent copy of this session (same model, cloned state)."""
        twin = Session(self.model, self.state.fork())
        twin.last_hidden = None if self.last_hidden is None else self.last_hidden.clone()
        return twin
