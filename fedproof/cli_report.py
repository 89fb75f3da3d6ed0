"""The tables a run ends with, the same for ``fedproof simulate`` and ``fedproof server run``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # fedproof.rundir imports torch: not for a command that only prints
    from fedproof.rundir import RoundMetrics

console = Console()


def rounds_table(rows: list[RoundMetrics], run_dir: Path, wall: float) -> None:
    table = Table(title="Rounds")
    dp = any(r.epsilon_max is not None for r in rows)
    columns = ["round", "acc", "loss", "train loss", "val acc", "clients", "s", "B/param up", "rejected"]
    for column in columns + (["eps max", "declined"] if dp else []):
        table.add_column(column, justify="right")
    for r in rows:
        cells = [
            str(r.round),
            f"{r.accuracy:.4f}",
            f"{r.loss:.4f}",
            "-" if r.train_loss is None else f"{r.train_loss:.4f}",
            "-" if r.val_accuracy is None else f"{r.val_accuracy:.4f}",
            str(r.train_clients),
            f"{r.seconds:.1f}",
            "-" if r.upload_bytes_per_param is None else f"{r.upload_bytes_per_param:.2f}",
            str(r.rejected_updates),
        ]
        if dp:
            cells += ["-" if r.epsilon_max is None else f"{r.epsilon_max:.3f}", str(r.budget_exhausted)]
        table.add_row(*cells)
    console.print(table)
    for r in rows:
        if r.failed:
            console.print(f"[yellow]round {r.round} left the model unchanged:[/] {r.failed}")
    final = rows[-1].accuracy if rows else float("nan")
    console.print(f"final test accuracy [bold green]{final:.4f}[/], wall time [bold]{wall:.1f} s[/]")
    console.print(f"artifacts in [cyan]{run_dir}[/]: run.json, metrics.jsonl, model.safetensors, accuracy.png, mlruns/ (MLflow)")


def privacy_table(epsilons: dict[str, float], target: float) -> None:
    table = Table(title="Privacy spent per client")
    table.add_column("client", justify="right")
    table.add_column("epsilon", justify="right")
    table.add_column("budget", justify="right")
    for client in sorted(epsilons, key=lambda c: (len(c), c)):
        eps = epsilons[client]
        table.add_row(client, f"{eps:.4f}", f"{target:g}" if target else "-")
    console.print(table)
