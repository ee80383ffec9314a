"""PNG plots a person can open, all in one style: learning curves, a stage's search history
and parameter importance, paired repeats, confusion matrices. Figures are built with
matplotlib's object API (no pyplot state, no tight_layout pass)."""

from __future__ import annotations

import io
import os
import stat
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from asl_sweep.runtime.files import atomic_write_bytes


def _writable_config_dir() -> None:
    """Matplotlib warns, on every import, when its config folder cannot be written (a user
    without a home, a read-only one): give it a private temporary folder instead, quietly."""
    if os.environ.get("MPLCONFIGDIR"):
        return
    try:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        (base / "matplotlib").mkdir(parents=True, exist_ok=True)
        if os.access(base / "matplotlib", os.W_OK):
            return
    except (OSError, RuntimeError):  # RuntimeError: no home to be found
        pass
    os.environ["MPLCONFIGDIR"] = _private_temporary_dir()


def _private_temporary_dir() -> str:
    """This user's folder for matplotlib in the temporary folder, the same for every process
    (a folder each left one behind per command, and matplotlib built its font list again in
    each): used only where it is a real folder this user owns that no one else may open,
    else a fresh one (another user could have put a link or a folder of theirs there)."""
    path = Path(tempfile.gettempdir()) / f"asl-sweep-matplotlib-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077:
            return str(path)
    except OSError:
        pass
    return tempfile.mkdtemp(prefix="asl-sweep-matplotlib-")


_writable_config_dir()

from matplotlib.figure import Figure  # noqa: E402  (after its config folder is settled)
from matplotlib.ticker import MaxNLocator  # noqa: E402

LABELS = {"val_acc": "validation accuracy", "train_acc": "training accuracy",
          "val_loss": "validation loss", "train_loss": "training loss",
          "val_person_mean": "mean accuracy over validation people",
          "val_person_q25": "25th-percentile validation person's accuracy",
          "val_person_worst": "worst validation person's accuracy"}
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _save(fig: Figure, path: Path) -> Path:
    """Drawn in memory, then written whole: a full disk names the file, and leaves no cut
    PNG (PIL's own write says only 'No space left on device')."""
    png = io.BytesIO()
    fig.savefig(png, dpi=85, format="png")
    atomic_write_bytes(path, png.getbuffer(), sync=False)
    return path


def _style(ax, xlabel: str, ylabel: str, title: str = "") -> None:
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def plot_curves(epochs: Sequence[int], series: dict[str, Sequence[float]], path: Path,
                title: str = "") -> Path:
    """Loss (left) and accuracy (right) per epoch for train and validation."""
    return plot_curves_compare({"": (epochs, series)}, path, title)


def plot_curves_compare(runs: Mapping[str, tuple[Sequence[int], Mapping[str, Sequence[float]]]],
                        path: Path, title: str = "") -> Path:
    """Several runs' curves on the same axes (a winner beside a human baseline, say): one
    colour per run, solid for training, dashed for validation."""
    fig = Figure(figsize=(10, 3.8))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for colour, (name, (epochs, series)) in zip(COLOURS, runs.items(), strict=False):
        for split, style in (("train", "-"), ("val", "--")):
            label = f"{name} {split}".strip()
            if f"{split}_loss" in series:
                ax_loss.plot(epochs, series[f"{split}_loss"], style, color=colour, label=label)
            if f"{split}_acc" in series:
                ax_acc.plot(epochs, series[f"{split}_acc"], style, color=colour, label=label)
    _style(ax_loss, "epoch", "cross-entropy loss", "loss")
    _style(ax_acc, "epoch", "accuracy", "accuracy")
    ax_acc.set_ylim(0, 1.02)
    for ax in (ax_loss, ax_acc):
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.85, wspace=0.22)
    return _save(fig, path)


def plot_history(numbers: Sequence[int], values: Sequence[float], metric: str, maximize: bool,
                 path: Path, title: str = "",
                 pruned: Sequence[tuple[int, float]] = ()) -> Path:
    """Each complete trial's value and the best so far, by trial number; pruned trials as
    crosses at the best value they reported before they were stopped."""
    return _save(history_figure(numbers, values, metric, maximize, title, pruned), path)


