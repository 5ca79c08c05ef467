"""`dsv4 index [PATH]`: build the packed repository context and show what went in and why.

Progress goes to stderr; stdout carries the summary table, or with `--print` exactly the
packed text, or with `--json` one JSON object. Exit codes: 0 done, 2 bad path or options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

_GROUPS = ("full", "outline", "tree", "excluded")


def index(
    path: Annotated[Path, typer.Argument(help="Repository (a git work tree) to index.")] = Path(
        "."
    ),
    budget: Annotated[
        int | None,
        typer.Option("--budget", min=1, help="Token budget (default: context minus reserve)."),
    ] = None,
    print_text: Annotated[
        bool, typer.Option("--print", help="Write exactly the packed context to stdout.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Write one JSON object: totals and every file.")
    ] = False,
    focus: Annotated[
        list[str] | None,
        typer.Option("--focus", help="A file the task is about (repeatable); ranked up."),
    ] = None,
    task: Annotated[
        str, typer.Option("--task", help="Task text; file names in it are ranked up.")
    ] = "",
    allow: Annotated[
        list[str] | None,
        typer.Option("--allow", help="Glob of files forced in past secret and path rules."),
    ] = None,
    max_kib: Annotated[
        int, typer.Option("--max-kib", min=1, help="Size cap per file, in KiB.")
    ] = 512,
    top: Annotated[int, typer.Option("--top", min=0, help="Top files listed in the table.")] = 10,
) -> None:
    """Build and show the repository context packed for the model."""
    from rich.console import Console

    from dsv4.agent.fileset import FileSetConfig, RepositoryError
    from dsv4.agent.index_cache import CacheError
    from dsv4.agent.indexer import IndexConfig, build_index

    err = Console(stderr=True)
    fileset = FileSetConfig(max_bytes=max_kib * 1024, allow=tuple(allow or ()))
    config = IndexConfig(fileset=fileset)
    try:
        with _ProgressBar(err, quiet=print_text or as_json) as progress:
            packed = build_index(
                path,
                budget=budget,
                focus=tuple(focus or ()),
                task=task,
                config=config,
                progress=progress,
            )
    except (RepositoryError, CacheError, ValueError) as exc:
        err.print(f"[red]dsv4 index:[/red] {exc}")
        raise typer.Exit(2) from exc
    if print_text:
        typer.echo(packed.text, nl=False)
    elif as_json:
        typer.echo(_json(packed))
    else:
        _show(Console(), packed, top)


def _json(packed) -> str:
    import json

    return json.dumps(
        {
            "total_tokens": packed.total_tokens,
            "budget": packed.budget,
            "elapsed_s": round(packed.stats.elapsed_s, 4),
            "counts": _group_counts(packed),
            "stats": {k: v for k, v in vars(packed.stats).items()},
            "files": [vars(f) for f in packed.files],
            "withheld": [vars(w) for w in packed.withheld],
        }
    )


def _group_counts(packed) -> dict[str, dict[str, int]]:
    groups = {g: {"files": 0, "tokens": 0} for g in _GROUPS}
    for f in packed.files:
        groups[f.mode]["files"] += 1
        groups[f.mode]["tokens"] += f.tokens
    return groups


def _show(console, packed, top: int) -> None:
    from rich.table import Table

    table = Table(title="Repository index")
    table.add_column("included as")
    table.add_column("files", justify="right")
    table.add_column("tokens", justify="right")
    for group, c in _group_counts(packed).items():
        table.add_row(group, f"{c['files']:,}", f"{c['tokens']:,}")
    table.add_section()
    table.add_row("packed text", "", f"{packed.total_tokens:,}")
    table.add_row("budget", "", f"{packed.budget:,}")
    console.print(table)
    ranked = [f for f in packed.files if f.mode != "excluded"][:top]
    if ranked:
        tops = Table(title=f"Top {len(ranked)} files by relevance")
        for name in ("path", "mode", "tokens"):
            tops.add_column(name, justify="right" if name == "tokens" else "left")
        for f in ranked:
            tops.add_row(f.path, f.mode, f"{f.tokens:,}")
        console.print(tops)
    _show_withheld(console, packed)
    s = packed.stats
    console.print(
        f"{s.files_listed:,} files listed, {s.files_analysed:,} analysed, "
        f"{s.files_reused:,} reused from cache; {s.elapsed_s:.2f} s"
    )


def _show_withheld(console, packed) -> None:
    from rich.table import Table

    if not packed.withheld:
        console.print("No secrets found.")
        return
    table = Table(title="Secrets kept from the model")
    for name in ("path", "line", "kind", "action"):
        table.add_column(name)
    for w in packed.withheld:
        table.add_row(w.path, str(w.line or "-"), w.kind, w.action)
    console.print(table)


class _ProgressBar:
    """A rich progress bar on stderr that `build_index` drives through its callback."""

    def __init__(self, console, quiet: bool) -> None:
        from rich.progress import Progress

        self._bar = Progress(console=console, transient=True, disable=quiet)
        self._tasks: dict[str, int] = {}

    def __enter__(self):
        self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._bar.__exit__(*exc)

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase not in self._tasks:
            self._tasks[phase] = self._bar.add_task(phase, total=total)
        self._bar.update(self._tasks[phase], completed=done, total=total)
