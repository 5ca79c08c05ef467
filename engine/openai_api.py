"""The OpenAI chat-completions wire format, translated to and from the engine (no I/O).

In: a request body (already JSON-decoded) is checked field by field and becomes a
`ChatRequest`: messages ready for `encode_messages` (tools on the system message), sampling
parameters and the thinking mode. Anything the engine cannot honour is a `RequestError`
naming the field, which the server returns as a 4xx in OpenAI's error shape.

Out: a parsed completion becomes a `chat.completion` object; a stream of parser events
becomes `chat.completion.chunk` deltas. DSML tool calls leave as OpenAI `tool_calls` (name
and JSON-string arguments); reasoning leaves as `reasoning_content`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from dsv4.engine.dsml import ParsedCompletion, StreamEvent, ToolCall, to_json
from dsv4.engine.encoding import ReasoningEffort, ThinkingMode
from dsv4.engine.sampler import SamplingParams

ROLES = ("system", "developer", "user", "assistant", "tool")
FinishReason = Literal["stop", "length", "tool_calls"]
# OpenAI's effort names map onto V4's two levels; only "max" changes the prompt.
_EFFORTS: dict[str, ReasoningEffort] = {
    "minimal": "high",
    "low": "high",
    "medium": "high",
    "high": "high",
    "max": "max",
    "xhigh": "max",
}
_MAX_STOPS = 4


class RequestError(ValueError):
    """A request the server rejects: HTTP status, message, offending parameter, error code."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        code: str | None = None,
        status: int = 400,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code
        self.status, self.type = status, type_

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


@dataclass
class RequestLimits:
    """What the server allows per request."""

    served_model: str
    """The one model name the server answers to."""
    max_new_tokens: int = 1024
    """Most tokens generated per request; also the default when a request names none."""
    thinking_default: bool = False
    """Thinking mode when a request has no thinking switch."""


@dataclass
class ChatRequest:
    """A validated chat-completions request, in the engine's terms."""

    model: str
    messages: list[dict[str, Any]]  # for encode_messages; tools on the system message
    tools: list[dict[str, Any]] | None  # OpenAI function tools, for the DSML parser
    params: SamplingParams
    thinking_mode: ThinkingMode
    reasoning_effort: ReasoningEffort
    stream: bool
    include_usage: bool


# ---------------------------------------------------------------------------------------------
# Request


