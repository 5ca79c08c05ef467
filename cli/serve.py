"""`dsv4 serve --model DIR`: the OpenAI-compatible server over the local engine.

Prints `serving MODEL at http://HOST:PORT/v1` on stdout once it accepts requests (with
`--port 0` this line carries the port picked), then serves until Ctrl-C.
Every option and the address are checked before the model is loaded (a port in use is
reported in a second, not after minutes of loading).
Exit codes: 0 stopped by Ctrl-C, 2 usage, address or model-loading error, 4 the model does
not fit the device, 130 interrupted while loading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

_NO_MODEL = "no model given: pass --model DIR (a checkpoint folder or a Hugging Face id) "
# `ServerConfig` names its fields; people typed the options.
_OPTIONS = {"port": "--port", "queue_size": "--queue", "max_new_tokens": "--max-tokens",
            "max_model_len": "--max-model-len"}  # fmt: skip


def _fail(message: str, code: int = 2) -> typer.Exit:
    from dsv4.cli.render import error_exit

    return error_exit("serve", message, code)


def serve(
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            envvar="DSV4_MODEL",
            help="V4 checkpoint folder, or a Hugging Face id already in the local cache.",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Interface to bind (loopback by default; 0.0.0.0 for all).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port, 0..65535 (0: pick a free one).")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", envvar="DSV4_SERVE_API_KEY", help="Require 'Authorization: Bearer KEY'."
        ),
    ] = None,
    queue: Annotated[
        int, typer.Option("--queue", help="Requests that may wait; one more gets HTTP 429.")
    ] = 16,
    dtype: Annotated[str, typer.Option(help="Activation dtype: bf16 or fp32.")] = "bf16",
    device: Annotated[
        str, typer.Option(help="auto (cuda when available), cpu, cuda or cuda:N.")
    ] = "auto",
    served_model_name: Annotated[
        str, typer.Option("--served-model-name", help="Model name clients send.")
    ] = "deepseek-v4",
    max_tokens: Annotated[
        int,
        typer.Option("--max-tokens", help="Most tokens generated per request (and the default)."),
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
    import dataclasses
    import logging

    from dsv4.engine.server import AddressError, ChatServer, check_address

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    # Options and address first: loading a real checkpoint takes minutes.
    config = _config(host, port, api_key, served_model_name, queue, max_tokens, max_model_len,
                     thinking)  # fmt: skip
    if replay is None:
        dtype, device = _dtype(dtype), _device(device)
    try:
        check_address(host, port)
    except AddressError as exc:
        raise _address_fail(exc) from None
    try:
        engine_model, tokenizer = _load(model, replay, device, dtype)
    except KeyboardInterrupt:
        raise _fail("interrupted while loading the model", 130) from None
    if max_model_len is None:
        config = dataclasses.replace(config, max_model_len=_context(engine_model))
    try:
        server = ChatServer(engine_model, tokenizer, config)
    except AddressError as exc:  # taken while the model loaded
        raise _address_fail(exc) from None
    typer.echo(f"serving {served_model_name} at {server.url}", nl=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("dsv4 serve: stopped", err=True)
    finally:
        server.close()


def _config(host: str, port: int, api_key: str | None, name: str, queue: int,
            max_tokens: int, max_model_len: int | None, thinking: bool) -> Any:  # fmt: skip
    """The ServerConfig of the options; a bad value exits 2 naming its option."""
    from dsv4.engine.server import ServerConfig

    try:
        return ServerConfig(host=host, port=port, api_key=api_key, served_model_name=name,
                            queue_size=queue, max_new_tokens=max_tokens,
                            # the model's own length replaces this after loading
                            max_model_len=65536 if max_model_len is None else max_model_len,
                            thinking_default=thinking)  # fmt: skip
    except ValueError as exc:
        field = str(exc).removeprefix("ServerConfig.").split("=", 1)[0]
        raise _fail(f"{_OPTIONS.get(field, field)}: {exc}") from None


def _address_fail(exc: Any) -> typer.Exit:
    if exc.part == "port":
        return _fail(f"{exc}; choose another --port (0 picks a free one)")
    return _fail(f"{exc}; check --host (127.0.0.1 or 0.0.0.0 for every interface)")


def _device(device: str) -> str:
    from dsv4.cli.generate import resolve_device

    try:
        return resolve_device(device)
    except ValueError as exc:
        raise _fail(str(exc)) from None


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
    return _load_checkpoint(model, device, dtype), tokenizer


def _dtype(name: str) -> Literal["bf16", "fp32"]:
    if name not in ("bf16", "fp32"):
        raise _fail(f"--dtype {name!r}: expected bf16 or fp32")
    return name  # type: ignore[return-value]


def _load_checkpoint(model: str, device: str, dtype: str):
    import torch

    from dsv4.cli.render import describe_error
    from dsv4.engine import load_model
    from dsv4.engine.errors import EngineError

    typer.echo(f"dsv4 serve: loading {model} on {device} …", err=True)
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    try:
        return load_model(model, device=device, dtype=torch_dtype)
    except (OSError, ValueError, EngineError) as exc:  # a bad path, config or shard
        raise _fail(f"cannot load model {model}: {describe_error(exc)}") from None
    except RuntimeError as exc:  # out of memory, a device error
        raise _fail(f"cannot load model {model}: {describe_error(exc)}", 4) from None


def _context(model) -> int:
    args = getattr(model, "args", None)
    return int(getattr(args, "max_position_embeddings", 65536))
