"""The agent loop: generate → parse → run tools → observations, until the model is done.

A turn without tool calls ends the loop. Limits on steps, wall time and generated tokens
end it early, as does a repeated call (the same call and the same result `repeat_limit`
times) or `max_format_errors` malformed turns in a row. A malformed turn runs none of its
tool calls; the model sees what was wrong and tries again.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from dsv4.agent.backend import Backend, ModelError, ModelTurn, StreamCallback
from dsv4.agent.events import Events
from dsv4.engine.dsml import ToolCall
from dsv4.tools.base import ToolContext, ToolResult, run_tool, tool_schemas

LoopStatus = Literal["done", "limit", "repetition", "model_error", "interrupted"]


@dataclass
class Limits:
    """When a run stops even though the model has not finished."""

    max_steps: int = 50  # model turns
    timeout_s: float = 1800.0  # wall time of the loop
    max_generated_tokens: int | None = None  # completion tokens over the whole run
    max_format_errors: int = 3  # malformed turns in a row
    repeat_limit: int = 3  # the same call with the same result

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout_s}")


@dataclass
class Tokens:
    prompt: int = 0
    completion: int = 0
    reused: int = 0

    def add(self, turn: ModelTurn) -> None:
        self.prompt += turn.prompt_tokens
        self.completion += turn.completion_tokens
        self.reused += turn.reused_tokens

    def as_dict(self) -> dict[str, int]:
        return {"prompt": self.prompt, "completion": self.completion, "reused": self.reused}


@dataclass
class LoopResult:
    status: LoopStatus
    reason: str
    steps: int
    tokens: Tokens
    messages: list[dict[str, Any]]
    edited: list[str] = field(default_factory=list)  # files the tools reported changing


class MessageLog(Protocol):
    """Where the loop records each message (the session log); `--resume` replays it."""

    def append(self, kind: str, **fields: Any) -> Any: ...


class AgentLoop:
    """Runs one conversation to completion against a backend and a tool set."""

    def __init__(
        self,
        backend: Backend,
        tools: list[Any],
        ctx: ToolContext,
        limits: Limits,
        events: Events,
        log: MessageLog | None = None,
        on_stream: StreamCallback | None = None,
    ) -> None:
        self.backend, self.tools, self.ctx = backend, tools, ctx
        self.limits, self.events, self.log = limits, events, log
        self.on_stream = on_stream
        self.schemas = tool_schemas(tools)
        self._mutating = {t.name for t in tools if getattr(t, "mutating", False)}

    def run(self, messages: list[dict[str, Any]], steps_done: int = 0) -> LoopResult:
        """Continue the conversation `messages` (already logged) until a stop condition."""
        result = LoopResult("done", "", steps_done, Tokens(), messages)
        start, format_errors, repeats = time.monotonic(), 0, Counter[str]()
        try:
            while True:
                # --- limits checked before spending another model turn
                stop = self._limit_reached(result, start)
                if stop:
                    return self._end(result, "limit", stop)
                try:
                    turn = self.backend.complete(messages, self.schemas, self.on_stream)
                except ModelError as exc:
                    return self._end(result, "model_error", str(exc))
                result.steps += 1
                result.tokens.add(turn)
                _flag_truncation(turn)
                calls = _with_ids(turn.tool_calls, result.steps)
                self._emit_turn(result.steps, turn, calls)
                # --- malformed output: feed back what was wrong, run nothing
                if turn.errors:
                    format_errors += 1
                    self._add(messages, _assistant(turn, []))
                    if format_errors >= self.limits.max_format_errors:
                        reason = f"{format_errors} malformed model turns in a row: "
                        return self._end(result, "model_error", reason + turn.errors[-1])
                    self._add(messages, {"role": "user", "content": _format_feedback(turn)})
                    continue
                format_errors = 0
                self._add(messages, _assistant(turn, calls))
                if not calls:
                    return self._end(result, "done", "the model finished")
                # --- tools, in order; each result becomes an observation
                for call in calls:
                    res = self._run_call(result, call)
                    self._add(messages, _tool_message(call, res))
                    key = _repeat_key(call, res)
                    repeats[key] += 1
                    if repeats[key] >= self.limits.repeat_limit:
                        why = f"the model repeated {call.name} {repeats[key]} times"
                        return self._end(result, "repetition", why + " with the same result")
        except KeyboardInterrupt:
            return self._end(result, "interrupted", "interrupted by the user")

    def _limit_reached(self, result: LoopResult, start: float) -> str:
        lim = self.limits
        if result.steps >= lim.max_steps:
            return f"step limit reached ({lim.max_steps} model turns)"
        if time.monotonic() - start >= lim.timeout_s:
            return f"time limit reached ({lim.timeout_s:g} s)"
        if lim.max_generated_tokens is not None and (
            result.tokens.completion >= lim.max_generated_tokens
        ):
            return f"token limit reached ({lim.max_generated_tokens} generated tokens)"
        return ""

    def _run_call(self, result: LoopResult, call: ToolCall) -> ToolResult:
        step = result.steps
        self.events.emit(
            "tool_call", step=step, id=call.id, name=call.name, arguments=call.arguments
        )
        res = run_tool(self.tools, call.name, call.arguments, self.ctx)
        self.events.emit(
            "tool_result",
            step=step,
            id=call.id,
            name=call.name,
            ok=res.ok,
            text=res.text,
            truncated=res.truncated,
            full_output_path=res.full_output_path,
        )
        if self.log is not None:
            self.log.append("tool_result", id=call.id, name=call.name, ok=res.ok, text=res.text)
        self._emit_side_events(step, call, res, result)
        return res

    def _emit_side_events(
        self, step: int, call: ToolCall, res: ToolResult, result: LoopResult
    ) -> None:
        if call.name in self._mutating and res.ok and call.name != "run_tests":
            files = _changed_files(call, res)
            result.edited.extend(f for f in files if f not in result.edited)
            self.events.emit("edit", step=step, tool=call.name, files=files)
        if call.name == "run_tests" and "passed" in res.data:
            self.events.emit("test_run", phase="agent", **_test_fields(call, res, self.ctx))

    def _emit_turn(self, step: int, turn: ModelTurn, calls: list[ToolCall]) -> None:
        fields = {
            "step": step,
            "reasoning": turn.reasoning,
            "content": turn.content,
            "tool_calls": [_call_dict(c) for c in calls],
            "errors": turn.errors,
            "finish": turn.finish,
            "prompt_tokens": turn.prompt_tokens,
            "completion_tokens": turn.completion_tokens,
            "reused_tokens": turn.reused_tokens,
        }
        self.events.emit("turn", **fields)
        if self.log is not None:
            self.log.append("turn", **fields)

    def _add(self, messages: list[dict[str, Any]], message: dict[str, Any]) -> None:
        messages.append(message)
        if self.log is not None:
            self.log.append("message", message=message)

    def _end(self, result: LoopResult, status: LoopStatus, reason: str) -> LoopResult:
        result.status, result.reason = status, reason
        if self.log is not None:
            self.log.append("loop_end", status=status, reason=reason, steps=result.steps)
        return result


def _flag_truncation(turn: ModelTurn) -> None:
    """A reply cut off at the token limit is not a deliberate answer: treat it as malformed."""
    if turn.finish == "length" and not turn.errors:
        turn.errors.append(
            "Your reply was cut off at the generated-token limit before it ended. Continue "
            "with a shorter reply: less reasoning, one tool call at a time."
        )


def _with_ids(calls: list[ToolCall], step: int) -> list[ToolCall]:
    """DSML calls carry no id; give each a stable one so results can be matched."""
    return [
        c if c.id else ToolCall(name=c.name, arguments=c.arguments, id=f"call_{step}_{i}")
        for i, c in enumerate(calls)
    ]


def _call_dict(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "name": call.name, "arguments": call.arguments}


def _assistant(turn: ModelTurn, calls: list[ToolCall]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": turn.content,
        "reasoning_content": turn.reasoning,
    }
    if calls:
        message["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {
                    "name": c.name,
                    "arguments": json.dumps(c.arguments, ensure_ascii=False),
                },
            }
            for c in calls
        ]
    return message


def _tool_message(call: ToolCall, res: ToolResult) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call.id, "content": res.text}


def _format_feedback(turn: ModelTurn) -> str:
    problems = "\n".join(f"- {e}" for e in turn.errors)
    return (
        "Your last reply could not be parsed, so none of its tool calls were run:\n"
        f"{problems}\n"
        "Reply again. Write each tool call exactly in the <｜DSML｜tool_calls> format given in "
        "the system prompt, with the block last in the reply."
    )


def _repeat_key(call: ToolCall, res: ToolResult) -> str:
    args = json.dumps(call.arguments, sort_keys=True, ensure_ascii=False, default=str)
    return f"{call.name}\x00{args}\x00{res.ok}\x00{res.text}"


def _changed_files(call: ToolCall, res: ToolResult) -> list[str]:
    for key in ("files", "changed_files", "paths"):
        value = res.data.get(key)
        if isinstance(value, list):
            return [str(v) for v in value]
    path = res.data.get("path") or call.arguments.get("file_path")
    return [str(path)] if path else []


def _test_fields(call: ToolCall, res: ToolResult, ctx: ToolContext) -> dict[str, Any]:
    data = res.data
    return {
        "command": str(data.get("command") or call.arguments.get("command") or ctx.test_command),
        "passed": bool(data.get("passed")),
        "exit_code": data.get("exit_code"),
        "summary": str(data.get("summary", "")),
        "duration_s": float(data.get("duration_s", 0.0)),
    }
