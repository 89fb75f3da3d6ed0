"""Accuracy and loss over rounds, drawn with matplotlib (headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedproof.rundir import RoundMetrics


def plot_metrics(rows: Sequence[RoundMetrics], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r.round for r in rows]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    ax_acc.plot(rounds, [r.accuracy for r in rows], marker="o", label="global model, test set")
    if any(r.val_accuracy is not None for r in rows):
        ax_acc.plot(rounds, [r.val_accuracy for r in rows], marker=".", linestyle="--", label="clients, local validation")
    ax_acc.set(xlabel="round", ylabel="accuracy", title="Accuracy")
    ax_loss.plot(rounds, [r.loss for r in rows], marker="o", label="global model, test set")
    if any(r.train_loss is not None for r in rows):
        ax_loss.plot(rounds, [r.train_loss for r in rows], marker=".", linestyle="--", label="clients, training")
    ax_loss.set(xlabel="round", ylabel="cross-entropy", title="Loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
        if rounds:
            ax.set_xticks(rounds)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
