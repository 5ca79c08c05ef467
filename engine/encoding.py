"""The DeepSeek-V4 chat encoding: OpenAI-style messages in, the exact prompt string out.

V4 ships no Jinja template; its prompts come from the official Python encoder, and this
module reproduces that encoder's output byte for byte (the four official fixtures are the
test). The rules, in short (see the spec, §11.2):

* The prompt starts with BOS (unless a `context` prefix was already encoded) and has no
  separators between turns.
* `tool` messages become one user turn of `<tool_result>…</tool_result>` parts, in the order
  of the calls that asked for them; consecutive user turns merge, joined by a blank line.
* A user or developer turn that is followed by an assistant turn (or ends the prompt) opens
  the assistant: `<｜Assistant｜>` then `<think>` (thinking mode, from the last user turn on)
  or `</think>` (chat mode, or earlier turns whose reasoning is dropped).
* Reasoning of turns before the last user turn is dropped, unless any message has tools.

Token text is plain string data here; the tokenizer maps these markers to single ids.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Literal

from dsv4.engine.dsml import DSML, ToolCall, render_tool_calls, to_json
from dsv4.engine.errors import EngineError

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
THINK_START = "<think>"
THINK_END = "</think>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
LATEST_REMINDER = "<｜latest_reminder｜>"
TASK_TOKENS = {
    "action": "<｜action｜>",
    "query": "<｜query｜>",
    "authority": "<｜authority｜>",
    "domain": "<｜domain｜>",
    "title": "<｜title｜>",
    "read_url": "<｜read_url｜>",
}

ThinkingMode = Literal["chat", "thinking"]
ReasoningEffort = Literal["max", "high"] | None

# The fixed prompt texts below are data of the model's format, reproduced exactly.
REASONING_EFFORT_MAX = (
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to "
    "resolve the root cause, rigorously stress-testing your logic against all potential paths, "
    "edge cases, and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate "
    "step, considered alternative, and rejected hypothesis to ensure absolutely no assumption "
    "is left unchecked.\n\n"
)

_TOOLS_HEAD = f"""## Tools

You have access to a set of tools to help answer the user's question. You can invoke tools \
by writing a "<{DSML}tool_calls>" block like the following:

<{DSML}tool_calls>
<{DSML}invoke name="$TOOL_NAME">
<{DSML}parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</{DSML}parameter>
...
</{DSML}invoke>
<{DSML}invoke name="$TOOL_NAME2">
...
</{DSML}invoke>
</{DSML}tool_calls>

String parameters should be specified as is and set `string="true"`. For all other types \
(numbers, booleans, arrays, objects), pass the value in JSON format and set `string="false"`.

If thinking_mode is enabled (triggered by {THINK_START}), you MUST output your complete \
reasoning inside {THINK_START}...{THINK_END} BEFORE any tool calls or final response.

Otherwise, output directly after {THINK_END} with tool calls or final response.

### Available Tool Schemas

"""
_TOOLS_TAIL = (
    "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke "
    "tool calls.\n"
)
_RESPONSE_FORMAT = (
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n"
)


class EncodingError(EngineError, ValueError):
    """A message list the V4 encoding cannot express (names the message and the field)."""


def render_tools(tools: list[dict[str, Any]]) -> str:
    """The TOOLS block: instructions plus one JSON schema line per tool."""
    schemas = [to_json(t.get("function", t)) for t in tools]
    return _TOOLS_HEAD + "\n".join(schemas) + _TOOLS_TAIL


def tool_calls_from_openai(tool_calls: list[dict[str, Any]]) -> list[ToolCall]:
    """OpenAI `tool_calls` (arguments as a JSON string) → ToolCalls, as the encoder reads them.

    Arguments that are not a JSON object are kept whole under the key "arguments".
    """
    calls = []
    for tc in tool_calls:
        fn = tc["function"]
        raw = fn.get("arguments", "")
        args: Any = raw
        if isinstance(raw, str):
            try:
                args = json.loads(raw)
            except json.JSONDecodeError:
                args = None
        if not isinstance(args, dict):
            args = {"arguments": raw}
        calls.append(ToolCall(name=fn["name"], arguments=args, id=tc.get("id") or ""))
    return calls


# ---------------------------------------------------------------------------------------------
# Preprocessing: tool results into user turns, and dropping old reasoning


def _tool_result_text(content: Any) -> str:
    """A tool message's content; a list of blocks keeps its text blocks."""
    if not isinstance(content, list):
        return "" if content is None else str(content)
    parts = [
        b.get("text", "") if b.get("type") == "text" else f"[Unsupported {b.get('type')}]"
        for b in content
    ]
    return "\n\n".join(parts)


