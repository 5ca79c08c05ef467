"""The embedded engine as the model: V4 chat encoding, streaming DSML parsing, prefix reuse.

One engine session lives as long as the conversation. Each turn the whole conversation is
encoded again, compared with the tokens the session already holds, and only the tokens past
the common prefix are prefilled. The prompt layout (`prompt.py`) keeps earlier bytes
unchanged, so after the first turn the common prefix is everything but the new messages.
"""

from __future__ import annotations

from typing import Any

from dsv4.agent.backend import (
    BackendConfigError,
    BackendOptions,
    ModelError,
    ModelTurn,
    StreamCallback,
)
from dsv4.agent.prompt import render_prompt
from dsv4.engine.dsml import StreamParser

EOS_TEXT = "<｜end▁of▁sentence｜>"


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _text(exc: BaseException) -> str:
    """An error's message; an OSError as 'PATH: reason' without the '[Errno N]' prefix."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)


class LocalBackend:
    """Generates with an in-process model; keeps one session per conversation."""

    def __init__(self, model: Any, tokenizer: Any, params: Any, thinking: bool = True) -> None:
        self.model, self.tokenizer, self.params = model, tokenizer, params
        self.thinking = thinking
        self.session: Any = None
        self.held: list[int] = []  # the tokens whose KV state the session holds
        # Without `truncate`, a fork taken at the end of the last prompt (minus its final
        # token) is where a diverging next prompt restarts; `mark_len` tokens long.
        self.mark: Any = None
        self.mark_len = 0
        self.name = f"local:{getattr(model, 'name', 'model')}"

    @classmethod
    def from_options(cls, opts: BackendOptions) -> LocalBackend:
        from dsv4.engine import load_model
        from dsv4.engine.errors import EngineError
        from dsv4.engine.hub import CheckpointNotFound
        from dsv4.engine.sampler import SamplingParams
        from dsv4.engine.tokenizer import get_tokenizer

        assert opts.model
        try:
            model = load_model(opts.model)
        except CheckpointNotFound as exc:
            raise BackendConfigError(f"--model {opts.model}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise BackendConfigError(
                f"--model {opts.model}: a file of the checkpoint is not UTF-8 text "
                f"({exc.reason} at byte {exc.start}); is config.json corrupt?"
            ) from exc
        except (EngineError, OSError, ValueError) as exc:  # the folder named is not usable
            raise BackendConfigError(f"--model {opts.model}: cannot load: {_text(exc)}") from exc
        except RuntimeError as exc:  # out of memory, a device failure
            raise ModelError(f"cannot load model {opts.model}: {exc}") from exc
        params = SamplingParams(
            temperature=opts.temperature, seed=opts.seed, max_new_tokens=opts.max_tokens_per_turn
        )
        backend = cls(model, get_tokenizer(), params, thinking=opts.thinking)
        backend.name = f"local:{opts.model}"
        return backend

    def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_stream: StreamCallback | None = None,
    ) -> ModelTurn:
        ids = self.tokenizer.encode(render_prompt(messages, tools, thinking=self.thinking))
        reused = self._reuse(ids)
        try:
            start = self._checkpoint(ids, reused)
            parsed, text, generated, finish = self._generate(ids[start:], tools, on_stream)
        except (RuntimeError, ValueError) as exc:
            self.session, self.held = None, []  # the session state is unknown now
            raise ModelError(f"the engine failed while generating: {exc}") from exc
        # The last sampled token (EOS, or the one that hit the limit) is never fed back.
        self.held = (ids + generated)[: len(ids) + max(len(generated) - 1, 0)]
        turn = ModelTurn.from_parsed(
            parsed, prompt_tokens=len(ids), completion_tokens=len(generated), reused_tokens=reused
        )
        turn.raw = text
        if finish == "length" and not turn.errors and not parsed.tool_calls:
            turn.finish = "length"
        return turn

    def _reuse(self, ids: list[int]) -> int:
        """Trim the session to the prefix it shares with `ids`; returns that length."""
        if self.session is None:
            self.session, self.held = self.model.new_session(), []
        # Keep at least one new token: its logits start the generation.
        keep = min(common_prefix(self.held, ids), len(ids) - 1)
        if keep < len(self.held):
            if hasattr(self.session, "truncate"):
                self.session.truncate(keep)
            elif self.mark is not None and keep >= self.mark_len:
                self.session, keep = self.mark.fork(), self.mark_len
            else:
                self.session, keep = self.model.new_session(), 0
        self.held = self.held[:keep]
        return keep

    def _checkpoint(self, ids: list[int], reused: int) -> int:
        """For sessions without `truncate`: prefill all but the last prompt token and fork
        there. Returns where generation's own prefill starts."""
        if hasattr(self.session, "truncate") or not hasattr(self.session, "fork"):
            return reused
        if len(ids) - 1 > reused:
            self.session.prefill(ids[reused:-1], logits="none")
        self.mark, self.mark_len = self.session.fork(), len(ids) - 1
        return len(ids) - 1

    def _generate(
        self, new_ids: list[int], tools: list[dict[str, Any]], on_stream: StreamCallback | None
    ) -> tuple[Any, str, list[int], str]:
        """Prefill `new_ids`, decode to EOS or the limit; stream parsed events."""
        from dsv4.engine.generate import generate

        parser = StreamParser(tools=tools, thinking=self.thinking)
        pieces: list[str] = []
        generated: list[int] = []
        finish = "length"
        for event in generate(self.session, new_ids, self.params, self.tokenizer):
            if getattr(event, "token_id", None) is not None:
                generated.append(event.token_id)
            if getattr(event, "text", ""):
                pieces.append(event.text)
                _forward(parser.feed(event.text), on_stream)
            finish = getattr(event, "finish_reason", None) or finish
        text = "".join(pieces)
        if finish in ("eos", "stop") and not text.endswith(EOS_TEXT):
            # The parser reads EOS as "the turn ended cleanly".
            _forward(parser.feed(EOS_TEXT), on_stream)
            text += EOS_TEXT
        return parser.close(), text, generated, finish

    def close(self) -> None:
        self.session, self.held, self.mark = None, [], None


def _forward(events: list[Any], on_stream: StreamCallback | None) -> None:
    if on_stream is None:
        return
    for event in events:
        kind, value = event if isinstance(event, tuple) else (event.kind, event.value)
        on_stream(kind, value)
