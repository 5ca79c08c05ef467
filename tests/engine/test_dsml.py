"""DSML tool calls: render/parse round trips, tolerant errors, and streaming == batch."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsv4.engine.dsml import (
    BLOCK_CLOSE,
    EOS,
    PARAM_CLOSE,
    ParsedCompletion,
    StreamParser,
    ToolCall,
    parse_completion,
    render_tool_calls,
    stream_events,
)

NOT_RUN = " The call was not run."

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "limit": {"type": "integer"}},
                "required": ["path"],
            },
        },
    },
    {"name": "run_tests", "description": "Run the tests", "parameters": {"type": "object"}},
]


def completion(calls: list[ToolCall], reasoning: str = "r", content: str = "") -> str:
    return f"{reasoning}</think>{content}\n\n{render_tool_calls(calls)}{EOS}"


# ---------------------------------------------------------------------------------------------
# Strategies: values with newlines, quotes, DSML-looking text, unicode, numbers, nested JSON.
# A string value may not contain its own closing tag or EOS: the format has no escaping.

_tricky = st.sampled_from(
    [
        '"',
        "'",
        "\n",
        "\n\n",
        '<｜DSML｜invoke name="x">',
        "</｜DSML｜invoke>",
        "<｜DSML｜tool_calls>",
        "</｜DSML｜tool_calls>",
        "<｜DSML｜parameter",
        "</think>",
        "<think>",
        "{",
        "}",
        ">",
        "<",
        "ü",
        "💡",
        "世界",
        "\\",
        "\t",
        " ",
    ]
)
_text = (
    st.lists(st.one_of(st.text(max_size=8), _tricky), max_size=6)
    .map("".join)
    .filter(lambda s: PARAM_CLOSE not in s and EOS not in s)
)
_number = st.one_of(
    st.integers(-(10**12), 10**12), st.floats(allow_nan=False, allow_infinity=False)
)
_json = st.recursive(
    st.one_of(st.none(), st.booleans(), _number, _text),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_text, inner, max_size=3)),
    max_leaves=8,
)
_ident = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,11}", fullmatch=True)
_call = st.builds(ToolCall, name=_ident, arguments=st.dictionaries(_ident, _json, max_size=4))
_prose = _text.filter(lambda s: "<｜DSML｜tool_calls>" not in s and "</think>" not in s)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=st.lists(_call, min_size=1, max_size=3), reasoning=_prose, content=_prose)
def test_render_then_parse_gives_the_same_calls(calls, reasoning, content):
    parsed = parse_completion(completion(calls, reasoning, content))
    assert parsed.errors == []
    assert parsed.tool_calls == calls
    assert (parsed.reasoning, parsed.content, parsed.finish) == (reasoning, content, "eos")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=st.lists(_call, max_size=2), content=_prose, cuts=st.lists(st.integers(0, 10**6)))
def test_streaming_any_chunking_equals_batch(calls, content, cuts):
    text = completion(calls, content=content) if calls else f"r</think>{content}{EOS}"
    _check_stream_equals_batch(text, cuts)


_fragments = st.sampled_from(
    [
        "</think>",
        "\n\n",
        "<｜DSML｜tool_calls>",
        "</｜DSML｜tool_calls>",
        '<｜DSML｜invoke name="read_file">',
        "</｜DSML｜invoke>",
        '<｜DSML｜parameter name="path" string="true">',
        "</｜DSML｜parameter>",
        '<｜DSML｜parameter name="limit" string="false">',
        EOS,
        "x",
        "12",
        " ",
        "\n",
        "<",
        "｜",
    ]
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(_fragments, max_size=25),
    cuts=st.lists(st.integers(0, 10**6)),
    thinking=st.booleans(),
)
def test_streaming_equals_batch_on_garbled_dsml(pieces, cuts, thinking):
    _check_stream_equals_batch("".join(pieces), cuts, thinking=thinking, tools=TOOLS)


def _check_stream_equals_batch(text, cuts, thinking=True, tools=None):
    points = sorted({c % (len(text) + 1) for c in cuts})
    chunks = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    events, result = stream_events(chunks, tools=tools, thinking=thinking)
    assert result == parse_completion(text, tools=tools, thinking=thinking)
    assert "".join(v for k, v in events if k == "reasoning") == result.reasoning
    assert "".join(v for k, v in events if k == "content") == result.content
    assert [v for k, v in events if k == "tool_call"] == result.tool_calls


# ---------------------------------------------------------------------------------------------
# Streaming behaviour


def test_tool_call_event_arrives_when_its_invoke_closes():
    text = completion([ToolCall("read_file", {"path": "a.py"}), ToolCall("run_tests", {})])
    parser = StreamParser(tools=TOOLS)
    first_close = text.index("</｜DSML｜invoke>") + len("</｜DSML｜invoke>")
    before = parser.feed(text[: first_close - 1])
    assert [k for k, _ in before] == ["reasoning"]
    after = parser.feed(text[first_close - 1 : first_close])
    assert after == [("tool_call", ToolCall("read_file", {"path": "a.py"}))]


def test_partial_marker_is_held_back_not_emitted_as_content():
    parser = StreamParser(thinking=False)
    assert parser.feed("Done.\n\n<｜DS") == [("content", "Done.")]
    assert parser.feed("ML｜tool_calls>\n") == []
    parser2 = StreamParser(thinking=False)
    assert parser2.feed("a <｜DS") == [("content", "a ")]
    assert parser2.feed("x") == [("content", "<｜DSx")]


def test_reasoning_is_held_back_until_it_cannot_be_think_end():
    parser = StreamParser(thinking=True)
    assert parser.feed("plan</thi") == [("reasoning", "plan")]
    assert parser.feed("nk>ok") == [("content", "ok")]
    assert parser.close() == ParsedCompletion("plan", "ok", [], [], "length")


def test_snapshot_is_open_until_close_and_feed_after_close_fails():
    parser = StreamParser(thinking=False)
    parser.feed("hi")
    assert parser.snapshot().finish == "open"
    assert parser.close().finish == "length"
    with pytest.raises(RuntimeError):
        parser.feed("more")


# ---------------------------------------------------------------------------------------------
# Tolerant parsing: what is kept, and the exact error messages


def test_plain_answer_in_both_modes():
    assert parse_completion("think</think>Hello." + EOS) == ParsedCompletion(
        "think", "Hello.", [], [], "eos"
    )
    assert parse_completion("Hello." + EOS, thinking=False) == ParsedCompletion(
        "", "Hello.", [], [], "eos"
    )


def test_unclosed_parameter():
    text = (
        'r</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="read_file">\n'
        '<｜DSML｜parameter name="path" string="true">a.py\n</｜DSML｜invoke>' + EOS
    )
    parsed = parse_completion(text, tools=TOOLS)
    assert parsed.tool_calls == []
    assert parsed.errors == [
        'Parameter "path" of tool "read_file" was not closed (its value starts '
        '"a.py\\n</｜DSML｜invoke>"): end it with </｜DSML｜parameter>.'
        " The call was not run."
    ]
    assert parsed.finish == "eos"


def test_unclosed_invoke_keeps_the_next_call():
    first = (
        '<｜DSML｜invoke name="read_file">\n'
        '<｜DSML｜parameter name="path" string="true">a</｜DSML｜parameter>\n'
    )
    second = '<｜DSML｜invoke name="run_tests">\n\n</｜DSML｜invoke>\n'
    text = f"r</think>\n\n<｜DSML｜tool_calls>\n{first}{second}{BLOCK_CLOSE}{EOS}"
    parsed = parse_completion(text, tools=TOOLS)
    assert parsed.tool_calls == [ToolCall("run_tests", {})]
    assert parsed.errors == [
        'The invoke of tool "read_file" was not closed: end each call with </｜DSML｜invoke>.'
        " The call was not run."
    ]


def test_bad_json_in_non_string_parameter():
    calls = [ToolCall("read_file", {"path": "a.py", "limit": 10})]
    text = completion(calls).replace('string="false">10<', 'string="false">ten lines<')
    parsed = parse_completion(text, tools=TOOLS)
    assert parsed.tool_calls == []
    assert parsed.errors == [
        'Parameter "limit" of tool "read_file" has string="false" but its value is not valid '
        'JSON: "ten lines" (Expecting value). Write JSON, or set string="true" for a plain string.'
        " The call was not run."
    ]


def test_unknown_tool_is_dropped_and_known_ones_kept():
    calls = [ToolCall("delete_repo", {"force": True}), ToolCall("run_tests", {})]
    parsed = parse_completion(completion(calls), tools=TOOLS)
    assert parsed.tool_calls == [ToolCall("run_tests", {})]
    assert parsed.errors == [
        'Unknown tool "delete_repo"; the available tools are: read_file, run_tests.'
        " The call was not run."
    ]


def test_unknown_tool_is_not_checked_without_schemas():
    calls = [ToolCall("delete_repo", {"force": True})]
    assert parse_completion(completion(calls)).tool_calls == calls


def test_missing_required_parameter():
    parsed = parse_completion(completion([ToolCall("read_file", {"limit": 5})]), tools=TOOLS)
    assert parsed.tool_calls == []
    assert parsed.errors == ['Tool "read_file" is missing required parameter "path".' + NOT_RUN]


def test_duplicate_parameter():
    text = completion([ToolCall("read_file", {"path": "a"})])
    param = '<｜DSML｜parameter name="path" string="true">a</｜DSML｜parameter>'
    parsed = parse_completion(text.replace(param, param + "\n" + param), tools=TOOLS)
    assert parsed.tool_calls == []
    assert parsed.errors == ['Tool "read_file" got parameter "path" twice.' + NOT_RUN]


def test_text_after_the_block_is_reported_and_calls_kept():
    calls = [ToolCall("run_tests", {})]
    text = completion(calls).replace(EOS, "\nI will now wait." + EOS)
    parsed = parse_completion(text, tools=TOOLS)
    assert parsed.tool_calls == calls
    assert parsed.errors == [
        'Text after the tool-call block is ignored: "I will now wait.". '
        "End the turn right after </｜DSML｜tool_calls>."
    ]


def test_cut_at_token_limit_inside_a_parameter():
    text = completion([ToolCall("read_file", {"path": "some/long/path.py"})])
    parsed = parse_completion(text[: text.index("long")], tools=TOOLS)
    assert parsed.finish == "length"
    assert parsed.tool_calls == []
    assert parsed.errors == [
        'The output was cut off at the token limit inside parameter "path" inside the invoke '
        'of tool "read_file", so the tool-call block is incomplete and its unfinished call was '
        "dropped. Make the call again, shorter."
    ]


def test_cut_at_token_limit_after_a_complete_call_keeps_it():
    calls = [ToolCall("run_tests", {}), ToolCall("read_file", {"path": "x"})]
    text = completion(calls)
    parsed = parse_completion(text[: text.index('<｜DSML｜invoke name="read_file"')], tools=TOOLS)
    assert parsed.tool_calls == calls[:1]
    assert parsed.finish == "length"
    assert len(parsed.errors) == 1 and "cut off at the token limit" in parsed.errors[0]


def test_cut_in_plain_text_is_length_without_error():
    parsed = parse_completion("still thinking about it")
    assert parsed == ParsedCompletion("still thinking about it", "", [], [], "length")


def test_missing_think_end_before_tool_calls():
    text = completion([ToolCall("run_tests", {})]).replace("r</think>", "r")
    parsed = parse_completion(text, tools=TOOLS)
    assert parsed.tool_calls == [ToolCall("run_tests", {})]
    assert parsed.errors == ["Missing </think>: close the reasoning before the tool-call block."]


def test_block_without_blank_line_is_still_parsed():
    text = "r</think>Running." + render_tool_calls([ToolCall("run_tests", {})]) + EOS
    parsed = parse_completion(text, tools=TOOLS)
    assert (parsed.content, parsed.tool_calls, parsed.errors) == (
        "Running.",
        [ToolCall("run_tests", {})],
        [],
    )


def test_malformed_invoke_tag():
    text = completion([ToolCall("run_tests", {})]).replace('name="run_tests"', "tool=run_tests")
    parsed = parse_completion(text, tools=TOOLS)
    assert parsed.tool_calls == []
    assert parsed.errors == [
        'Malformed invoke tag "<｜DSML｜invoke tool=run_tests>": write <｜DSML｜invoke '
        'name="TOOL_NAME">. The call was not run.'
    ]


def test_text_after_eos_is_reported():
    parsed = parse_completion("a</think>b" + EOS + "junk")
    assert (parsed.content, parsed.finish) == ("b", "eos")
    assert parsed.errors == ['Text after the end of the turn is ignored: "junk".']


def test_values_keep_json_types():
    args = {"n": 3, "x": 1.5, "ok": True, "none": None, "items": [1, "a"], "obj": {"k": [2]}}
    parsed = parse_completion(completion([ToolCall("t", args)]))
    assert parsed.tool_calls[0].arguments == args
    assert json.dumps(parsed.tool_calls[0].arguments) == json.dumps(args)
