"""`dsv4 doctor`: the environment report as a rich table (or one JSON object)."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def doctor(
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="A checkpoint folder or cached HF id to check too (config.json only)."
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of the table.")
    ] = False,
) -> None:
    """Report Python, torch and devices, triton, the V4 tokenizer, git, models, disk, memory.

    Exits 0 when the essentials are present, 1 naming what is missing.
    """
    from rich.console import Console
    from rich.table import Table

    from dsv4.agent import doctor as report

    checks = report.collect(model)
    missing = report.missing_essentials(checks)
    if as_json:
        typer.echo(json.dumps(report.as_json(checks)))
    else:
        table = Table(title="dsv4 doctor", show_lines=False)
        for col in ("check", "found", "status", "detail"):
            table.add_column(col)
        for c in checks:
            status = (
                "[green]ok[/]" if c.ok else ("[red]missing[/]" if c.essential else "[yellow]-[/]")
            )
            table.add_row(c.name, c.value, status, c.detail)
        Console().print(table)
    if missing:
        for c in missing:  # the table may be cut to the terminal's width: say it in full
            detail = f": {c.detail}" if c.detail else ""
            typer.echo(f"dsv4 doctor: missing essential: {c.name}{detail}", err=True)
        raise typer.Exit(1)