def parse_request(body: Any, limits: RequestLimits) -> ChatRequest:
    """Validate a decoded request body; `RequestError` names the first bad field."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("'model' is required and must be a string", "model")
    if model != limits.served_model:
        raise RequestError(
            f"the model {model!r} does not exist; this server serves {limits.served_model!r}",
            "model",
            "model_not_found",
            status=404,
        )
    _check_unsupported(body)
    tools = _parse_tools(body)
    messages = _parse_messages(body.get("messages"))
    stream_options = _optional(body, "stream_options", dict) or {}
    return ChatRequest(
        model=model,
        messages=_attach_tools(messages, tools),
        tools=tools,
        params=_sampling(body, limits),
        thinking_mode="thinking" if _thinking(body, limits.thinking_default) else "chat",
        reasoning_effort=_effort(body),
        stream=bool(_optional(body, "stream", bool)),
        include_usage=bool(stream_options.get("include_usage")),
    )


def _optional(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """`body[name]` if present and not null, checked against `kind` (bools are not numbers)."""
    value = body.get(name)
    if value is None:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise RequestError(f"'{name}' must be of type {names}; got {value!r}", name)
    return value


def _check_unsupported(body: dict[str, Any]) -> None:
    n = _optional(body, "n", int)
    if n is not None and n != 1:
        raise RequestError(f"'n'={n} is not supported; this server returns one choice", "n")
    if body.get("logprobs"):
        raise RequestError("'logprobs' is not supported by this server", "logprobs")
    choice = body.get("tool_choice")
    if choice is not None and choice not in ("auto", "none"):
        raise RequestError(
            "'tool_choice' must be 'auto' or 'none'; forcing a tool is not supported",
            "tool_choice",
        )


def _number(body: dict[str, Any], name: str, low: float, high: float, default: float) -> float:
    value = _optional(body, name, (int, float))
    if value is None:
        return default
    if not low <= value <= high:
        raise RequestError(f"'{name}'={value} is out of range [{low}, {high}]", name)
    return float(value)


def _sampling(body: dict[str, Any], limits: RequestLimits) -> SamplingParams:
    max_tokens = _optional(body, "max_completion_tokens", int)
    name = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, name = _optional(body, "max_tokens", int), "max_tokens"
    if max_tokens is not None and max_tokens < 1:
        raise RequestError(f"'{name}'={max_tokens} must be at least 1", name)
    top_p = _number(body, "top_p", 0.0, 1.0, 1.0)
    if top_p == 0:
        raise RequestError("'top_p' must be greater than 0", "top_p")
    return SamplingParams(
        temperature=_number(body, "temperature", 0.0, 2.0, 1.0),
        top_p=top_p,
        seed=_optional(body, "seed", int),
        # The server's limit caps the request's: a client asking for more gets finish "length".
        max_new_tokens=min(max_tokens or limits.max_new_tokens, limits.max_new_tokens),
        stop=_stops(body.get("stop")),
    )


def _stops(stop: Any) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise RequestError("'stop' must be a non-empty string or a list of them", "stop")
    if len(stops) > _MAX_STOPS:
        raise RequestError(f"'stop' has {len(stops)} entries; at most {_MAX_STOPS}", "stop")
    return stops


def _thinking(body: dict[str, Any], default: bool) -> bool:
    """The thinking switch: DeepSeek's `thinking: {"type": ...}` or vLLM/SGLang's
    `chat_template_kwargs: {"thinking": bool}` (also `enable_thinking`)."""
    thinking = body.get("thinking")
    if thinking is not None:
        kind = thinking.get("type") if isinstance(thinking, dict) else None
        if kind not in ("enabled", "disabled"):
            raise RequestError(
                '\'thinking\' must be {"type": "enabled"} or {"type": "disabled"}',
                "thinking",
            )
        return kind == "enabled"
    kwargs = _optional(body, "chat_template_kwargs", dict) or {}
    for key in ("thinking", "enable_thinking"):
        if key in kwargs:
            if not isinstance(kwargs[key], bool):
                raise RequestError(f"'chat_template_kwargs.{key}' must be a boolean", key)
            return kwargs[key]
    return default


def _effort(body: dict[str, Any]) -> ReasoningEffort:
    effort = _optional(body, "reasoning_effort", str)
    if effort is None:
        return None
    if effort not in _EFFORTS:
        raise RequestError(
            f"'reasoning_effort'={effort!r}; expected one of {', '.join(_EFFORTS)}",
            "reasoning_effort",
        )
    return _EFFORTS[effort]


# -- tools -------------------------------------------------------------------------------------


def _parse_tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    tools = _optional(body, "tools", list)
    if not tools or body.get("tool_choice") == "none":
        return None
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise RequestError(f"{where}: only tools of type 'function' are supported", where)
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise RequestError(f"{where}.function.name is required and must be a string", where)
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise RequestError(f"{where}.function.parameters must be a JSON Schema object", where)
    return [{"type": "function", "function": t["function"]} for t in tools]


def _attach_tools(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """V4 lists the tools in the system prompt: on the first system message, or a new one."""
    if not tools:
        return messages
    if messages[0]["role"] == "system":
        return [{**messages[0], "tools": tools}, *messages[1:]]
    return [{"role": "system", "content": "", "tools": tools}, *messages]


# -- messages ----------------------------------------------------------------------------------


def _parse_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list", "messages")
    out = [_parse_message(i, m) for i, m in enumerate(messages)]
    if out[-1]["role"] == "assistant":
        raise RequestError(
            "the last message is from the assistant; continuing an assistant turn is not supported",
            "messages",
        )
    return out


def _parse_message(i: int, msg: Any) -> dict[str, Any]:
    where = f"messages[{i}]"
    if not isinstance(msg, dict):
        raise RequestError(f"{where} must be an object", where)
    role = msg.get("role")
    if role not in ROLES:
        raise RequestError(
            f"{where}.role={role!r}; expected one of {', '.join(ROLES)}", f"{where}.role"
        )
    content = _content_text(msg.get("content"), f"{where}.content")
    if role in ("system", "developer"):
        # OpenAI's developer message is the system prompt of newer models.
        return {"role": "system", "content": content or ""}
    if role == "user":
        return {"role": "user", "content": content or ""}
    if role == "tool":
        call_id = msg.get("tool_call_id")
        if not isinstance(call_id, str):
            raise RequestError(f"{where}.tool_call_id is required for a tool message", where)
        return {"role": "tool", "content": content or "", "tool_call_id": call_id}
    return _parse_assistant(where, msg, content)


def _content_text(content: Any, where: str) -> str | None:
    """String content, or the text parts of a content list joined; other parts are refused."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(f"{where} must be a string or a list of content parts", where)
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise RequestError(f"{where}[{j}]: content of type {kind!r} is not supported", where)
        texts.append(str(part.get("text", "")))
    return "".join(texts)


