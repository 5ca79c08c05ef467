"""Next-token sampling: temperature, top-k, top-p, and a seeded generator per request.

Sampling draws with the Gumbel-max form of the reference generator (`probs / Exp(1)` noise,
then argmax), which picks token i with probability probs[i], from the sampler's own
`torch.Generator`: two samplers with the same seed and the same logits give the same tokens,
whatever else runs in the process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from dsv4.engine.errors import EngineError
from dsv4.engine.tokenizer import EOS_ID


class SamplingParamsError(EngineError, ValueError):
    """A sampling option outside its valid range (the message names the field)."""


@dataclass
class SamplingParams:
    """Per-request generation options."""

    temperature: float = 1.0
    """Softmax temperature; 0 means greedy (argmax). The model card recommends 1.0."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability sums to >= top_p."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 turns the filter off."""
    seed: int | None = None
    """Seed of the sampler's generator; None draws a fresh one (not reproducible)."""
    max_new_tokens: int = 512
    """Generation stops after this many new tokens (finish reason "length")."""
    stop: list[str] = field(default_factory=list)
    """Strings that end generation; the stop string itself is not part of the output."""
    stop_token_ids: tuple[int, ...] = (EOS_ID,)
    """Token ids that end generation (finish reason "eos"); V4's EOS is id 1."""

    def __post_init__(self) -> None:
        def bad(name: str, value: object, expected: str) -> SamplingParamsError:
            return SamplingParamsError(f"SamplingParams.{name}={value!r}: expected {expected}")

        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise bad("temperature", self.temperature, "a finite number >= 0 (0 = greedy)")
        if not (0 < self.top_p <= 1):
            raise bad("top_p", self.top_p, "a number in (0, 1]")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad("top_k", self.top_k, "an integer >= 0 (0 = off)")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise bad("seed", self.seed, "an integer or None")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise bad("max_new_tokens", self.max_new_tokens, "an integer >= 1")
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            raise bad("stop", self.stop, "a list of non-empty strings")
        self.stop = list(self.stop)
        self.stop_token_ids = tuple(self.stop_token_ids)
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise bad("stop_token_ids", self.stop_token_ids, "non-negative token ids")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k / top-p nucleus to -inf.  logits: fp32 [vocab]."""
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the first stays.
        drop_sorted = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class Sampler:
    """Draws token ids from logits under one request's `SamplingParams`."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.generator = torch.Generator(device="cpu")
        if params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(params.seed)

    def sample(self, logits: torch.Tensor) -> int:
        """One token id from next-token logits (fp32 [vocab], any device)."""
        if logits.dim() != 1:
            raise ValueError(
                f"Sampler.sample expects logits of shape [vocab]; got {list(logits.shape)}"
            )
        logits = logits.detach().float().cpu()
        if self.params.greedy:
            return int(torch.argmax(logits))
        logits = filter_logits(
            logits / self.params.temperature, self.params.top_k, self.params.top_p
        )
        probs = torch.softmax(logits, dim=-1)
        noise = torch.empty_like(probs).exponential_(1.0, generator=self.generator)
        return int(torch.argmax(probs / noise))
