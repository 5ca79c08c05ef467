"""DSML tool calls: render them the way the V4 encoder does, and parse them back tolerantly.

A V4 completion (the text generated after the prompt) reads

    [reasoning "</think>"] content ["\\n\\n" <｜DSML｜tool_calls> block] "<｜end▁of▁sentence｜>"

The official parser raises on the first defect. Ours keeps every well-formed part and turns
each defect into a short message the model can act on (`ParsedCompletion.errors`), because a
malformed tool call is an observation for the agent, not a crash. One state machine serves
both the batch parser and the streaming one, so `StreamParser` over any chunking of a text
ends in exactly `parse_completion(text)`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

DSML = "｜DSML｜"
EOS = "<｜end▁of▁sentence｜>"
THINK_END = "</think>"
BLOCK_OPEN = f"<{DSML}tool_calls>"
BLOCK_CLOSE = f"</{DSML}tool_calls>"
INVOKE_OPEN = f"<{DSML}invoke"
INVOKE_CLOSE = f"</{DSML}invoke>"
PARAM_OPEN = f"<{DSML}parameter"
PARAM_CLOSE = f"</{DSML}parameter>"
# The encoder separates content from the block with a blank line; that separator is not content.
_SEP_BLOCK_OPEN = "\n\n" + BLOCK_OPEN

Finish = Literal["eos", "length", "open"]


@dataclass(frozen=True)
class ToolCall:
    """One tool invocation: the tool's name and its decoded arguments."""

    name: str
    arguments: dict[str, Any]
    id: str = ""


@dataclass
class ParsedCompletion:
    """What the model generated, split into parts.

    finish: "eos" when the text ends with the end-of-sentence token; "length" when it ends
    without one (generation was cut); "open" only for a `StreamParser.snapshot()` of a stream
    that is still running.
    """

    reasoning: str
    content: str
    tool_calls: list[ToolCall]
    errors: list[str] = field(default_factory=list)
    finish: Finish = "eos"


class StreamEvent(NamedTuple):
    """("reasoning", text) | ("content", text) | ("tool_call", ToolCall)."""

    kind: Literal["reasoning", "content", "tool_call"]
    value: Any


# ---------------------------------------------------------------------------------------------
# Rendering (shared with the chat encoder)


def to_json(value: Any) -> str:
    """JSON as the encoder writes it: non-ASCII kept, default `", "` / `": "` separators."""
    return json.dumps(value, ensure_ascii=False)


def _render_parameter(name: str, value: Any) -> str:
    is_str = isinstance(value, str)
    text = value if is_str else to_json(value)
    flag = "true" if is_str else "false"
    return f'<{DSML}parameter name="{name}" string="{flag}">{text}{PARAM_CLOSE}'


def render_tool_calls(calls: list[ToolCall]) -> str:
    """The `<｜DSML｜tool_calls>` block for `calls` (no leading blank line, no EOS)."""
    invokes = []
    for call in calls:
        params = "\n".join(_render_parameter(k, v) for k, v in call.arguments.items())
        invokes.append(f'{INVOKE_OPEN} name="{call.name}">\n{params}\n{INVOKE_CLOSE}')
    return BLOCK_OPEN + "\n" + "\n".join(invokes) + "\n" + BLOCK_CLOSE


# ---------------------------------------------------------------------------------------------
# Tool schemas


@dataclass(frozen=True)
class _Schema:
    required: tuple[str, ...]


def _schemas(tools: list[dict[str, Any]] | None) -> dict[str, _Schema] | None:
    """name -> schema for OpenAI tools (`{"type": "function", "function": {...}}` or bare)."""
    if tools is None:
        return None
    out = {}
    for tool in tools:
        fn = tool.get("function", tool)
        params = fn.get("parameters") or {}
        out[fn["name"]] = _Schema(tuple(params.get("required") or ()))
    return out