def _parse_assistant(where: str, msg: dict[str, Any], content: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "assistant", "content": content or ""}
    reasoning = msg.get("reasoning_content")
    if reasoning is not None:
        if not isinstance(reasoning, str):
            raise RequestError(f"{where}.reasoning_content must be a string", where)
        out["reasoning_content"] = reasoning
    calls = msg.get("tool_calls")
    if calls:
        if not isinstance(calls, list):
            raise RequestError(f"{where}.tool_calls must be a list", where)
        out["tool_calls"] = [
            _parse_tool_call(f"{where}.tool_calls[{k}]", c) for k, c in enumerate(calls)
        ]
    return out


def _parse_tool_call(where: str, call: Any) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise RequestError(f"{where}.function.name is required", where)
    args = fn.get("arguments", "{}")
    if not isinstance(args, str):
        raise RequestError(f"{where}.function.arguments must be a JSON string", where)
    call_id = call.get("id") or ""
    return {"id": call_id, "type": "function", "function": {"name": fn["name"], "arguments": args}}


# ---------------------------------------------------------------------------------------------
# Response


def finish_reason(parsed: ParsedCompletion) -> FinishReason:
    """OpenAI's finish reason: tool calls win, a cut-off turn is "length", else "stop"."""
    if parsed.tool_calls:
        return "tool_calls"
    return "length" if parsed.finish == "length" else "stop"


def tool_call_id(completion_id: str, index: int) -> str:
    return f"call_{completion_id.removeprefix('chatcmpl-')}_{index}"


def openai_tool_call(call: ToolCall, call_id: str) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": call.name, "arguments": to_json(call.arguments)},
    }


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def completion_response(
    completion_id: str, created: int, model: str, parsed: ParsedCompletion, usage_: dict
) -> dict[str, Any]:
    """A non-streaming `chat.completion` object."""
    message: dict[str, Any] = {"role": "assistant", "content": parsed.content}
    if parsed.reasoning:
        message["reasoning_content"] = parsed.reasoning
    if parsed.tool_calls:
        message["tool_calls"] = [
            openai_tool_call(c, tool_call_id(completion_id, i))
            for i, c in enumerate(parsed.tool_calls)
        ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish_reason(parsed),
                "logprobs": None,
            }
        ],
        "usage": usage_,
    }


class ChunkBuilder:
    """`chat.completion.chunk` objects for one streamed completion."""

    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self.completion_id, self.created, self.model = completion_id, created, model
        self._calls = 0

    def chunk(self, delta: dict[str, Any], finish: FinishReason | None = None) -> dict[str, Any]:
        return {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }

    def role(self) -> dict[str, Any]:
        """The first chunk: the assistant role, no text yet."""
        return self.chunk({"role": "assistant", "content": ""})

    def event(self, event: StreamEvent) -> dict[str, Any]:
        """One parser event as a delta (reasoning, content, or one whole tool call)."""
        if event.kind == "tool_call":
            index, self._calls = self._calls, self._calls + 1
            call = openai_tool_call(event.value, tool_call_id(self.completion_id, index))
            return self.chunk({"tool_calls": [{"index": index, **call}]})
        key = "reasoning_content" if event.kind == "reasoning" else "content"
        return self.chunk({key: event.value})

    def final(self, parsed: ParsedCompletion) -> dict[str, Any]:
        return self.chunk({}, finish_reason(parsed))

    def usage(self, usage_: dict[str, Any]) -> dict[str, Any]:
        """The extra last chunk of `stream_options.include_usage`: no choices, only usage."""
        return {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage_,
        }


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event carrying a JSON object (or the literal `[DONE]`)."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


def models_list(model: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(model, created)]}


def model_card(model: str, created: int) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": created, "owned_by": "dsv4"}
