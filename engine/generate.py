"""The generation loop: prefill the prompt, then sample and decode one token at a time.

It works on any `LogitsSession` (the engine's, or a scripted fake in tests) and streams one
`GenerationEvent` per new token with the text that token completed, then a final event with
the finish reason. Stop strings are matched on text, so one may span several tokens: text
that could still begin a stop string is held back until it is known not to.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from dsv4.engine.detokenizer import IncrementalDetokenizer
from dsv4.engine.sampler import Sampler, SamplingParams

FinishReason = Literal["eos", "stop", "length"]


class LogitsSession(Protocol):
    """The sequence state the loop drives (the engine's session satisfies it)."""

    def prefill(self, ids: list[int], logits: str = "all") -> torch.Tensor:
        """Append `ids`; fp32 logits for every position, [len(ids), vocab], or with
        `logits="last"` for the last one only, [1, vocab]."""
        ...

    def decode(self, token_id: int) -> torch.Tensor:
        """Append one token; fp32 logits of the next position, [vocab]."""
        ...


class _Detokenizable(Protocol):
    def id_to_token(self, tid: int) -> str: ...


@dataclass(frozen=True)
class GenerationEvent:
    """One new token and the text it completed, or (finish_reason set) the end of generation.

    The final event carries any text that was held back. Its token_id is the stop token for
    finish "eos" (sampled, but not decoded into the session), else None. Every token of a
    non-final event except the last one has been decoded into the session.
    """

    token_id: int | None
    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    generated_tokens: int = 0


class StopMatcher:
    """Finds stop strings across deltas; releases text once it cannot begin a stop string."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._pending = ""

    def push(self, delta: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string was hit). After a hit, text is cut there."""
        self._pending += delta
        hits = [(pos, s) for s in self.stops if (pos := self._pending.find(s)) != -1]
        if hits:
            pos = min(hits)[0]
            text, self._pending = self._pending[:pos], ""
            return text, True
        keep = self._held_length()
        cut = len(self._pending) - keep
        text, self._pending = self._pending[:cut], self._pending[cut:]
        return text, False

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return text

    def _held_length(self) -> int:
        """Length of the longest suffix of the pending text that begins some stop string."""
        longest = max((len(s) for s in self.stops), default=0)
        for n in range(min(longest - 1, len(self._pending)), 0, -1):
            tail = self._pending[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0


def generate(
    session: LogitsSession,
    prompt_ids: list[int],
    params: SamplingParams,
    tokenizer: _Detokenizable,
) -> Iterator[GenerationEvent]:
    """Generate after `prompt_ids` under `params`; yields events as tokens arrive."""
    if not prompt_ids:
        raise ValueError("generate needs at least one prompt token (V4 prompts start with BOS)")
    sampler = Sampler(params)
    detok = IncrementalDetokenizer(tokenizer)
    stops = StopMatcher(params.stop)
    stop_ids = set(params.stop_token_ids)
    logits = session.prefill(list(prompt_ids), logits="last")[-1]
    count = 0

    def final(reason: FinishReason, text: str, token: int | None = None) -> GenerationEvent:
        return GenerationEvent(token, text, reason, len(prompt_ids), count)

    while True:
        token = sampler.sample(logits)
        count += 1
        if token in stop_ids:
            text, hit = _drain(stops, detok)
            yield final("stop" if hit else "eos", text, token)
            return
        text, hit = stops.push(detok.push(token))
        yield GenerationEvent(token, text, None, len(prompt_ids), count)
        if hit:
            yield final("stop", "")
            return
        if count >= params.max_new_tokens:
            text, hit = _drain(stops, detok)
            yield final("stop" if hit else "length", text)
            return
        logits = session.decode(token)


def _drain(stops: StopMatcher, detok: IncrementalDetokenizer) -> tuple[str, bool]:
    """The text still held at the end of generation, cut at a stop string if one completes."""
    text, hit = stops.push(detok.flush())
    return (text, True) if hit else (text + stops.flush(), False)
