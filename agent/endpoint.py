"""An OpenAI-compatible endpoint as the model: vLLM or SGLang serving V4, `dsv4 serve`, or
DeepSeek's API. Streaming chat completions with native tool calls (no DSML on the wire).

The server applies the chat template, so this backend sends the loop's messages as they
are (tools as the `tools` parameter) and turns the streamed deltas into a `ModelTurn`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dsv4.agent.backend import (
    BackendConfigError,
    BackendOptions,
    ModelError,
    ModelTurn,
    StreamCallback,
    openai_tools,
)
from dsv4.engine.dsml import ToolCall

API_KEY_ENV = ("DSV4_API_KEY", "OPENAI_API_KEY")


def check_url(url: str) -> str:
    """`url` when it is an http(s) URL with a host; BackendConfigError naming --endpoint."""
    from urllib.parse import urlsplit

    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BackendConfigError(
            f"--endpoint {url!r}: expected an http(s) URL such as http://127.0.0.1:8000/v1"
        )
    return url.strip()


def failure_text(url: str, exc: Exception) -> str:
    """What went wrong talking to `url`, with what to check when the server is unreachable."""
    import openai

    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        return (
            f"cannot reach endpoint {url} ({cause}); is the server running, "
            "and is the --endpoint URL right (…/v1)?"
        )
    return f"endpoint {url} failed: {exc}"


def resolve_api_key(flag: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """`--api-key`, else DSV4_API_KEY, else OPENAI_API_KEY."""
    env = os.environ if env is None else env
    return flag or next((env[k] for k in API_KEY_ENV if env.get(k)), None)


@dataclass
class _PendingCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class _Accumulator:
    """Streamed deltas gathered into one turn."""

    reasoning: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    calls: dict[int, _PendingCall] = field(default_factory=dict)
    finish: str | None = None
    usage: Any = None

    def add(self, chunk: Any, on_stream: StreamCallback | None) -> None:
        if getattr(chunk, "usage", None) is not None:
            self.usage = chunk.usage
        for choice in getattr(chunk, "choices", None) or []:
            self._add_delta(choice.delta, on_stream)
            self.finish = choice.finish_reason or self.finish

    def _add_delta(self, delta: Any, on_stream: StreamCallback | None) -> None:
        if delta is None:
            return
        # vLLM/SGLang and DeepSeek's API name the reasoning field differently.
        reasoning = getattr(delta, "reasoning_content", None) or getattr(delta, "reasoning", None)
        for kind, text, sink in (
            ("reasoning", reasoning, self.reasoning),
            ("content", delta.content, self.content),
        ):
            if text:
                sink.append(text)
                if on_stream is not None:
                    on_stream(kind, text)
        for part in delta.tool_calls or []:
            pending = self.calls.setdefault(part.index or 0, _PendingCall())
            pending.id = part.id or pending.id
            if part.function is not None:
                pending.name += part.function.name or ""
                pending.arguments += part.function.arguments or ""

    def turn(self, on_stream: StreamCallback | None) -> ModelTurn:
        calls, errors = [], []
        for index in sorted(self.calls):
            call, error = _decode_call(self.calls[index], index)
            if error:
                errors.append(error)
            else:
                calls.append(call)
                if on_stream is not None:
                    on_stream("tool_call", call)
        finish = "length" if self.finish == "length" else "eos"
        if finish == "length" and not calls:
            errors.append("the reply was cut off at the token limit before it finished")
        return ModelTurn(
            "".join(self.reasoning),
            "".join(self.content),
            calls,
            errors,
            finish,
            **_usage_counts(self.usage),
        )


def _decode_call(pending: _PendingCall, index: int) -> tuple[ToolCall, str]:
    name = pending.name or f"#{index}"
    try:
        args = json.loads(pending.arguments or "{}")
    except json.JSONDecodeError as exc:
        snippet = pending.arguments[:80]
        return ToolCall(
            name, {}
        ), f"tool call {name}: arguments are not valid JSON ({exc.msg}): {snippet!r}"
    if not isinstance(args, dict):
        return ToolCall(name, {}), f"tool call {name}: arguments must be a JSON object"
    if not pending.name:
        return ToolCall(name, {}), f"tool call {index} has no function name"
    return ToolCall(pending.name, args, pending.id), ""


def _usage_counts(usage: Any) -> dict[str, int]:
    if usage is None:
        return {}
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    # DeepSeek's API reports cache hits under its own name.
    cached = cached or getattr(usage, "prompt_cache_hit_tokens", None) or 0
    return {
        "prompt_tokens": int(usage.prompt_tokens or 0),
        "completion_tokens": int(usage.completion_tokens or 0),
        "reused_tokens": int(cached),
    }


def wire_messages(messages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The loop's messages as the chat API expects them (tools travel as a parameter)."""
    out = []
    for message in messages:
        m = {k: v for k, v in message.items() if k != "tools"}
        if m.get("role") == "assistant" and not m.get("reasoning_content"):
            m.pop("reasoning_content", None)
        out.append(m)
    return out


class EndpointBackend:
    """Streams chat completions from an OpenAI-compatible server."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        model: str | None = None,
        max_tokens: int = 8192,
        temperature: float = 0.0,
        seed: int | None = None,
        timeout_s: float = 600.0,
        thinking: bool | None = None,
    ) -> None:
        from openai import OpenAI

        self.thinking = thinking
        # Local servers accept any key; the client insists on a non-empty one.
        self.client = OpenAI(
            base_url=url, api_key=api_key or "none", timeout=timeout_s, max_retries=1
        )
        self.url, self.model = url, model
        self.max_tokens, self.temperature, self.seed = max_tokens, temperature, seed
        self.name = f"endpoint:{url}"

    @classmethod
    def from_options(cls, opts: BackendOptions) -> EndpointBackend:
        assert opts.endpoint
        return cls(
            check_url(opts.endpoint),
            resolve_api_key(opts.api_key),
            opts.endpoint_model,
            opts.max_tokens_per_turn,
            opts.temperature,
            opts.seed,
            thinking=opts.thinking,
        )

    def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_stream: StreamCallback | None = None,
    ) -> ModelTurn:
        import openai

        acc = _Accumulator()
        try:
            stream = self.client.chat.completions.create(**self._request(messages, tools))
            for chunk in stream:
                acc.add(chunk, on_stream)
        except openai.OpenAIError as exc:
            raise ModelError(failure_text(self.url, exc)) from exc
        return acc.turn(on_stream)

    def _request(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict:
        request: dict[str, Any] = {
            "model": self.model or self._default_model(),
            "messages": wire_messages(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        if tools:
            request["tools"] = openai_tools(tools)
        if self.seed is not None:
            request["seed"] = self.seed
        if self.thinking is not None:
            # The thinking switch as vLLM, SGLang and `dsv4 serve` read it.
            request["extra_body"] = {"chat_template_kwargs": {"thinking": self.thinking}}
        return request

    def _default_model(self) -> str:
        """The server's first model, asked once (vLLM/SGLang serve exactly one)."""
        import openai

        try:
            models = [m.id for m in self.client.models.list()]
        except openai.APIConnectionError as exc:
            raise ModelError(failure_text(self.url, exc)) from exc
        except openai.OpenAIError as exc:
            raise ModelError(
                f"endpoint {self.url}: cannot list models ({exc}); name one with --endpoint-model"
            ) from exc
        if not models:
            raise ModelError(f"endpoint {self.url} serves no models")
        self.model = models[0]
        return self.model

    def close(self) -> None:
        self.client.close()
