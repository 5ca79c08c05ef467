"""`dsv4 bench --model DIR`: prefill and decode tokens/s at several context lengths, peak
memory and KV-cache bytes per token, as a rich table or (`--json`) one JSON object.

Exit codes: 0 done, 2 usage or model-loading error, 4 engine error while measuring.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

_NO_MODEL = (
    "no model given: pass --model DIR (a checkpoint folder or a Hugging Face id in the local "
    "cache) or set DSV4_MODEL"
)
_DTYPES = ("bf16", "fp32")


def _fail(code: int, message: str) -> typer.Exit:
    typer.echo(f"dsv4 bench: {message}", err=True)
    return typer.Exit(code)


def parse_contexts(text: str) -> tuple[int, ...]:
    """'1024,8192,32K' -> (1024, 8192, 32768); a K suffix means ×1024."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        scale = 1024 if part[-1] in "kK" else 1
        digits = part[:-1] if scale > 1 else part
        if not digits.isdigit() or int(digits) == 0:
            raise ValueError(f"--contexts {text!r}: {part!r} is not a positive token count")
        out.append(int(digits) * scale)
    if not out:
        raise ValueError(f"--contexts {text!r}: expected comma-separated token counts")
    return tuple(out)


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def _table(report: Any) -> Any:
    from rich.table import Table

    title = (
        f"dsv4 bench · {report.device} · {report.dtype}"
        f"{' · quant_sim' if report.quant_sim else ''} · {report.threads} threads"
    )
    table = Table(title=title)
    for name in ("context", "prefill tok/s", "decode ms/step", "decode tok/s", "peak MiB",
                 "KV B/token", "state MiB"):  # fmt: skip
        table.add_column(name, justify="right")
    for r in report.results:
        table.add_row(
            f"{r.context:,}", f"{r.prefill_tok_s:,.1f}", f"{r.decode_step_s * 1e3:,.2f}",
            f"{r.decode_tok_s:,.1f}", _mib(r.peak_memory_bytes), f"{r.kv_bytes_per_token:,.1f}",
            _mib(r.state.total),
        )  # fmt: skip
    return table


def _footer(report: Any) -> str:
    dense, formula = report.dense_kv_bytes_per_token, report.formula_kv_bytes_per_token
    return (
        f"KV bytes/token: formula (bf16 entries) {formula:,.1f} · dense baseline {dense:,.0f} "
        f"({dense / formula:,.1f}× more)"
    )


def bench(
    model: Annotated[
        str | None,
        typer.Option("--model", envvar="DSV4_MODEL", help="Checkpoint folder or HF id (cached)."),
    ] = None,
    contexts: Annotated[
        str, typer.Option("--contexts", help="Context lengths, comma-separated (K = ×1024).")
    ] = "1024,8192,32768",
    decode_steps: Annotated[
        int, typer.Option("--decode-steps", help="Decode steps timed per context.")
    ] = 16,
    dtype: Annotated[str, typer.Option("--dtype", help="Activation dtype: bf16 or fp32.")] = "bf16",
    quant_sim: Annotated[
        bool, typer.Option("--quant-sim/--no-quant-sim", help="Simulate REF's quantization.")
    ] = True,
    chunk: Annotated[int, typer.Option("--chunk", help="Prefill chunk (tokens).")] = 1024,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Engine benchmark: prefill/decode tokens/s, peak memory, KV-cache bytes per token."""
    from dsv4.engine.bench import BenchConfig, run_bench

    # Options -> config: everything that can be wrong with the options fails before loading.
    if not model:
        raise _fail(2, _NO_MODEL)
    if dtype not in _DTYPES:
        raise _fail(2, f"--dtype {dtype!r}: choose one of {', '.join(_DTYPES)}")
    try:
        cfg = BenchConfig(parse_contexts(contexts), decode_steps, chunk)
    except ValueError as exc:
        raise _fail(2, str(exc)) from None
    loaded = _load(model, device, dtype, quant_sim)

    from rich.console import Console

    err = Console(stderr=True, highlight=False)

    def progress(r: Any) -> None:
        if not as_json:
            err.print(f"context {r.context:,}: done", style="dim")

    try:
        report = run_bench(loaded, cfg, progress)
    except KeyboardInterrupt:
        raise _fail(130, "interrupted") from None
    except (RuntimeError, ValueError) as exc:  # out of memory, a device error: reported
        raise _fail(4, f"benchmark failed: {type(exc).__name__}: {exc}") from None
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
        return
    out = Console(highlight=False)
    out.print(_table(report))
    out.print(_footer(report), markup=False)


def _load(model: str, device: str, dtype: str, quant_sim: bool) -> Any:
    """Load the checkpoint; loading problems are usage errors (exit 2)."""
    import torch

    from dsv4 import engine
    from dsv4.engine.errors import EngineError

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    act = torch.bfloat16 if dtype == "bf16" else torch.float32
    try:
        return engine.load_model(model, device=device, dtype=act, quant_sim=quant_sim)
    except (EngineError, OSError, ValueError) as exc:
        raise _fail(2, f"cannot load model {model!r}: {exc}") from None
