"""`dsv4 undo`: restore the workspace to before the last agent step(s)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from dsv4.agent.snapshot import NothingToUndoError, Snapshot, SnapshotError, Snapshots

# Exit codes (see the architecture's table): 1 nothing to undo, 2 usage or setup error.
EXIT_NOTHING = 1
EXIT_USAGE = 2


def undo(
    path: Annotated[
        Path, typer.Argument(help="Repository (or any folder inside it) to restore.")
    ] = Path("."),
    steps: Annotated[
        int, typer.Option("--steps", "-n", min=1, help="How many agent steps to undo.")
    ] = 1,
    all_steps: Annotated[
        bool, typer.Option("--all", help="Undo every recorded step (back to the first one).")
    ] = False,
    list_only: Annotated[
        bool, typer.Option("--list", help="List the recorded steps, newest last; change nothing.")
    ] = False,
) -> None:
    """Restore the workspace to before the last agent step (ignored files are untouched)."""
    try:
        snaps = Snapshots(path)
        history = snaps.history()
        if list_only:
            _print_history(history, snaps.toplevel)
            return
        restored = snaps.undo(len(history) if all_steps and history else steps)
    except NothingToUndoError as exc:
        typer.echo(f"dsv4 undo: {exc}", err=True)
        raise typer.Exit(EXIT_NOTHING) from exc
    except SnapshotError as exc:
        typer.echo(f"dsv4 undo: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from exc
    undone = len(history) - len(snaps.history())
    typer.echo(
        f"Restored {snaps.toplevel} to before step {restored.id} ({restored.label}); "
        f"undid {undone} step{'s' if undone != 1 else ''}. "
        "The replaced state is kept in refs/dsv4/undone."
    )


def _print_history(history: list[Snapshot], toplevel: Path) -> None:
    if not history:
        typer.echo(f"No agent steps recorded in {toplevel}.")
        return
    for snap in history:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap.time))
        typer.echo(f"{snap.id}  {stamp}  {snap.commit[:12]}  {snap.label}")
