"""The OpenAI wire format: request validation and translation, responses and stream chunks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dsv4.engine.dsml import EOS, ToolCall, parse_completion, render_tool_calls, stream_events
from dsv4.engine.encoding import encode_messages
from dsv4.engine.openai_api import (
    ChunkBuilder,
    RequestError,
    RequestLimits,
    completion_response,
    parse_request,
    sse,
    usage,
)

LIMITS = RequestLimits("deepseek-v4", max_new_tokens=64)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read",
            "description": "Read a file.",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "limit": {"type": "integer"}},
                "required": ["path"],
            },
        },
    }
]


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "deepseek-v4", "messages": [{"role": "user", "content": "hi"}], **extra}


def rejected(request: Any, limits: RequestLimits = LIMITS) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_request(request, limits)
    return info.value


# -- requests ----------------------------------------------------------------------------------


def test_minimal_request_defaults() -> None:
    req = parse_request(body(), LIMITS)
    assert req.messages == [{"role": "user", "content": "hi"}]
    assert req.tools is None and not req.stream and not req.include_usage
    assert req.thinking_mode == "chat" and req.reasoning_effort is None
    assert req.params.max_new_tokens == 64 and req.params.temperature == 1.0


def test_sampling_fields_are_translated() -> None:
    req = parse_request(
        body(temperature=0, top_p=0.9, seed=7, stop="END", max_tokens=10, stream=True), LIMITS
    )
    p = req.params
    assert (p.temperature, p.top_p, p.seed, p.stop, p.max_new_tokens) == (0.0, 0.9, 7, ["END"], 10)
    assert req.stream


def test_server_limit_caps_max_tokens() -> None:
    assert parse_request(body(max_tokens=10_000), LIMITS).params.max_new_tokens == 64
    assert parse_request(body(max_completion_tokens=5), LIMITS).params.max_new_tokens == 5


@pytest.mark.parametrize(
    ("switch", "mode"),
    [
        ({"thinking": {"type": "enabled"}}, "thinking"),
        ({"thinking": {"type": "disabled"}}, "chat"),
        ({"chat_template_kwargs": {"thinking": True}}, "thinking"),
        ({"chat_template_kwargs": {"enable_thinking": False}}, "chat"),
    ],
)
def test_thinking_switches(switch: dict[str, Any], mode: str) -> None:
    limits = RequestLimits("deepseek-v4", thinking_default=mode != "thinking")
    assert parse_request(body(**switch), limits).thinking_mode == mode


def test_thinking_default_applies_without_a_switch() -> None:
    limits = RequestLimits("deepseek-v4", thinking_default=True)
    assert parse_request(body(), limits).thinking_mode == "thinking"


def test_reasoning_effort_maps_to_v4_levels() -> None:
    assert parse_request(body(reasoning_effort="max"), LIMITS).reasoning_effort == "max"
    assert parse_request(body(reasoning_effort="low"), LIMITS).reasoning_effort == "high"
    assert rejected(body(reasoning_effort="extreme")).param == "reasoning_effort"


def test_tools_go_on_the_system_message() -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "go"}]
    req = parse_request(body(messages=msgs, tools=TOOLS), LIMITS)
    assert req.messages[0] == {"role": "system", "content": "Be brief.", "tools": TOOLS}
    assert req.tools == TOOLS


def test_tools_without_system_message_get_one() -> None:
    req = parse_request(body(tools=TOOLS), LIMITS)
    assert req.messages[0] == {"role": "system", "content": "", "tools": TOOLS}
    assert "## Tools" in encode_messages(req.messages)


def test_tool_choice_none_drops_tools() -> None:
    req = parse_request(body(tools=TOOLS, tool_choice="none"), LIMITS)
    assert req.tools is None and "tools" not in req.messages[0]


def test_conversation_with_tool_calls_encodes_like_dsml() -> None:
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "read", "arguments": '{"path": "a.py"}'},
    }
    msgs = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "read "}, {"type": "text", "text": "a.py"}],
        },
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "print(1)"},
    ]
    req = parse_request(body(messages=msgs, tools=TOOLS), LIMITS)
    assert req.messages[1]["content"] == "read a.py"
    prompt = encode_messages(req.messages)
    assert render_tool_calls([ToolCall("read", {"path": "a.py"})]) in prompt
    assert "<tool_result>print(1)</tool_result>" in prompt


def test_developer_role_is_the_system_prompt() -> None:
    req = parse_request(
        body(messages=[{"role": "developer", "content": "x"}, {"role": "user", "content": "y"}]),
        LIMITS,
    )
    assert req.messages[0] == {"role": "system", "content": "x"}


@pytest.mark.parametrize(
    ("request_body", "param", "status"),
    [
        ([], None, 400),
        ({"messages": []}, "model", 400),
        (body(model="gpt-4o"), "model", 404),
        (body(messages=[]), "messages", 400),
        (body(messages="hi"), "messages", 400),
        (body(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role", 400),
        (body(messages=[{"role": "user", "content": 5}]), "messages[0].content", 400),
        (
            body(messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
            "messages[0].content",
            400,
        ),
        (body(messages=[{"role": "tool", "content": "x"}]), "messages[0]", 400),
        (body(messages=[{"role": "assistant", "content": "x"}]), "messages", 400),
        (body(temperature=3), "temperature", 400),
        (body(temperature="hot"), "temperature", 400),
        (body(top_p=0), "top_p", 400),
        (body(max_tokens=0), "max_tokens", 400),
        (body(max_tokens=True), "max_tokens", 400),
        (body(stop=["a", "b", "c", "d", "e"]), "stop", 400),
        (body(stop=[""]), "stop", 400),
        (body(n=2), "n", 400),
        (body(logprobs=True), "logprobs", 400),
        (body(tool_choice="required", tools=TOOLS), "tool_choice", 400),
        (body(tools=[{"type": "retrieval"}]), "tools[0]", 400),
        (body(tools=[{"type": "function", "function": {}}]), "tools[0]", 400),
        (body(thinking=True), "thinking", 400),
        (body(stream="yes"), "stream", 400),
    ],
)
def test_bad_requests_name_the_field(request_body: Any, param: str | None, status: int) -> None:
    err = rejected(request_body)
    assert err.status == status and err.param == param
    shape = err.body()["error"]
    assert set(shape) == {"message", "type", "param", "code"} and shape["message"]


def test_unknown_model_error_says_what_is_served() -> None:
    err = rejected(body(model="gpt-4o"))
    assert err.code == "model_not_found" and "deepseek-v4" in err.message


# -- responses ---------------------------------------------------------------------------------

COMPLETION = (
    "I will read it.</think>Reading now."
    + "\n\n"
    + render_tool_calls([ToolCall("read", {"path": "a.py", "limit": 20})])
    + EOS
)


def test_completion_response_carries_reasoning_content_and_tool_calls() -> None:
    parsed = parse_completion(COMPLETION, TOOLS, thinking=True)
    resp = completion_response("chatcmpl-abc", 1, "deepseek-v4", parsed, usage(10, 5, 4))
    choice = resp["choices"][0]
    assert resp["object"] == "chat.completion" and choice["finish_reason"] == "tool_calls"
    msg = choice["message"]
    assert msg["reasoning_content"] == "I will read it." and msg["content"] == "Reading now."
    (call,) = msg["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "read"
    assert json.loads(call["function"]["arguments"]) == {"path": "a.py", "limit": 20}
    assert resp["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 4},
    }


@pytest.mark.parametrize(("text", "reason"), [("Done." + EOS, "stop"), ("Cut of", "length")])
def test_finish_reasons(text: str, reason: str) -> None:
    parsed = parse_completion(text, thinking=False)
    resp = completion_response("chatcmpl-x", 1, "m", parsed, usage(1, 1, 0))
    assert resp["choices"][0]["finish_reason"] == reason
    assert "reasoning_content" not in resp["choices"][0]["message"]


def test_stream_chunks_reassemble_to_the_completion() -> None:
    pieces = [COMPLETION[i : i + 7] for i in range(0, len(COMPLETION), 7)]
    events, parsed = stream_events(pieces, TOOLS, thinking=True)
    builder = ChunkBuilder("chatcmpl-s", 1, "deepseek-v4")
    chunks = [builder.role(), *(builder.event(e) for e in events), builder.final(parsed)]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "I will read it."
    assert "".join(d.get("content", "") for d in deltas) == "Reading now."
    calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert [(c["index"], c["function"]["name"]) for c in calls] == [(0, "read")]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-s" for c in chunks)


def test_usage_chunk_and_sse_framing() -> None:
    builder = ChunkBuilder("chatcmpl-u", 1, "m")
    chunk = builder.usage(usage(3, 2, 0))
    assert chunk["choices"] == [] and chunk["usage"]["total_tokens"] == 5
    assert sse({"a": "é"}) == 'data: {"a": "é"}\n\n'.encode()
    assert sse("[DONE]") == b"data: [DONE]\n\n"
