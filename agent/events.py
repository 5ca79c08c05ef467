"""Agent events: what a run reports while it works, for renderers and `--json` NDJSON.

Kinds: `turn`, `tool_call`, `tool_result`, `edit`, `test_run`, and exactly one final
`result`. `events.schema.json` beside this module is the contract for `--json` consumers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from importlib import resources
from typing import Any, TextIO

Event = dict[str, Any]
Listener = Callable[[Event], None]
KINDS = ("turn", "tool_call", "tool_result", "edit", "test_run", "result")


class Events:
    """Fans events out to listeners; guarantees a single `result` event."""

    def __init__(self, listeners: list[Listener] | None = None) -> None:
        self.listeners: list[Listener] = list(listeners or [])
        self.start = time.monotonic()
        self.result: Event | None = None

    def emit(self, kind: str, **fields: Any) -> Event:
        assert kind in KINDS, f"unknown event kind {kind!r}"
        if kind == "result":
            assert self.result is None, "a run emits exactly one result event"
        event = {"type": kind, "elapsed_s": round(time.monotonic() - self.start, 3), **fields}
        if kind == "result":
            self.result = event
        for listener in self.listeners:
            listener(event)
        return event


def ndjson_writer(stream: TextIO) -> Listener:
    """A listener that writes each event as one JSON line and flushes it."""

    def write(event: Event) -> None:
        stream.write(json.dumps(event, ensure_ascii=False, default=str) + "\n")
        stream.flush()

    return write


def event_schema() -> dict[str, Any]:
    """The JSON Schema every NDJSON event line validates against."""
    text = resources.files("dsv4.agent").joinpath("events.schema.json").read_text("utf-8")
    return json.loads(text)
