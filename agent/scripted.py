"""A scripted model: replays recorded V4 completions, one JSON Lines record per turn.

Each line of the script is `{"completion": "..."}`, the raw text V4 generates after the
prompt; in thinking mode
`reasoning</think>content[\\n\\n<｜DSML｜tool_calls>…]<｜end▁of▁sentence｜>`.
The text goes through the same streaming DSML parser as the local engine's output, so a
replay exercises everything except the model's weights. It is a real backend, used by the
tests and by the README's first command (where it is labelled as a replay).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsv4.agent.backend import ModelError, ModelTurn, StreamCallback
from dsv4.agent.jsonl import read_jsonl
from dsv4.engine.dsml import StreamParser

# Feed the parser in small pieces so callers see streaming events as with a live model.
_CHUNK = 16


class ScriptError(ValueError):
    """The script file is unreadable or a line is not `{"completion": str}`."""


def load_script(path: Path) -> list[str]:
    """The completions of a script file, validated line by line."""
    completions = []
    for lineno, record in read_jsonl(Path(path), "script", ScriptError):
        if not isinstance(record, dict) or not isinstance(record.get("completion"), str):
            raise ScriptError(f'{path}:{lineno}: expected {{"completion": "..."}}')
        completions.append(record["completion"])
    return completions


class ScriptedBackend:
    """Answers each request with the next recorded completion."""

    def __init__(self, path: Path | str, thinking: bool = True) -> None:
        self.path = Path(path)
        self.thinking = thinking
        self.completions = load_script(self.path)
        self.position = 0
        self.name = f"scripted:{self.path.name}"

    def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_stream: StreamCallback | None = None,
    ) -> ModelTurn:
        if self.position >= len(self.completions):
            raise ModelError(
                f"script {self.path} ran out of model turns: it has {len(self.completions)} "
                f"and the agent asked for turn {self.position + 1}"
            )
        text = self.completions[self.position]
        self.position += 1
        parser = StreamParser(tools=tools, thinking=self.thinking)
        for start in range(0, len(text), _CHUNK):
            for kind, value in parser.feed(text[start : start + _CHUNK]):
                if on_stream is not None:
                    on_stream(kind, value)
        parsed = parser.close()
        turn = ModelTurn.from_parsed(
            parsed,
            prompt_tokens=_count_prompt(messages, tools, self.thinking),
            completion_tokens=_count(text),
        )
        turn.raw = text
        return turn

    def close(self) -> None:
        pass


def _count(text: str) -> int:
    from dsv4.engine.tokenizer import get_tokenizer

    return get_tokenizer().count(text)


def _count_prompt(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]], thinking: bool
) -> int:
    """V4 tokens of the prompt the real model would see (the same encoding as `local`)."""
    from dsv4.agent.prompt import render_prompt

    return _count(render_prompt(messages, tools, thinking=thinking))
