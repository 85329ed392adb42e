"""Parameter sweeps over the seed experiment: ``d2lx sweep lr|epochs|data``.

Exercises 4 and 5 of d2l 3.5 ask how the learned ``w`` and ``b`` change with
the learning rate, the number of epochs and the amount of data. A sweep runs
:func:`d2lx.experiment.run_fit` once per grid point and backend, records the
estimation errors ``||w_hat - w||`` and ``|b_hat - b|``, and writes them to a
CSV file and a PNG plot (several backends are overlaid on one plot).

What is held fixed:

* ``lr``: ``epochs`` epochs on ``num_train`` examples; only the step size changes.
* ``epochs``: ``lr`` and ``num_train`` fixed; each point is a fresh seeded run of
  that many epochs (a prefix of the longest run, since runs are deterministic).
* ``data``: by default every size gets the same optimizer budget, at least
  ``steps`` minibatch steps (``epochs = ceil(steps / batches per epoch)``), so
  the plot shows the effect of *data*, not of training longer on bigger sets.
  Pass ``epochs=`` instead to train every size for the same number of epochs,
  as d2l's code would (then small sets also get few steps).

``batch_size`` is capped at the training set size (``min(batch_size, n)``). A
grid point whose loss diverges (``lr`` too large) is recorded with status
``diverged`` and NaN errors; the sweep goes on.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from d2lx import registry
from d2lx.errors import ArgumentTypeError, DivergenceError, InvalidArgumentError
from d2lx.experiment import MODEL_KINDS, SEED_B, SEED_W, run_fit
from d2lx.outputs import check_output_path
from d2lx.progress import progress_bar, progress_enabled
from d2lx.sweep_results import SweepPoint, SweepResult, plot_sweep, write_csv

SweepKind = Literal["lr", "epochs", "data"]
SWEEP_KINDS: tuple[str, ...] = ("lr", "epochs", "data")

#: Default grids. Data sizes follow d2l's hint (5, 10, 20, 50, ..., 10,000):
#: logarithmic, because the error shrinks like a power of n.
DATA_SIZES: tuple[int, ...] = (5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
LEARNING_RATES: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
MAX_EPOCHS = 10
DATA_STEPS = 1000

def parse_backends(backends: str | Sequence[str] | None) -> list[str]:
    """``"torch,jax"`` or ``["torch", "jax"]`` -> canonical names, in order, no repeats.

    ``None`` means the active backend. Every backend is imported here, so a
    missing framework fails before the first run, naming its install command.
    """
    if backends is None:
        names = [registry.current_backend_name()]
    else:
        items = backends.split(",") if isinstance(backends, str) else list(backends)
        names = [item for item in (str(b).strip() for b in items) if item]
        if not names:
            raise InvalidArgumentError("no backend given; pass e.g. --backends torch,jax")
    result: list[str] = []
    for name in names:
        key = registry.canonical_name(name)
        if key not in result:
            result.append(key)
    for key in result:
        registry.load(key)  # BackendNotInstalledError names the install command
    return result


def _grid(kind: str, values: Iterable[float | int | str] | None, max_epochs: int) -> list[float]:
    if values is None:
        if kind == "data":
            return [float(v) for v in DATA_SIZES]
        if kind == "lr":
            return list(LEARNING_RATES)
        return [float(e) for e in range(1, max_epochs + 1)]
    grid: list[float] = []
    for raw in values:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise InvalidArgumentError(
                f"sweep {kind}: grid value {raw!r} is not a number; pass e.g. --values 5,10,20"
            ) from None
        if not math.isfinite(value) or value <= 0:
            raise InvalidArgumentError(f"sweep {kind}: grid values must be positive, got {raw!r}")
        if kind in ("data", "epochs") and value != int(value):
            raise InvalidArgumentError(
                f"sweep {kind}: grid values must be whole numbers, got {raw!r}"
            )
        grid.append(value)
    if not grid:
        raise InvalidArgumentError(f"sweep {kind}: the grid is empty; pass at least one value")
    return grid


def sweep(
    kind: str,
    values: Iterable[float | int | str] | None = None,
    *,
    backends: str | Sequence[str] | None = None,
    model: str = "concise",
    seed: int | None = 0,
    lr: float = 0.03,
    epochs: int | None = None,
    steps: int | None = None,
    num_train: int = 1000,
    batch_size: int = 32,
    noise: float = 0.01,
    max_epochs: int = MAX_EPOCHS,
    device: str | None = None,
    progress: bool | None = None,
) -> SweepResult:
    """Run a sweep and return its points (nothing is written; see :func:`run_sweep`).

    ``kind`` is ``"lr"``, ``"epochs"`` or ``"data"``; ``values`` the grid
    (default: :data:`LEARNING_RATES`, ``1..max_epochs`` or :data:`DATA_SIZES`).
    ``epochs`` (default 3) is the training length of the ``lr`` sweep; for the
    ``data`` sweep pass either ``epochs`` or ``steps`` (default
    :data:`DATA_STEPS` steps at every size). The other settings are those of
    :func:`d2lx.experiment.run_fit`.
    """
    if kind not in SWEEP_KINDS:
        raise InvalidArgumentError(f"unknown sweep {kind!r}; use one of: {', '.join(SWEEP_KINDS)}")
    if model not in MODEL_KINDS:
        raise InvalidArgumentError(f"unknown model {model!r}; use one of: {', '.join(MODEL_KINDS)}")
    if epochs is not None and steps is not None:
        raise InvalidArgumentError("pass epochs or steps, not both (steps sets the epochs per size)")
    if steps is not None and kind != "data":
        raise InvalidArgumentError(f"steps applies to the data sweep only, not to sweep {kind}")
    if kind == "epochs" and epochs is not None:
        raise InvalidArgumentError("sweep epochs sweeps the epochs; set the grid with values or max_epochs")
    if kind == "data" and epochs is None and steps is None:
        steps = DATA_STEPS
    names = parse_backends(backends)
    grid = _grid(kind, values, max_epochs)
    result = SweepResult(kind=kind, backends=names, model=model, noise=noise)
    enabled = progress_enabled(progress)
    bar = progress_bar(len(grid) * len(names), f"sweep {kind}", enabled, unit="run")
    with contextlib.closing(bar):
        for name in names:
            for value in grid:
                point = _run_point(kind, value, name, model=model, seed=seed, lr=lr, epochs=epochs,
                                   steps=steps, num_train=num_train, batch_size=batch_size,
                                   noise=noise, device=device)
                result.points.append(point)
                bar.set_postfix_str(f"{name} {kind}={value:g} |w err| {point.w_error_norm:.3g}",
                                    refresh=False)
                bar.update(1)
    return result


def _run_point(kind: str, value: float, backend: str, *, model: str, seed: int | None, lr: float,
               epochs: int | None, steps: int | None, num_train: int, batch_size: int,
               noise: float, device: str | None) -> SweepPoint:
    n = int(value) if kind == "data" else num_train
    rate = value if kind == "lr" else lr
    bs = min(batch_size, n)
    if kind == "epochs":
        n_epochs = int(value)
    elif kind == "data" and steps is not None:
        n_epochs = max(1, math.ceil(steps / math.ceil(n / bs)))
    else:
        n_epochs = 3 if epochs is None else epochs
    def point(**outcome: Any) -> SweepPoint:
        shown = rate if kind == "lr" else (n if kind == "data" else n_epochs)
        return SweepPoint(sweep=kind, backend=backend, model=model, value=shown, lr=rate,
                          epochs=n_epochs, num_train=n, batch_size=bs, seed=seed, **outcome)

    try:
        fit = run_fit(backend, model, epochs=n_epochs, lr=rate, batch_size=bs, num_train=n,
                      num_val=0, w=SEED_W, b=SEED_B, noise=noise, seed=seed, device=device,
                      progress=False)
    except DivergenceError as exc:
        nan = float("nan")
        return point(steps=exc.step, w_error_norm=nan, b_error_abs=nan, train_loss=nan,
                     fit_seconds=nan, status="diverged",
                     framework_version=registry.load(backend).framework_version())
    return point(steps=fit.steps, w_error_norm=float(np.linalg.norm(fit.w_error)),
                 b_error_abs=abs(fit.b_error), train_loss=fit.train_loss,
                 fit_seconds=fit.fit_seconds, status="ok", framework_version=fit.framework_version)


def run_sweep(kind: str, out: str | Path = "sweeps", **kwargs: Any) -> tuple[SweepResult, Path, Path]:
    """:func:`sweep` (same keyword arguments), then write ``OUT/sweep_<kind>.csv`` and
    ``OUT/sweep_<kind>.png`` (each atomically); return the result and both paths.

    A folder that cannot be made or written is refused before the first fit.
    """
    if not isinstance(out, (str, os.PathLike)):
        raise ArgumentTypeError(f"out must be a folder path (str or Path), got {out!r}")
    folder = Path(out)
    # both files are checked before the first fit: a sweep runs for minutes, and its points
    # must not be lost to a path that could never have been written
    csv_path = check_output_path("out", folder / f"sweep_{kind}.csv")
    png_path = check_output_path("out", folder / f"sweep_{kind}.png", image=True)
    result = sweep(kind, **kwargs)
    return result, write_csv(result, csv_path), plot_sweep(result, png_path)


__all__ = [
    "DATA_SIZES",
    "DATA_STEPS",
    "LEARNING_RATES",
    "MAX_EPOCHS",
    "SWEEP_KINDS",
    "SweepPoint",
    "SweepResult",
    "parse_backends",
    "plot_sweep",
    "run_sweep",
    "sweep",
    "write_csv",
]
