"""PNG plots a person can open: learning curves and confusion matrices (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(epochs: Sequence[int], series: dict[str, Sequence[float]], path: Path,
                title: str = "") -> Path:
    """Loss (left) and accuracy (right) per epoch for train and validation."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for split, style in (("train", "-"), ("val", "--")):
        if f"{split}_loss" in series:
            ax_loss.plot(epochs, series[f"{split}_loss"], style, label=split)
        if f"{split}_acc" in series:
            ax_acc.plot(epochs, series[f"{split}_acc"], style, label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path,
                   title: str = "confusion matrix (validation)") -> Path:
    n = len(classes)
    fig, ax = plt.subplots(figsize=(0.55 * n + 2.5, 0.55 * n + 2))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes)
    ax.set_yticks(range(n), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    peak = max(max(row) for row in matrix) or 1
    for i in range(n):
        for j in range(n):
            value = matrix[i][j]
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                    color="white" if value > peak / 2 else "black")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
