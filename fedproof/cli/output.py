"""What the commands print, in one place: one console, one error handler, tables that fit (never a cut number),
and the tables a run ends with, the same for ``fedproof simulate`` and ``fedproof server run``.

A table on a terminal keeps its columns whole: columns are left out from the right, and said so, until the rest
fits the terminal's width. Written to a file or a pipe (a log, CI), it is plain aligned text of every column, so
nothing is squeezed into "0.8…"."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:  # fedproof.core.rundir imports torch: not for a command that only prints
    from fedproof.core.rundir import RoundMetrics

console = Console()


def fail(exc: Exception, code: int = 2) -> typer.Exit:
    """Print a refusal as the user should read it (its message, no traceback) and end the command with ``code``:
    every command's one error handler. Returns the exit so a caller can ``raise fail(exc) from exc``."""
    console.print(f"[red]error:[/] {escape(str(exc))}")
    return typer.Exit(code=code)


def show_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], *, left: Sequence[int] = (0,),
               out: Console | None = None) -> None:
    """Print ``rows`` under ``headers``: columns in ``left`` align left, the rest (numbers) right."""
    out = out or console
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]

    def align(i: int, text: str) -> str:
        return text.ljust(widths[i]) if i in left else text.rjust(widths[i])

    if not out.is_terminal:
        out.print(title, markup=False, highlight=False, soft_wrap=True)
        for line in [headers, *rows]:
            out.print("  ".join(align(i, cell) for i, cell in enumerate(line)).rstrip(), markup=False,
                      highlight=False, soft_wrap=True)
        return
    shown = len(headers)
    while shown > 1 and sum(widths[:shown]) + 3 * shown + 1 > out.width:
        shown -= 1
    table = Table(title=title)
    for i in range(shown):
        table.add_column(headers[i], justify="left" if i in left else "right", no_wrap=True, min_width=widths[i])
    for row in rows:
        table.add_row(*row[:shown])
    out.print(table)
    if shown < len(headers):
        out.print(f"[dim]({', '.join(headers[shown:])}: left out at this width; widen the terminal or pipe the "
                  "output to see them)[/]")


def rounds_table(rows: list[RoundMetrics], run_dir: Path, wall: float, out: Console | None = None) -> None:
    out = out or console
    dp = any(r.epsilon_max is not None for r in rows)
    headers = ["round", "acc", "loss", "eps max", "clients", "s", "val acc", "train loss", "B/param up", "rejected"]
    if dp:
        headers.append("declined")
    cells = []
    for r in rows:
        row = [str(r.round), f"{r.accuracy:.4f}", f"{r.loss:.4f}",
               "-" if r.epsilon_max is None else f"{r.epsilon_max:.3f}", str(r.train_clients), f"{r.seconds:.1f}",
               "-" if r.val_accuracy is None else f"{r.val_accuracy:.4f}",
               "-" if r.train_loss is None else f"{r.train_loss:.4f}",
               "-" if r.upload_bytes_per_param is None else f"{r.upload_bytes_per_param:.2f}",
               str(r.rejected_updates)]
        cells.append(row + ([str(r.budget_exhausted)] if dp else []))
    show_table("Rounds", headers, cells, left=(), out=out)
    for r in rows:
        if r.failed:
            out.print(f"[yellow]round {r.round} left the model unchanged:[/] {r.failed}")
    final = rows[-1].accuracy if rows else float("nan")
    out.print(f"final test accuracy [bold green]{final:.4f}[/], wall time [bold]{wall:.1f} s[/]")
    out.print(f"artifacts in [cyan]{run_dir}[/]: run.json, metrics.jsonl, model.safetensors, accuracy.png, "
              "mlruns/ (MLflow)")


def privacy_table(epsilons: dict[str, float], target: float, out: Console | None = None) -> None:
    rows = [[client, f"{epsilons[client]:.4f}", f"{target:g}" if target else "-"]
            for client in sorted(epsilons, key=lambda c: (len(c), c))]
    show_table("Privacy spent per client", ["client", "epsilon", "budget"], rows, left=(), out=out)
