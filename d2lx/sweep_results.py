"""A sweep's results: its points, and the files they are written to (a CSV and the error plot).

:class:`SweepPoint` is one grid point on one backend (one CSV row), and
:class:`SweepResult` all of them with the settings needed to read them. The
files are written atomically (:mod:`d2lx.outputs`): a sweep runs for minutes,
and a full disk or an interrupted write must leave the old file or none,
never half a table. :func:`d2lx.sweep.run_sweep` checks their paths before
the first fit.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from d2lx.experiment import SEED_W
from d2lx.outputs import atomic_write, write_figure

_LABELS = {"lr": "learning rate", "epochs": "epochs", "data": "training examples (n)"}


@dataclass
class SweepPoint:
    """One grid point on one backend (one CSV row)."""

    sweep: str
    backend: str
    model: str
    value: float | int  # the swept value: lr, epochs or num_train (int for the last two)
    lr: float
    epochs: int
    num_train: int
    batch_size: int
    steps: int
    seed: int | None
    w_error_norm: float  # ||w_hat - w||_2
    b_error_abs: float  # |b_hat - b|
    train_loss: float
    fit_seconds: float
    status: str  # "ok" or "diverged"
    framework_version: str


@dataclass
class SweepResult:
    """All points of a sweep, plus the settings needed to read them."""

    kind: str
    backends: list[str]
    model: str
    points: list[SweepPoint] = field(default_factory=list)
    noise: float = 0.01
    num_inputs: int = len(SEED_W)

    def errors(self, backend: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(values, w_error_norm, b_error_abs)`` of one backend, in grid order."""
        rows = [p for p in self.points if p.backend == backend]
        return (np.array([p.value for p in rows], dtype=float),
                np.array([p.w_error_norm for p in rows], dtype=float),
                np.array([p.b_error_abs for p in rows], dtype=float))


def write_csv(result: SweepResult, path: str | Path) -> Path:
    """Write one row per grid point and backend (atomically); return the path."""
    columns = [f.name for f in fields(SweepPoint)]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            for point in result.points:
                writer.writerow(asdict(point))

    return atomic_write(path, write, "sweep's CSV")


def plot_sweep(result: SweepResult, path: str | Path) -> Path:
    """Plot ``||w_hat - w||`` and ``|b_hat - b|`` against the swept value (PNG, Agg)."""
    from d2lx.plotting import pyplot

    plt = pyplot()
    from matplotlib import ticker

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120, sharex=True)
    titles = (r"$\|\hat{\mathbf{w}} - \mathbf{w}\|_2$", r"$|\hat{b} - b|$")
    markers = "osD^v<>"
    for i, name in enumerate(result.backends):
        x, w_err, b_err = result.errors(name)
        for ax, err in zip(axes, (w_err, b_err)):
            ok = np.isfinite(err) & (err > 0)
            ax.plot(x[ok], err[ok], marker=markers[i % len(markers)], ms=4, lw=1.2,
                    label=name, alpha=0.85)
            bad = ~np.isfinite(err)
            if bad.any():  # diverged: an x at the top edge of the axes
                ax.plot(x[bad], np.full(bad.sum(), 0.96), "x", color="crimson", ms=7,
                        transform=ax.get_xaxis_transform(), clip_on=False,
                        label="diverged" if i == 0 else None)
    if result.kind == "data":  # the least-squares rate, for exercise 5.2
        n = np.array(sorted({p.value for p in result.points}), dtype=float)
        d = result.num_inputs
        axes[0].plot(n, result.noise * np.sqrt(d / n), "--", color="grey", lw=1,
                     label=r"$\sigma\sqrt{d/n}$")
        axes[1].plot(n, result.noise / np.sqrt(n), "--", color="grey", lw=1, label=r"$\sigma/\sqrt{n}$")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(_LABELS[result.kind])
        ax.set_yscale("log")
        if result.kind in ("lr", "data"):
            ax.set_xscale("log")
        # Ticks at 1, 2, 5 x 10^k, labelled unless the axis spans many decades.
        ax.yaxis.set_minor_locator(ticker.LogLocator(subs=(2.0, 5.0)))
        ax.yaxis.set_minor_formatter(ticker.LogFormatterSciNotation(labelOnlyBase=False,
                                                                     minor_thresholds=(2.5, 2.5)))
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("estimation error")
    first = result.points[0] if result.points else None
    held = ""
    if first is not None:
        if result.kind == "lr":
            held = f"{first.epochs} epochs, n={first.num_train}"
        elif result.kind == "epochs":
            held = f"lr={first.lr:g}, n={first.num_train}"
        else:
            epochs = {p.epochs for p in result.points}
            budget = f"{first.epochs} epochs" if len(epochs) == 1 else "same step budget per size"
            held = f"lr={first.lr:g}, {budget}"
        held += f", batch<={max(p.batch_size for p in result.points)}, seed {first.seed}"
    fig.suptitle(f"d2lx sweep {result.kind}: {result.model} model ({held})", fontsize=10)
    fig.tight_layout()
    try:
        return write_figure(lambda tmp, fmt: fig.savefig(tmp, format=fmt), path)
    finally:
        plt.close(fig)
