"""Loss curves written to PNG, with matplotlib's Agg backend.

Plots are drawn after training, from :class:`d2lx.history.History`, never per
step: drawing is the slow part of d2l's ``ProgressBoard``. matplotlib is
imported only here, and only when a plot is asked for.
"""

from __future__ import annotations

import math
from pathlib import Path

from d2lx.history import History


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: History, path: str | Path, title: str = "") -> Path:
    """Write the train/val loss per epoch to ``path`` (PNG) and return the path."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=120)
    epochs = [e + 1 for e in history.epoch]
    ax.plot(epochs, history.train_loss, "o-", label="train loss")
    if any(not math.isnan(v) for v in history.val_loss):
        ax.plot(epochs, history.val_loss, "s--", label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if all(v > 0 for v in history.train_loss):
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