def _merge_tool_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fold `tool` messages, and user messages that follow a user turn, into user turns.

    User turns carry `_parts`: a list of ("text" | "tool_result", text, tool_call_id).
    """
    merged: list[dict[str, Any]] = []
    for msg in messages:
        msg = copy.deepcopy(msg)
        role = msg.get("role")
        prev = merged[-1] if merged and merged[-1].get("role") == "user" else None
        if role == "tool":
            part = ("tool_result", _tool_result_text(msg.get("content")), msg.get("tool_call_id"))
            if prev is not None:
                prev["_parts"].append(part)
            else:
                merged.append({"role": "user", "_parts": [part]})
        elif role == "user":
            part = ("text", msg.get("content") or "", None)
            if prev is not None and prev.get("task") is None:
                prev["_parts"].append(part)
            else:
                keep = {k: msg[k] for k in ("task", "wo_eos", "mask") if k in msg}
                merged.append({"role": "user", "_parts": [part], **keep})
        else:
            merged.append(msg)
    return merged


def _sort_tool_results(messages: list[dict[str, Any]]) -> None:
    """Order each user turn's tool results like the calls of the last assistant that made some."""
    order: dict[str, int] = {}
    for msg in messages:
        if msg.get("role") == "assistant" and msg.get("tool_calls"):
            ids = [tc.get("id") or tc.get("function", {}).get("id", "") for tc in msg["tool_calls"]]
            order = {tc_id: i for i, tc_id in enumerate(ids) if tc_id}
        elif msg.get("role") == "user" and "_parts" in msg and order:
            results = [p for p in msg["_parts"] if p[0] == "tool_result"]
            if len(results) > 1:
                # sorted() is stable: results with unknown ids keep their relative order at 0.
                ranked = iter(sorted(results, key=lambda p: order.get(p[2] or "", 0)))
                msg["_parts"] = [
                    next(ranked) if p[0] == "tool_result" else p for p in msg["_parts"]
                ]