def history_figure(numbers: Sequence[int], values: Sequence[float], metric: str,
                   maximize: bool, title: str = "",
                   pruned: Sequence[tuple[int, float]] = ()) -> Figure:
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot(numbers, values, "o", color=COLOURS[0], label="trial")
    if pruned:
        ax.plot([n for n, _ in pruned], [v for _, v in pruned], "x", color=COLOURS[3],
                label="pruned (best epoch before it stopped)")
    best, running = [], None
    for v in values:
        running = v if running is None else (max if maximize else min)(running, v)
        best.append(running)
    ax.step(numbers, best, where="post", color=COLOURS[1], label="best so far")
    _style(ax, "trial", f"{LABELS.get(metric, metric)} (best epoch)", title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers are whole
    ax.legend(fontsize=8)
    return fig


def plot_importance(importance: Mapping[str, float], path: Path, title: str = "") -> Path:
    fig = Figure(figsize=(7, 0.5 * len(importance) + 1.4), layout="constrained")
    ax = fig.subplots()
    names = list(importance)[::-1]
    ax.barh(names, [importance[n] for n in names], color=COLOURS[0])
    _style(ax, "importance (fANOVA, share of the variance explained)", "", title)
    return _save(fig, path)


def plot_repeats(configs: Mapping[str, Sequence[float]], metric: str, path: Path,
                 title: str = "") -> Path:
    """Each configuration's paired repeats (points) and their mean +- std (bar)."""
    fig = Figure(figsize=(7, 0.6 * len(configs) + 1.6), layout="constrained")
    ax = fig.subplots()
    for row, values in enumerate(configs.values()):
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        ax.errorbar([mean], [row], xerr=[std], fmt="D", color=COLOURS[1], capsize=4)
        ax.plot(values, [row] * len(values), "o", color=COLOURS[0], alpha=0.6)
    ax.set_yticks(range(len(configs)), list(configs))
    _style(ax, f"{LABELS.get(metric, metric)} (best epoch, each repeat's validation fold)", "",
           title)
    return _save(fig, path)


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path,
                   title: str = "confusion matrix") -> Path:
    return _save(confusion_figure(matrix, classes, title), path)


def confusion_figure(matrix: Sequence[Sequence[int]], classes: Sequence[str],
                     title: str = "confusion matrix") -> Figure:
    n = len(classes)
    fig = Figure(figsize=(0.6 * n + 2.5, 0.6 * n + 2), layout="constrained")
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    # Names longer than a letter or two run into each other across the columns: upright.
    ax.set_xticks(range(n), classes,
                  rotation=90 if max((len(str(c)) for c in classes), default=0) > 3 else 0)
    ax.set_yticks(range(n), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    ax.grid(False)  # no lines across the cells
    ax.tick_params(length=0)
    peak = max(max(row) for row in matrix) or 1
    for i in range(n):
        for j in range(n):
            value = matrix[i][j]
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=10,
                        color="white" if value > peak / 2 else "black")
    return fig


def plot_gallery(rows: Sequence[tuple[str, Sequence[tuple[object, str]]]], path: Path,
                 title: str = "", per_row: int = 8) -> Path:
    """Rows of thumbnails, each row a title (a person, a confused pair) and up to `per_row`
    (image, caption) pairs; an image is uint8 [3, H, W] (a tensor or an array)."""
    import numpy as np

    rows = [(name, list(items)[:per_row]) for name, items in rows if items]
    fig = Figure(figsize=(1.3 * per_row, 1.75 * max(1, len(rows)) + 0.4))
    axes = fig.subplots(max(1, len(rows)), per_row, squeeze=False)
    for r, (name, items) in enumerate(rows):
        for c in range(per_row):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if c < len(items):
                image, caption = items[c]
                ax.imshow(np.asarray(image).transpose(1, 2, 0))
                ax.set_xlabel(caption, fontsize=7)
        axes[r][0].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.12, right=0.99, bottom=0.06, top=0.9, wspace=0.08, hspace=0.45)
    return _save(fig, path)
