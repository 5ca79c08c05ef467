"""The V4 chat encoding against the official fixtures and the spec's worked examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsv4.engine.dsml import ToolCall, parse_completion
from dsv4.engine.encoding import EncodingError, encode_messages, render_tools
from dsv4.engine.tokenizer import get_tokenizer

DATA = Path(__file__).resolve().parent.parent / "data" / "encoding"
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"


def load_fixture(n: int) -> tuple[list[dict], str]:
    data = json.loads((DATA / f"test_input_{n}.json").read_text(encoding="utf-8"))
    if isinstance(data, dict):  # {"tools", "messages"}: the tools belong on the system message
        messages = data["messages"]
        messages[0]["tools"] = data["tools"]
    else:
        messages = data
    return messages, (DATA / f"test_output_{n}.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("n", "mode"), [(1, "thinking"), (2, "thinking"), (3, "thinking"), (4, "chat")]
)
def test_official_fixture(n, mode):
    messages, expected = load_fixture(n)
    assert encode_messages(messages, thinking_mode=mode) == expected


def test_fixture_does_not_mutate_messages():
    messages, _ = load_fixture(3)
    before = json.dumps(messages)
    encode_messages(messages, thinking_mode="thinking")
    assert json.dumps(messages) == before


def fixture_tools_text() -> tuple[str, str]:
    """The fixed TOOLS text around the schema lines, cut out of official fixture 1."""
    _, out = load_fixture(1)
    head_start = out.index("## Tools")
    head_end = out.index("### Available Tool Schemas\n\n") + len("### Available Tool Schemas\n\n")
    tail_start = out.index("\n\nYou MUST strictly follow")
    tail_end = out.index("<｜User｜>")
    return out[head_start:head_end], out[tail_start:tail_end]


GET_TIME = {
    "name": "get_time",
    "description": "Current time in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def test_worked_example_from_the_spec():
    messages = [
        {
            "role": "system",
            "content": "You are helpful.",
            "tools": [{"type": "function", "function": GET_TIME}],
        },
        {"role": "user", "content": "Time in Paris?"},
        {
            "role": "assistant",
            "reasoning_content": "Need the tool.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"city":"Paris","utc":false}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "14:05"},
    ]
    head, tail = fixture_tools_text()
    schema = (
        '{"name": "get_time", "description": "Current time in a city", "parameters": '
        '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}'
    )
    expected = (
        f"{BOS}You are helpful.\n\n{head}{schema}{tail}"
        "<｜User｜>Time in Paris?<｜Assistant｜><think>Need the tool.</think>\n\n"
        "<｜DSML｜tool_calls>\n"
        '<｜DSML｜invoke name="get_time">\n'
        '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n'
        '<｜DSML｜parameter name="utc" string="false">false</｜DSML｜parameter>\n'
        "</｜DSML｜invoke>\n"
        f"</｜DSML｜tool_calls>{EOS}<｜User｜><tool_result>14:05</tool_result><｜Assistant｜><think>"
    )
    assert encode_messages(messages, thinking_mode="thinking") == expected
    # Bare schemas (no "type": "function" wrapper) render the same block.
    assert render_tools([GET_TIME]) == render_tools([{"type": "function", "function": GET_TIME}])


SIMPLE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2+2?"},
]


def test_simple_chat_string_and_ids():
    text = encode_messages(SIMPLE, thinking_mode="chat")
    assert text == f"{BOS}You are a helpful assistant.<｜User｜>What is 2+2?<｜Assistant｜></think>"
    assert get_tokenizer().encode(text) == [
        0,
        3476,
        477,
        260,
        11502,
        22896,
        16,
        128803,
        3085,
        344,
        223,
        20,
        13,
        20,
        33,
        128804,
        128822,
    ]


def test_simple_thinking_ends_in_think():
    ids = get_tokenizer().encode(encode_messages(SIMPLE, thinking_mode="thinking"))
    assert (
        ids[-1] == 128821
        and ids[:-1] == get_tokenizer().encode(encode_messages(SIMPLE, thinking_mode="chat"))[:-1]
    )


def test_multi_turn_drops_earlier_reasoning():
    messages = [
        SIMPLE[0],
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "greet"},
        {"role": "user", "content": "1+1?"},
    ]
    chat = encode_messages(messages, thinking_mode="chat")
    assert chat.endswith(
        f"<｜User｜>hi<｜Assistant｜></think>Hello!{EOS}<｜User｜>1+1?<｜Assistant｜></think>"
    )
    thinking = encode_messages(messages, thinking_mode="thinking")
    assert thinking == chat[: -len("</think>")] + "<think>"
    kept = encode_messages(messages, thinking_mode="thinking", drop_thinking=False)
    assert "<｜Assistant｜><think>greet</think>Hello!" in kept


def test_tools_anywhere_keep_all_reasoning():
    messages = [
        {"role": "system", "content": "s", "tools": [GET_TIME]},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b", "reasoning_content": "old thought"},
        {"role": "user", "content": "c"},
    ]
    text = encode_messages(messages, thinking_mode="thinking")
    assert "<｜User｜>a<｜Assistant｜><think>old thought</think>b" in text


def test_dsml_token_ids():
    ids = get_tokenizer().encode("<｜DSML｜tool_calls>\n")
    assert ids == [30, 128825, 72461, 4941, 12548, 1018]


def test_tool_results_follow_call_order():
    calls = [
        {"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}}
        for i in ("a", "b")
    ]
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "b", "content": "B"},
        {"role": "tool", "tool_call_id": "a", "content": "A"},
        {"role": "user", "content": "and?"},
    ]
    text = encode_messages(messages, thinking_mode="chat")
    assert text.endswith(
        "<｜User｜><tool_result>A</tool_result>\n\n<tool_result>B</tool_result>\n\nand?"
        "<｜Assistant｜></think>"
    )


def test_assistant_tool_calls_render_like_dsml_and_parse_back():
    args = {"path": "a b.py", "lines": [1, 2], "deep": {"k": None}}
    call = {
        "id": "x",
        "type": "function",
        "function": {"name": "read", "arguments": json.dumps(args)},
    }
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "reasoning_content": "t", "tool_calls": [call]},
    ]
    prompt = encode_messages(messages, thinking_mode="thinking")
    generated = prompt[prompt.index("<think>") + len("<think>") :]
    assert parse_completion(generated).tool_calls == [ToolCall("read", args)]


def test_empty_tool_calls_list_emits_no_block():
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "done", "tool_calls": []},
    ]
    assert encode_messages(messages).endswith(f"</think>done{EOS}")


def test_reasoning_effort_max_goes_first_in_thinking_mode_only():
    text = encode_messages(SIMPLE, thinking_mode="thinking", reasoning_effort="max")
    lines = text[len(BOS) :].split("\n")
    assert lines[0] == "Reasoning Effort: Absolute maximum with no shortcuts permitted."
    assert lines[3] == "" and lines[4].startswith("You are a helpful assistant.")
    plain = encode_messages(SIMPLE, thinking_mode="thinking")
    assert text.endswith(plain[len(BOS) :])
    assert encode_messages(SIMPLE, thinking_mode="chat", reasoning_effort="max") == encode_messages(
        SIMPLE
    )
    assert encode_messages(SIMPLE, thinking_mode="thinking", reasoning_effort="high") == plain


def test_quick_instruction_tasks():
    query = [{"role": "user", "content": "weather?", "task": "query"}]
    assert encode_messages(query) == f"{BOS}<｜User｜>weather?<｜query｜>"
    action = [{"role": "user", "content": "x", "task": "action"}]
    assert encode_messages(action, thinking_mode="thinking").endswith(
        "<｜Assistant｜><think><｜action｜>"
    )
    title = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "T", "task": "title"},
    ]
    assert encode_messages(title).endswith(f"T{EOS}<｜title｜>")


def test_response_format_on_system():
    schema = {"type": "object"}
    text = encode_messages([{"role": "system", "content": "s", "response_format": schema}])
    assert text == (
        f"{BOS}s\n\n## Response Format:\n\nYou MUST strictly adhere to the following schema "
        'to reply:\n{"type": "object"}'
    )


def test_developer_turns_before_the_last_user_are_dropped_in_thinking_mode():
    messages = [
        {"role": "developer", "content": "internal"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "q"},
    ]
    assert "internal" not in encode_messages(messages, thinking_mode="thinking")
    assert "<｜User｜>internal" in encode_messages(messages, thinking_mode="chat")


def test_context_is_not_rendered_and_has_no_bos():
    context = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    new = [{"role": "user", "content": "q2"}]
    full = encode_messages(context + new, thinking_mode="chat")
    tail = encode_messages(new, thinking_mode="chat", context=context)
    assert full == encode_messages(context, thinking_mode="chat") + tail
    assert not tail.startswith(BOS)


@pytest.mark.parametrize(
    ("kwargs", "messages", "needle"),
    [
        ({"thinking_mode": "fast"}, SIMPLE, "thinking_mode='fast'"),
        ({"reasoning_effort": "low"}, SIMPLE, "reasoning_effort='low'"),
        ({}, [{"role": "robot", "content": "x"}], "message 0 has role 'robot'"),
        ({}, [{"role": "user", "content": "x", "task": "mask"}], "task 'mask'"),
        ({}, [{"role": "developer", "content": ""}], "message 0 (developer) has no content"),
    ],
)
def test_invalid_input_names_the_problem(kwargs, messages, needle):
    with pytest.raises(EncodingError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        encode_messages(messages, **kwargs)
