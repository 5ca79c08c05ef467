"""The model backend protocol: one interface for the local engine, an endpoint and a script.

The loop hands a backend OpenAI-style messages and the tool schemas, and gets back one
`ModelTurn`. It never learns which backend answered. Malformed output is not an exception:
it arrives as `ModelTurn.errors`, which the loop feeds back to the model. `ModelError` is
for failures the model cannot fix (engine crash, endpoint down, script exhausted).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from dsv4.engine.dsml import ParsedCompletion, ToolCall

Finish = Literal["eos", "length", "open"]
# A streaming callback: ("reasoning" | "content", text delta) or ("tool_call", ToolCall).
StreamCallback = Callable[[str, Any], None]


class ModelError(RuntimeError):
    """The backend could not produce a turn (engine, endpoint or script failure)."""


class BackendConfigError(ValueError):
    """No usable backend could be built from the options (a usage error, exit code 2)."""


@dataclass
class ModelTurn:
    """One assistant turn as parsed from the model's output, with token accounting."""

    reasoning: str
    content: str
    tool_calls: list[ToolCall]
    errors: list[str] = field(default_factory=list)
    finish: Finish = "eos"
    prompt_tokens: int = 0  # tokens in the whole request
    completion_tokens: int = 0  # tokens the model generated for this turn
    reused_tokens: int = 0  # prompt tokens served from the cache (not prefilled again)
    raw: str = ""  # the raw completion text when the backend has one (local, scripted)

    @classmethod
    def from_parsed(cls, parsed: ParsedCompletion, **counts: Any) -> ModelTurn:
        return cls(
            reasoning=parsed.reasoning,
            content=parsed.content,
            tool_calls=list(parsed.tool_calls),
            errors=list(parsed.errors),
            finish=parsed.finish,
            **counts,
        )


class Backend(Protocol):
    """A model that answers a conversation with one assistant turn."""

    name: str  # for humans and the session log, e.g. "scripted:fix.jsonl"

    def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_stream: StreamCallback | None = None,
    ) -> ModelTurn:
        """The next assistant turn for `messages` (OpenAI style) given `tools` schemas."""
        ...

    def close(self) -> None: ...


@dataclass
class BackendOptions:
    """Which backend to build; exactly one of script, endpoint and model is used."""

    script: Path | None = None
    endpoint: str | None = None
    api_key: str | None = None
    endpoint_model: str | None = None  # model name sent to the endpoint
    model: str | None = None  # local checkpoint folder or Hugging Face id
    thinking: bool = True
    seed: int | None = None
    max_tokens_per_turn: int = 8192
    temperature: float = 0.0


NO_MODEL_HELP = (
    "no model to run: pass --model DIR|HF-ID (a local V4 checkpoint; dsv4 never downloads), "
    "set DSV4_MODEL, use --endpoint URL for an OpenAI-compatible server (vLLM, SGLang, "
    "`dsv4 serve`, DeepSeek's API; key via --api-key or DSV4_API_KEY), or replay a recorded "
    "session with --script FILE.jsonl"
)


def build_backend(opts: BackendOptions) -> Backend:
    """The backend the options select: script, then endpoint, then local model."""
    if opts.script is not None:
        from dsv4.agent.scripted import ScriptedBackend, ScriptError

        try:
            return ScriptedBackend(opts.script, thinking=opts.thinking)
        except ScriptError as exc:  # the user's file: a usage error, not a model failure
            raise BackendConfigError(f"--script: {exc}") from exc
    if opts.endpoint:
        from dsv4.agent.endpoint import EndpointBackend

        return EndpointBackend.from_options(opts)
    if opts.model:
        from dsv4.agent.local import LocalBackend

        return LocalBackend.from_options(opts)
    raise BackendConfigError(NO_MODEL_HELP)


def openai_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Wrap `{"name", "description", "parameters"}` schemas as OpenAI function tools."""
    return [t if "function" in t else {"type": "function", "function": t} for t in tools]
