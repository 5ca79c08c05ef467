"""`dsv4 generate "PROMPT"`: one chat turn on the local engine, streamed to the terminal.

The prompt goes through the official V4 chat encoding; the answer streams with the reasoning
dimmed. With `--json`, stdout carries NDJSON events and progress goes to stderr.
Exit codes: 0 done, 2 usage or model-loading error, 4 engine error during generation,
130 interrupted.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

_NO_MODEL = (
    "no model given: pass --model DIR (a checkpoint folder or a Hugging Face id in the local "
    "cache) or set DSV4_MODEL"
)


def _fail(code: int, message: str) -> typer.Exit:
    from dsv4.cli.render import error_exit

    return error_exit("generate", message, code)


def resolve_device(device: str) -> str:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> a device this machine has; ValueError naming
    `--device` otherwise (checked before a model is loaded)."""
    import torch

    text = device.strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = text.partition(":")
    if text == "cpu":
        return "cpu"
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here; use --device cpu")
    if index and int(index) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"--device {device}: this machine has {count} CUDA device(s)")
    return text


# `SamplingParams` names its fields; people typed the options.
_SAMPLING_OPTIONS = {"temperature": "--temperature", "top_p": "--top-p", "top_k": "--top-k",
                     "max_new_tokens": "--max-new-tokens", "seed": "--seed"}  # fmt: skip


def _option_of(message: str) -> str:
    field = message.removeprefix("SamplingParams.").split("=", 1)[0]
    return _SAMPLING_OPTIONS.get(field, "option")


class _Renderer:
    """Prints stream events: rich text (reasoning dimmed) or NDJSON lines."""

    def __init__(self, as_json: bool) -> None:
        from rich.console import Console

        self.as_json = as_json
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False)
        self._last_kind = ""

    def progress(self, message: str) -> None:
        self.err.print(message, style="dim", markup=False)

    def event(self, kind: str, value: Any) -> None:
        if self.as_json:
            payload = value.__dict__ if kind == "tool_call" else value
            key = "call" if kind == "tool_call" else "text"
            typer.echo(json.dumps({"event": kind, key: payload}, ensure_ascii=False))
            return
        if kind == "content" and self._last_kind == "reasoning":
            self.out.print("\n")
        self._last_kind = kind
        if kind == "tool_call":
            self.out.print(
                f"\n[tool call] {value.name} {json.dumps(value.arguments)}",
                style="yellow",
                markup=False,
            )
        else:
            self.out.print(
                value, end="", style="dim" if kind == "reasoning" else None, markup=False
            )

    def done(self, summary: dict[str, Any]) -> None:
        if self.as_json:
            typer.echo(json.dumps({"event": "done", **summary}, ensure_ascii=False))
            return
        self.out.print()
        self.err.print(
            f"[{summary['finish_reason']}] {summary['prompt_tokens']} prompt + "
            f"{summary['generated_tokens']} generated tokens, "
            f"{summary['tokens_per_s']:.2f} tokens/s",
            style="dim",
            markup=False,
        )


def generate(
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            envvar="DSV4_MODEL",
            help="Checkpoint folder, or a Hugging Face id already in the local cache.",
        ),
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="A system message.")] = None,
    thinking: Annotated[
        bool, typer.Option("--thinking/--no-thinking", help="Thinking mode (reasoning first).")
    ] = True,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="Most tokens to generate (>= 1).")
    ] = 512,
    temperature: Annotated[
        float, typer.Option("--temperature", help="Sampling temperature >= 0; 0 = greedy.")
    ] = 1.0,
    top_p: Annotated[
        float, typer.Option("--top-p", help="Nucleus sampling mass, in (0, 1]; 1 = off.")
    ] = 1.0,
    top_k: Annotated[int, typer.Option("--top-k", help="Top-k filter; 0 = off.")] = 0,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Sampling seed (same seed, same output).")
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="auto (cuda when available), cpu, cuda or cuda:N.")
    ] = "auto",
    as_json: Annotated[
        bool, typer.Option("--json", help="NDJSON events on stdout; progress stays on stderr.")
    ] = False,
) -> None:
    """Generate one answer from the local engine with the V4 chat encoding."""
    from dsv4.engine.dsml import EOS, StreamParser
    from dsv4.engine.encoding import encode_messages
    from dsv4.engine.generate import generate as run_generation
    from dsv4.engine.sampler import SamplingParams, SamplingParamsError
    from dsv4.engine.tokenizer import get_tokenizer

    # Options -> request: everything that can be wrong with the options fails before loading.
    if not model:
        raise _fail(2, _NO_MODEL)
    try:
        params = SamplingParams(
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            max_new_tokens=max_new_tokens,
        )
    except SamplingParamsError as exc:
        raise _fail(2, f"{_option_of(str(exc))}: {exc}") from None
    try:
        device = resolve_device(device)
    except ValueError as exc:
        raise _fail(2, str(exc)) from None
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    tokenizer = get_tokenizer()
    mode = "thinking" if thinking else "chat"
    prompt_ids = tokenizer.encode(encode_messages(messages, thinking_mode=mode))

    # Load, then stream: the parser splits reasoning from the answer as the text arrives.
    render = _Renderer(as_json)
    session = _load_session(model, device, render)
    parser = StreamParser(thinking=thinking)
    started = time.perf_counter()
    last = None
    try:
        for last in run_generation(session, prompt_ids, params, tokenizer):
            for kind, value in parser.feed(last.text):
                render.event(kind, value)
    except KeyboardInterrupt:
        raise _fail(130, "interrupted") from None
    except Exception as exc:  # an engine failure is exit 4, reported, never a traceback
        raise _fail(4, f"generation failed: {type(exc).__name__}: {exc}") from None
    assert last is not None and last.finish_reason is not None
    # The EOS token is not part of the text; the parser reads it as "the turn ended cleanly".
    closing = parser.feed(EOS) if last.finish_reason == "eos" else []
    for kind, value in closing + parser.flush():
        render.event(kind, value)
    render.done(_summary(last, parser.snapshot(), time.perf_counter() - started))


def _load_session(model: str, device: str, render: _Renderer) -> Any:
    """Load the checkpoint and open a session; loading problems are usage errors (exit 2)."""
    import torch

    from dsv4 import engine
    from dsv4.cli.render import describe_error
    from dsv4.engine.errors import EngineError

    render.progress(f"loading {model} …")
    try:
        loaded = engine.load_model(model, device=device, dtype=torch.bfloat16)
    except (EngineError, OSError, ValueError) as exc:  # a bad path, config or shard
        raise _fail(2, f"cannot load model {model!r}: {describe_error(exc)}") from None
    except RuntimeError as exc:  # out of memory, a device error
        raise _fail(4, f"cannot load model {model!r}: {describe_error(exc)}") from None
    except KeyboardInterrupt:
        raise _fail(130, "interrupted while loading the model") from None
    return loaded.new_session()


def _summary(last: Any, parsed: Any, seconds: float) -> dict[str, Any]:
    return {
        "finish_reason": last.finish_reason,
        "prompt_tokens": last.prompt_tokens,
        "generated_tokens": last.generated_tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": last.generated_tokens / seconds if seconds > 0 else 0.0,
        "reasoning": parsed.reasoning,
        "content": parsed.content,
        "errors": parsed.errors,
    }