def _last_user_index(messages: list[dict[str, Any]]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") in ("user", "developer"):
            return i
    return -1


def _drop_thinking(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Before the last user turn: assistants lose their reasoning, developer turns go."""
    last = _last_user_index(messages)
    kept = []
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role in ("user", "system", "tool", "latest_reminder") or i >= last:
            kept.append(msg)
        elif role == "assistant":
            kept.append({k: v for k, v in msg.items() if k != "reasoning_content"})
    return kept


# ---------------------------------------------------------------------------------------------
# Rendering one message


def _with_extras(text: str, msg: dict[str, Any]) -> str:
    """Append the TOOLS block and the response-format schema of a system/developer turn."""
    if msg.get("tools"):
        text += "\n\n" + render_tools(msg["tools"])
    if msg.get("response_format"):
        text += "\n\n" + _RESPONSE_FORMAT + to_json(msg["response_format"])
    return text


def _render_user(msg: dict[str, Any]) -> str:
    parts = msg.get("_parts")
    if parts is None:  # a user turn that bypassed merging (e.g. from `context`)
        return USER + (msg.get("content") or "")
    texts = [
        f"<tool_result>{t}</tool_result>" if kind == "tool_result" else t for kind, t, _ in parts
    ]
    return USER + "\n\n".join(texts)


def _render_assistant(
    index: int, messages: list[dict[str, Any]], mode: ThinkingMode, drop_thinking: bool
) -> str:
    msg = messages[index]
    calls = ""
    if msg.get("tool_calls"):
        calls = "\n\n" + render_tool_calls(tool_calls_from_openai(msg["tool_calls"]))
    # The answer to a quick-instruction task never carries a reasoning part.
    after_task = index > 0 and messages[index - 1].get("task") is not None
    keep = not drop_thinking or index > _last_user_index(messages)
    reasoning = ""
    if mode == "thinking" and not after_task and keep:
        reasoning = (msg.get("reasoning_content") or "") + THINK_END
    eos = "" if msg.get("wo_eos") else EOS
    return reasoning + (msg.get("content") or "") + calls + eos


def _render_body(
    index: int, messages: list[dict[str, Any]], mode: ThinkingMode, drop_thinking: bool
) -> str:
    msg = messages[index]
    role = msg.get("role")
    if role == "system":
        return _with_extras(msg.get("content") or "", msg)
    if role == "developer":
        if not msg.get("content"):
            raise EncodingError(f"message {index} (developer) has no content")
        return _with_extras(USER + msg["content"], msg)
    if role == "user":
        return _render_user(msg)
    if role == "latest_reminder":
        return LATEST_REMINDER + (msg.get("content") or "")
    if role == "assistant":
        return _render_assistant(index, messages, mode, drop_thinking)
    raise EncodingError(
        f"message {index} has role {role!r}; expected system, user, assistant, tool, "
        "developer or latest_reminder"
    )


def _render_transition(
    index: int, messages: list[dict[str, Any]], mode: ThinkingMode, drop_thinking: bool
) -> str:
    """What follows a turn that precedes an assistant/latest_reminder turn or ends the prompt."""
    msg = messages[index]
    task = msg.get("task")
    if task is not None:
        if task not in TASK_TOKENS:
            raise EncodingError(
                f"message {index} has task {task!r}; valid tasks: {', '.join(TASK_TOKENS)}"
            )
        if task != "action":
            return TASK_TOKENS[task]
        return ASSISTANT + (THINK_START if mode == "thinking" else THINK_END) + TASK_TOKENS[task]
    if msg.get("role") not in ("user", "developer"):
        return ""
    thinking = mode == "thinking" and (not drop_thinking or index >= _last_user_index(messages))
    return ASSISTANT + (THINK_START if thinking else THINK_END)


def _render(
    index: int,
    messages: list[dict[str, Any]],
    mode: ThinkingMode,
    drop_thinking: bool,
    effort: ReasoningEffort,
) -> str:
    prefix = REASONING_EFFORT_MAX if index == 0 and mode == "thinking" and effort == "max" else ""
    text = prefix + _render_body(index, messages, mode, drop_thinking)
    nxt = messages[index + 1].get("role") if index + 1 < len(messages) else None
    if nxt is None or nxt in ("assistant", "latest_reminder"):
        text += _render_transition(index, messages, mode, drop_thinking)
    return text


# ---------------------------------------------------------------------------------------------
# Entry point


def _check_options(thinking_mode: str, reasoning_effort: str | None) -> None:
    if thinking_mode not in ("chat", "thinking"):
        raise EncodingError(f"thinking_mode={thinking_mode!r}; expected 'chat' or 'thinking'")
    if reasoning_effort not in ("max", "high", None):
        raise EncodingError(
            f"reasoning_effort={reasoning_effort!r}; expected 'max', 'high' or None"
        )


def _prepare(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged = _merge_tool_messages(messages)
    _sort_tool_results(merged)
    return merged


def encode_messages(
    messages: list[dict[str, Any]],
    thinking_mode: ThinkingMode = "chat",
    drop_thinking: bool = True,
    reasoning_effort: ReasoningEffort = None,
    context: list[dict[str, Any]] | None = None,
) -> str:
    """The V4 prompt for `messages` (OpenAI-style dicts), exactly as the official encoder.

    `context`: earlier messages whose encoding the caller already has (e.g. a cached prefix);
    they shape this encoding (drop-thinking, tool-result order) but are not rendered, and no
    BOS is written. Tools go on a system or developer message under "tools".
    """
    _check_options(thinking_mode, reasoning_effort)
    context = context or []
    ctx = _prepare(context)
    # Tool-result order may depend on calls made in the context.
    full = ctx + _prepare(messages)
    _sort_tool_results(full)
    prompt = "" if context else BOS
    drop = drop_thinking and not any(m.get("tools") for m in full)
    start = len(ctx)
    if thinking_mode == "thinking" and drop:
        full = _drop_thinking(full)
        start = len(_drop_thinking(ctx))
    for i in range(start, len(full)):
        prompt += _render(i, full, thinking_mode, drop, reasoning_effort)
    return prompt
