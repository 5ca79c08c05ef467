"""`dsv4 serve --model DIR`: the OpenAI-compatible server over the local engine.

Prints `serving MODEL at http://HOST:PORT/v1` on stdout once it accepts requests (with
`--port 0` this line carries the port picked), then serves until Ctrl-C.
Exit codes: 0 stopped by Ctrl-C, 2 usage or model-loading error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

_NO_MODEL = "no model given: pass --model DIR (a checkpoint folder or a Hugging Face id) "


def _fail(message: str) -> typer.Exit:
    typer.echo(f"dsv4 serve: {message}", err=True)
    return typer.Exit(2)


def serve(
    model: Annotated[
        str | None,
        typer.Option("--model", envvar="DSV4_MODEL", help="V4 checkpoint folder or HF id."),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Interface to bind (loopback by default; 0.0.0.0 for all).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: pick a free one).")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", envvar="DSV4_SERVE_API_KEY", help="Require 'Authorization: Bearer KEY'."
        ),
    ] = None,
    queue: Annotated[int, typer.Option("--queue", help="Requests that may wait.")] = 16,
    dtype: Annotated[str, typer.Option(help="Activation dtype: bf16 or fp32.")] = "bf16",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    served_model_name: Annotated[
        str, typer.Option("--served-model-name", help="Model name clients send.")
    ] = "deepseek-v4",
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", help="Most tokens generated per request.")
    ] = 4096,
    max_model_len: Annotated[
        int | None,
        typer.Option("--max-model-len", help="Prompt + completion tokens (default: the model's)."),
    ] = None,
    thinking: Annotated[
        bool, typer.Option("--thinking", help="Thinking mode for requests that do not choose.")
    ] = False,
    replay: Annotated[
        Path | None,
        typer.Option(
            "--replay",
            help="Test double: answer with recorded completions (JSON Lines) instead of a model.",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every request.")] = False,
) -> None:
    """Serve POST /v1/chat/completions, GET /v1/models and GET /health."""
    if not model and replay is None:  # checked before the heavy imports
        raise _fail(_NO_MODEL + "or --replay FILE")
    import logging

    from dsv4.engine.server import ChatServer, ServerConfig

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    engine_model, tokenizer = _load(model, replay, device, dtype)
    try:
        config = ServerConfig(
            host=host,
            port=port,
            api_key=api_key,
            served_model_name=served_model_name,
            queue_size=queue,
            max_new_tokens=max_tokens,
            max_model_len=max_model_len or _context(engine_model),
            thinking_default=thinking,
        )
        server = ChatServer(engine_model, tokenizer, config)
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"serving {served_model_name} at {server.url}", nl=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("dsv4 serve: stopped", err=True)
    finally:
        server.close()


def _load(model: str | None, replay: Path | None, device: str, dtype: str) -> tuple:
    """(model, tokenizer): the checkpoint, or the replay test double."""
    from dsv4.engine.tokenizer import VOCAB_SIZE, get_tokenizer

    tokenizer = get_tokenizer()
    if replay is not None:
        from dsv4.agent.scripted import ScriptError, load_script
        from dsv4.engine.server import ReplayModel

        try:
            return ReplayModel(load_script(replay), tokenizer, VOCAB_SIZE), tokenizer
        except (ScriptError, ValueError) as exc:
            raise _fail(f"--replay: {exc}") from exc
    assert model
    return _load_checkpoint(model, device, _dtype(dtype)), tokenizer


def _dtype(name: str) -> Literal["bf16", "fp32"]:
    if name not in ("bf16", "fp32"):
        raise _fail(f"--dtype {name!r}: expected bf16 or fp32")
    return name  # type: ignore[return-value]


def _load_checkpoint(model: str, device: str, dtype: str):
    import torch

    from dsv4.engine import load_model
    from dsv4.engine.errors import EngineError

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    try:
        return load_model(model, device=device, dtype=torch_dtype)
    except (OSError, ValueError, RuntimeError, EngineError) as exc:
        raise _fail(f"cannot load model {model}: {exc}") from exc


def _context(model) -> int:
    args = getattr(model, "args", None)
    return int(getattr(args, "max_position_embeddings", 65536))