def _quote(text: str, limit: int = 60) -> str:
    """A short, unambiguous quotation of a model fragment for an error message."""
    if len(text) > limit:
        text = text[:limit] + "…"
    return json.dumps(text, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Scanning


def _find_marker(
    buf: str, start: int, markers: tuple[str, ...], final: bool
) -> tuple[int, str | None]:
    """Earliest marker in `buf[start:]` that no earlier, still-incomplete marker could precede.

    Returns (position, marker) on a match, or (safe, None) when there is none yet: text in
    `buf[start:safe]` can no longer become part of a marker (at `final`, safe = len(buf)).
    """
    best, best_marker = len(buf), None
    for m in markers:
        pos = buf.find(m, start)
        if pos != -1 and (pos < best or (pos == best and len(m) > len(best_marker or ""))):
            best, best_marker = pos, m
    if final:
        return best, best_marker
    # A marker that starts before `best` but runs past the end of the buffer could still win.
    longest = max(len(m) for m in markers)
    for q in range(max(start, len(buf) - longest + 1), min(best, len(buf))):
        tail = buf[q:]
        if any(len(m) > len(tail) and m.startswith(tail) for m in markers):
            return q, None
    return best, best_marker


_INVOKE_HEAD = re.compile(r'\s*name="([^"]*)"\s*', re.DOTALL)
_PARAM_HEAD = re.compile(r'\s*name="([^"]*)"\s+string="(true|false)"\s*', re.DOTALL)


@dataclass
class _Call:
    """A tool call being read; `bad` once any part of it is malformed."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    bad: bool = False
    param: str = ""  # the parameter whose value is being read
    param_is_str: bool = True


# ---------------------------------------------------------------------------------------------
# The state machine

_State = Literal[
    "reasoning", "content", "block", "invoke_head", "invoke", "param_head", "value", "after", "done"
]


class StreamParser:
    """Incremental completion parser: `feed` deltas, then `close` for the full result."""

    def __init__(self, tools: list[dict[str, Any]] | None = None, thinking: bool = True) -> None:
        self._schemas = _schemas(tools)
        self._buf = ""
        self._pos = 0
        self._state: _State = "reasoning" if thinking else "content"
        self._reasoning: list[str] = []
        self._content: list[str] = []
        self._calls: list[ToolCall] = []
        self._errors: list[str] = []
        self._call: _Call | None = None
        self._finish: Finish = "open"
        self._closed = False

    # -- public ---------------------------------------------------------------------------

    def feed(self, delta: str) -> list[StreamEvent]:
        """Add generated text; return the events that became certain."""
        if self._closed:
            raise RuntimeError("StreamParser.feed after close()")
        self._buf += delta
        return self._run(final=False)

    def flush(self) -> list[StreamEvent]:
        """End of generation: return the events held back until now (text that could have
        begun a marker). After this, `feed` is an error."""
        if self._closed:
            return []
        self._closed = True
        return self._run(final=True)

    def close(self) -> ParsedCompletion:
        """End of generation: settle what was held back and return the full result."""
        self.flush()
        return self.snapshot()

    def snapshot(self) -> ParsedCompletion:
        """The result so far (finish "open" until the stream is closed)."""
        return ParsedCompletion(
            reasoning="".join(self._reasoning),
            content="".join(self._content),
            tool_calls=list(self._calls),
            errors=list(self._errors),
            finish=self._finish,
        )

    # -- driver ---------------------------------------------------------------------------

    def _run(self, final: bool) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        while self._step(final, events):
            pass
        if final:
            self._finalize()
        return events

    def _step(self, final: bool, events: list[StreamEvent]) -> bool:
        """Advance one transition; False when more text is needed (or at the end)."""
        handler = getattr(self, f"_on_{self._state}")
        return handler(final, events)

    def _scan(self, markers: tuple[str, ...], final: bool) -> tuple[int, str | None]:
        return _find_marker(self._buf, self._pos, markers, final)

    def _emit_text(self, kind: Literal["reasoning", "content"], end: int, events: list) -> None:
        text = self._buf[self._pos : end]
        if text:
            (self._reasoning if kind == "reasoning" else self._content).append(text)
            events.append(StreamEvent(kind, text))
        self._pos = end

    def _error(self, message: str) -> None:
        self._errors.append(message)

    def _reject(self, call: _Call, message: str) -> None:
        """A defect in a call: the call is dropped, and the model is told so."""
        self._errors.append(message + " The call was not run.")
        call.bad = True

    # -- text states ----------------------------------------------------------------------

    def _on_reasoning(self, final: bool, events: list[StreamEvent]) -> bool:
        pos, marker = self._scan((THINK_END, _SEP_BLOCK_OPEN, BLOCK_OPEN, EOS), final)
        self._emit_text("reasoning", pos, events)
        if marker is None:
            return False
        self._pos = pos + len(marker)
        if marker == THINK_END:
            self._state = "content"
        elif marker == EOS:
            self._error("The reasoning was never closed: write </think> before the answer.")
            self._end_eos()
        else:
            self._error("Missing </think>: close the reasoning before the tool-call block.")
            self._state = "block"
        return True

    def _on_content(self, final: bool, events: list[StreamEvent]) -> bool:
        pos, marker = self._scan((_SEP_BLOCK_OPEN, BLOCK_OPEN, EOS), final)
        self._emit_text("content", pos, events)
        if marker is None:
            return False
        self._pos = pos + len(marker)
        if marker == EOS:
            self._end_eos()
        else:
            self._state = "block"
        return True

    def _on_after(self, final: bool, events: list[StreamEvent]) -> bool:
        pos, marker = self._scan((EOS,), final)
        if marker is None and not final:
            return False  # the stray text (if any) is reported once, when it is complete
        stray = self._buf[self._pos : pos]
        if stray.strip():
            self._error(
                f"Text after the tool-call block is ignored: {_quote(stray.strip())}. "
                "End the turn right after </｜DSML｜tool_calls>."
            )
        self._pos = pos + len(marker or "")
        if marker is None:
            return False
        self._end_eos()
        return True

    def _on_done(self, final: bool, events: list[StreamEvent]) -> bool:
        return False

    def _end_eos(self) -> None:
        self._state = "done"
        self._finish = "eos"

    # -- block states ---------------------------------------------------------------------

    def _stray(self, end: int, where: str) -> None:
        text = self._buf[self._pos : end].strip()
        if not text:
            return
        if self._call is None:
            self._error(f"Unexpected text {where} is ignored: {_quote(text)}.")
        else:
            self._reject(self._call, f"Unexpected text {where}: {_quote(text)}.")

    def _on_block(self, final: bool, events: list[StreamEvent]) -> bool:
        """Between invokes: expect an invoke or the end of the block."""
        pos, marker = self._scan((INVOKE_OPEN, BLOCK_CLOSE, EOS), final)
        if marker is None:
            return False
        self._stray(pos, "in the tool-call block")
        self._pos = pos + len(marker)
        if marker == INVOKE_OPEN:
            self._state = "invoke_head"
        elif marker == BLOCK_CLOSE:
            self._state = "after"
        else:
            self._error("The tool-call block was not closed: end it with </｜DSML｜tool_calls>.")
            self._end_eos()
        return True

    def _on_invoke_head(self, final: bool, events: list[StreamEvent]) -> bool:
        pos, marker = self._scan((">",), final)
        if marker is None:
            return False
        head = self._buf[self._pos : pos]
        self._pos = pos + 1
        match = _INVOKE_HEAD.fullmatch(head)
        self._call = _Call(name=match.group(1) if match else "")
        if not match:
            self._reject(
                self._call,
                f"Malformed invoke tag {_quote(INVOKE_OPEN + head + '>')}: "
                f'write {INVOKE_OPEN} name="TOOL_NAME">.',
            )
        self._state = "invoke"
        return True

    def _on_invoke(self, final: bool, events: list[StreamEvent]) -> bool:
        """Inside an invoke: parameters until </｜DSML｜invoke>."""
        markers = (PARAM_OPEN, INVOKE_CLOSE, INVOKE_OPEN, BLOCK_CLOSE, EOS)
        pos, marker = self._scan(markers, final)
        if marker is None:
            return False
        assert self._call is not None
        self._stray(pos, f"inside the invoke of {_quote(self._call.name)}")
        self._pos = pos + len(marker)
        if marker == PARAM_OPEN:
            self._state = "param_head"
        elif marker == INVOKE_CLOSE:
            self._finish_call(events)
            self._state = "block"
        else:
            self._unclosed_invoke()
            self._after_unclosed(marker)
        return True

    def _on_param_head(self, final: bool, events: list[StreamEvent]) -> bool:
        pos, marker = self._scan((">",), final)
        if marker is None:
            return False
        assert self._call is not None
        head = self._buf[self._pos : pos]
        self._pos = pos + 1
        match = _PARAM_HEAD.fullmatch(head)
        if match:
            self._call.param, self._call.param_is_str = match.group(1), match.group(2) == "true"
        else:
            self._reject(
                self._call,
                f"Malformed parameter tag in the invoke of {_quote(self._call.name)}: "
                f'{_quote(PARAM_OPEN + head + ">")}; write {PARAM_OPEN} name="NAME" '
                'string="true|false">VALUE</｜DSML｜parameter>.',
            )
            self._call.param = ""
        self._state = "value"
        return True

    def _on_value(self, final: bool, events: list[StreamEvent]) -> bool:
        # A value runs to its closing tag: DSML-looking text inside a value is data.
        pos, marker = self._scan((PARAM_CLOSE, EOS), final)
        if marker is None:
            return False
        assert self._call is not None
        value = self._buf[self._pos : pos]
        self._pos = pos + len(marker)
        if marker == PARAM_CLOSE:
            self._store_param(value)
            self._state = "invoke"
            return True
        self._reject(
            self._call,
            f"Parameter {_quote(self._call.param)} of tool {_quote(self._call.name)} was not "
            f"closed (its value starts {_quote(value, 40)}): end it with {PARAM_CLOSE}.",
        )
        self._call = None
        self._end_eos()
        return True

    # -- calls ----------------------------------------------------------------------------

    def _store_param(self, raw: str) -> None:
        call = self._call
        assert call is not None
        if call.bad and not call.param:
            return
        if call.param in call.arguments:
            self._reject(
                call, f"Tool {_quote(call.name)} got parameter {_quote(call.param)} twice."
            )
            return
        if call.param_is_str:
            call.arguments[call.param] = raw
            return
        try:
            call.arguments[call.param] = json.loads(raw)
        except json.JSONDecodeError as exc:
            self._reject(
                call,
                f"Parameter {_quote(call.param)} of tool {_quote(call.name)} has "
                f'string="false" but its value is not valid JSON: {_quote(raw, 40)} '
                f'({exc.msg}). Write JSON, or set string="true" for a plain string.',
            )

    def _finish_call(self, events: list[StreamEvent]) -> None:
        call, self._call = self._call, None
        assert call is not None
        if call.bad or not self._valid_for_schema(call):
            return
        tool_call = ToolCall(name=call.name, arguments=call.arguments)
        self._calls.append(tool_call)
        events.append(StreamEvent("tool_call", tool_call))

    def _valid_for_schema(self, call: _Call) -> bool:
        if self._schemas is None:
            return True
        schema = self._schemas.get(call.name)
        if schema is None:
            known = ", ".join(sorted(self._schemas)) or "none"
            self._reject(
                call, f"Unknown tool {_quote(call.name)}; the available tools are: {known}."
            )
            return False
        missing = [_quote(p) for p in schema.required if p not in call.arguments]
        if missing:
            self._reject(
                call,
                f"Tool {_quote(call.name)} is missing required parameter {', '.join(missing)}.",
            )
        return not missing

    def _unclosed_invoke(self) -> None:
        assert self._call is not None
        self._reject(
            self._call,
            f"The invoke of tool {_quote(self._call.name)} was not closed: "
            f"end each call with {INVOKE_CLOSE}.",
        )
        self._call = None

    def _after_unclosed(self, marker: str) -> None:
        if marker == INVOKE_OPEN:
            self._state = "invoke_head"
        elif marker == BLOCK_CLOSE:
            self._state = "after"
        else:
            self._error("The tool-call block was not closed: end it with </｜DSML｜tool_calls>.")
            self._end_eos()

    # -- end of text ----------------------------------------------------------------------

    def _finalize(self) -> None:
        """At close: report what the end of the text left open, and text after EOS."""
        if self._state == "done":
            rest = self._buf[self._pos :]
            if rest:
                self._error(f"Text after the end of the turn is ignored: {_quote(rest)}.")
            return
        self._finish = "length"
        if self._state in ("reasoning", "content", "after"):
            return
        where = ""
        if self._call is not None:
            where = f" inside the invoke of tool {_quote(self._call.name)}"
            if self._state in ("param_head", "value"):
                where = f" inside parameter {_quote(self._call.param)}" + where
        self._error(
            f"The output was cut off at the token limit{where}, so the tool-call block is "
            "incomplete and its unfinished call was dropped. Make the call again, shorter."
        )
        self._call = None


def parse_completion(
    text: str, tools: list[dict[str, Any]] | None = None, thinking: bool = True
) -> ParsedCompletion:
    """Parse the text the model generated after the prompt (tolerant; see the module doc)."""
    parser = StreamParser(tools=tools, thinking=thinking)
    parser.feed(text)
    return parser.close()


def stream_events(
    chunks: Iterable[str], tools: list[dict[str, Any]] | None = None, thinking: bool = True
) -> tuple[list[StreamEvent], ParsedCompletion]:
    """All events of a chunked text (those that settle only at the end included) and the result."""
    parser = StreamParser(tools=tools, thinking=thinking)
    events = [e for chunk in chunks for e in parser.feed(chunk)]
    events += parser.flush()
    return events, parser.snapshot()
