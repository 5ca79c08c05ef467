"""`dsv4 model info / verify / tiny`: inspect, check or fabricate a DeepSeek-V4 checkpoint.

torch and the engine are imported inside the commands so that `dsv4 --help` stays instant.
Exit codes: 0 ok; 1 `verify` found problems in a checkpoint; 2 the path is not a checkpoint
(or, for `info`, its config cannot be used), a bad option or output folder; 130 interrupted.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="model",
    help="Inspect or verify a checkpoint; write a tiny random one.",
    no_args_is_help=True,
)

ONE_M = 1_048_576
PathArg = Annotated[
    str,
    typer.Argument(
        help="Checkpoint folder (a config-only folder works for `info`), or a Hugging Face id "
        "already in the local cache (nothing is downloaded)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]


class PresetName(str, Enum):  # noqa: UP042 (StrEnum is 3.11+; we support 3.10)
    small = "small"
    medium = "medium"


def _fail(message: str, code: int = 2) -> typer.Exit:
    from dsv4.cli.render import error_exit

    return error_exit("model", message, code)


def _folder(path: str) -> Path:
    """The checkpoint folder `path` names; exits 2 when it names none."""
    from dsv4.engine.hub import CheckpointNotFound, resolve_model_path

    try:
        return resolve_model_path(path)
    except CheckpointNotFound as exc:
        hint = "" if "expected" in str(exc) else f"; {_EXPECTED}"
        raise _fail(f"{exc}{hint}") from None


_EXPECTED = "expected a checkpoint folder holding config.json (or a Hugging Face id in the cache)"


def _runs(layers: list[int]) -> str:
    """[2, 4, 6, 9] -> "2-6 step 2, 9": arithmetic runs of layer ids."""
    out, i = [], 0
    while i < len(layers):
        j = i
        step = layers[i + 1] - layers[i] if i + 1 < len(layers) else 1
        while j + 1 < len(layers) and layers[j + 1] - layers[j] == step:
            j += 1
        if j - i >= 2 or (j > i and step == 1):
            out.append(f"{layers[i]}-{layers[j]}" + (f" step {step}" if step != 1 else ""))
        else:
            out.extend(str(x) for x in layers[i : j + 1])
        i = j + 1
    return ", ".join(out)


# -- info ----------------------------------------------------------------------------------------


# `info`'s names for the ModelArgs fields it shows (ModelArgs keeps the reference names).
_CONFIG_FIELDS = {
    "hidden_size": "dim",
    "layers": "n_layers",
    "mtp_layers": "n_mtp_layers",
    "heads": "n_heads",
    "head_dim": "head_dim",
    "q_lora_rank": "q_lora_rank",
    "o_groups": "o_groups",
    "o_lora_rank": "o_lora_rank",
    "routed_experts": "n_routed_experts",
    "active_experts": "n_activated_experts",
    "shared_experts": "n_shared_experts",
    "moe_inter_dim": "moe_inter_dim",
    "hash_layers": "n_hash_layers",
    "vocab_size": "vocab_size",
    "window": "window_size",
    "index_topk": "index_topk",
    "index_heads": "index_n_heads",
    "hc_mult": "hc_mult",
}


def _summary(path: Path) -> dict[str, Any]:
    """Everything `info` shows, from the config (and the shard headers when there are any)."""
    from dsv4.engine import inventory as inv
    from dsv4.engine.checkpoint import open_checkpoint
    from dsv4.engine.config import load_config

    args = load_config(path)
    has_weights = (path / "model.safetensors.index.json").is_file() or any(
        path.glob("*.safetensors")
    )
    expected = inv.expected_tensors(args)
    specs = expected
    if has_weights:  # bytes as stored; parameters always from the config
        with open_checkpoint(path) as ckpt:
            specs = {n: ckpt.spec(n) for n in ckpt.names()}
    tot = inv.totals(specs)
    p = inv.param_counts(args, expected)
    kinds: dict[str, list[int]] = {}
    for i, kind in enumerate(args.layer_kinds):
        kinds.setdefault(kind, []).append(i)
    kv = {lay: inv.kv_bytes_per_token(args, lay) for lay in ("ref", "packed", "packed_fp4")}
    return {
        "path": str(path),
        "source": "shard headers" if has_weights else "config only",
        "config": {key: getattr(args, field) for key, field in _CONFIG_FIELDS.items()},
        "params": {
            "total": p.total,
            "active_per_token": p.active,
            "active_with_embedding_table": p.active_with_embedding,
            "routed_experts": p.routed_experts,
            "mtp": p.mtp,
        },  # fmt: skip
        "tensors": tot.tensors,
        "bytes": tot.nbytes,
        "bytes_by_dtype": tot.bytes_by_dtype,
        "tensors_by_dtype": tot.tensors_by_dtype,
        "layer_kinds": [
            {"kind": k, "ratio": args.layer_ratios[ls[0]], "count": len(ls), "layers": ls}
            for k, ls in kinds.items()
        ],  # fmt: skip
        "kv_bytes_per_token": kv,
        "kv_bytes_1m": {lay: round(v * ONE_M) for lay, v in kv.items()},
        "kv_fixed_bytes": inv.kv_fixed_bytes(args),
    }


def _human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}{unit}".rstrip()
    return f"{n:g} {unit}".rstrip()


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _render(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    cfg = ", ".join(f"{k} {v}" for k, v in s["config"].items())
    con.print(f"[bold]{s['path']}[/] ({s['source']})\n{cfg}")
    p = s["params"]
    con.print(f"parameters: [bold]{_human(p['total'])}[/] total (MTP {_human(p['mtp'])} more), "
              f"[bold]{_human(p['active_per_token'])}[/] active per token "
              f"({_human(p['active_with_embedding_table'])} with the embedding table)")  # fmt: skip
    table = Table(title=f"{s['tensors']} tensors, {s['bytes']:,} bytes ({_gib(s['bytes'])})")
    for col in ("dtype", "tensors", "bytes"):
        table.add_column(col, justify="right" if col != "dtype" else "left")
    for dt, nbytes in sorted(s["bytes_by_dtype"].items(), key=lambda kv: -kv[1]):
        table.add_row(dt, f"{s['tensors_by_dtype'][dt]:,}", f"{nbytes:,}")
    con.print(table)
    kinds = Table(title="layer kinds (main layers)")
    for col in ("kind", "ratio", "count", "layers"):
        kinds.add_column(col)
    for k in s["layer_kinds"]:
        kinds.add_row(k["kind"], str(k["ratio"]), str(k["count"]), _runs(k["layers"]))
    con.print(kinds)
    kv = Table(title="KV cache per sequence (growing part)")
    for col in ("layout", "bytes / token", "at 1M tokens"):
        kv.add_column(col)
    for lay, per in s["kv_bytes_per_token"].items():
        kv.add_row(lay, f"{per:,.2f}", _gib(s["kv_bytes_1m"][lay]))
    con.print(kv)
    con.print(f"plus fixed per sequence (windows, compressor states): {s['kv_fixed_bytes']:,} B")


@app.command()
def info(path: PathArg, as_json: JsonOpt = False) -> None:
    """Config summary, parameters (total, active per token), bytes by dtype, layer kinds, KV cost.

    Works on a folder holding only `config.json` (figures then come from the config alone).
    """
    from dsv4.engine.errors import EngineError

    folder = _folder(path)
    try:
        summary = _summary(folder)
    except (EngineError, OSError, ValueError) as exc:  # unreadable or undecodable files too
        raise _fail(_problem(folder, exc)) from None
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        _render(summary)


# -- verify --------------------------------------------------------------------------------------


@app.command()
def verify(path: PathArg, as_json: JsonOpt = False) -> None:
    """Check every expected tensor (present, shape, dtype), no extras, every shard readable.

    Exits 1 listing each problem by file and tensor name; 2 when PATH is not a checkpoint
    folder at all (missing, a file, or no config.json).
    """
    from rich.console import Console

    from dsv4.engine.checkpoint import open_checkpoint
    from dsv4.engine.errors import EngineError

    folder = _folder(path)
    if not (folder / "config.json").exists():
        raise _fail(f"{folder} holds no config.json; {_EXPECTED}")
    try:
        with open_checkpoint(folder) as ckpt:
            problems, count = ckpt.verify(), len(ckpt.names())
    except (EngineError, OSError, ValueError) as exc:  # a corrupt config, index or header
        problems, count = [_problem(folder, exc)], 0
    if as_json:
        typer.echo(json.dumps({"path": path, "ok": not problems, "tensors": count,
                               "problems": problems}))  # fmt: skip
    else:
        con = Console(highlight=False)
        for p in problems:
            con.print(f"[red]x[/] {p}", markup=True, soft_wrap=True)
        verdict = f"[red]{len(problems)} problem(s)[/]" if problems else "[green]ok[/]"
        con.print(f"{path}: {count} tensors, {verdict}")
    if problems:
        raise typer.Exit(1)


def _problem(folder: Path, exc: BaseException) -> str:
    """The message of a failure to read `folder`, naming the folder when the error does not."""
    from dsv4.cli.render import describe_error
    from dsv4.engine.errors import EngineError

    if isinstance(exc, EngineError) or getattr(exc, "filename", None):
        return describe_error(exc)  # the engine's errors name the file already
    return f"{folder}: {describe_error(exc)}"


# -- tiny ----------------------------------------------------------------------------------------


@app.command()
def tiny(
    out: Annotated[
        Path, typer.Argument(help="New (or empty) folder to write the checkpoint into.")
    ],
    preset: Annotated[
        PresetName,
        typer.Option(help="small: the golden test dims (~78 MB); medium: ~180 M params (~320 MB)."),
    ] = PresetName.small,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
) -> None:
    """Write a random checkpoint in exactly the real layout (its output is noise).

    The folder appears only when complete: an error or Ctrl-C leaves nothing behind.
    """
    from dsv4.cli.render import describe_error, progress_bar
    from dsv4.engine.tiny import TinyTargetError, write_tiny_checkpoint

    try:
        with progress_bar(f"writing {out}") as progress:
            path = write_tiny_checkpoint(out, preset.value, seed, progress=progress)
    except TinyTargetError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:  # no space, no permission: the partial folder is already gone
        raise _fail(f"cannot write {out}: {describe_error(exc)}") from None
    except KeyboardInterrupt:
        raise _fail(f"interrupted; nothing was left at {out}", 130) from None
    size = sum(p.stat().st_size for p in path.iterdir())
    typer.echo(f"wrote {path} (preset {preset.value}, seed {seed}, {size / 1e6:.1f} MB); "
               "random weights: its output is noise")  # fmt: skip
