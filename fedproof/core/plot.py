"""Accuracy and loss over rounds, drawn with matplotlib (headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the run directory draws its plot: the import goes one way
    from fedproof.core.rundir import RoundMetrics


def plot_metrics(rows: Sequence[RoundMetrics], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r.round for r in rows]
    dp = any(r.epsilon_max is not None for r in rows)
    fig, axes = plt.subplots(1, 3 if dp else 2, figsize=(15 if dp else 10, 4))
    ax_acc, ax_loss = axes[0], axes[1]
    ax_acc.plot(rounds, [r.accuracy for r in rows], marker="o", label="global model, test set")
    if any(r.val_accuracy is not None for r in rows):
        ax_acc.plot(rounds, [r.val_accuracy for r in rows], marker=".", linestyle="--", label="clients, local validation")
    ax_acc.set(xlabel="round", ylabel="accuracy", title="Accuracy")
    ax_loss.plot(rounds, [r.loss for r in rows], marker="o", label="global model, test set")
    if any(r.train_loss is not None for r in rows):
        ax_loss.plot(rounds, [r.train_loss for r in rows], marker=".", linestyle="--", label="clients, training")
    ax_loss.set(xlabel="round", ylabel="cross-entropy", title="Loss")
    if dp:
        ax_eps = axes[2]
        ax_eps.plot(rounds, [r.epsilon_max for r in rows], marker="o", label="max over clients")
        ax_eps.plot(rounds, [r.epsilon_mean for r in rows], marker=".", linestyle="--", label="mean over clients")
        ax_eps.set(xlabel="round", ylabel="epsilon", title="Privacy spent")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
        if rounds:
            ax.set_xticks(rounds)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
