"""Per-epoch training history and the device-side loss meter.

Why a meter: reading a loss back to the host (``loss.item()``) forces the
device to finish its queued work. The meter keeps each step's loss as the
framework's own scalar and converts the whole epoch in one call at the end,
so recording the loss costs no synchronisation per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(repr=False)
class History:
    """What a ``Trainer.fit`` run produced, one entry per finished epoch.

    ``epoch`` holds each epoch's 0-based index, as d2l's ``trainer.epoch``
    counts them; plots put an epoch's end at ``epoch + 1`` on their x axis
    (epochs completed), as d2l's board does. ``train_loss`` is the mean of the
    epoch's minibatch losses (d2l plots the
    same quantity); ``val_loss`` is the example-weighted mean over the
    validation set, i.e. the loss of the whole validation set at the end of
    the epoch (``nan`` when there is no validation data).
    """

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def append(self, epoch: int, train_loss: float, val_loss: float, seconds: float) -> None:
        self.epoch.append(epoch)
        self.train_loss.append(train_loss)
        self.val_loss.append(val_loss)
        self.seconds.append(seconds)

    def __len__(self) -> int:
        return len(self.epoch)

    def __repr__(self) -> str:
        if not self.epoch:
            return "History(no epochs)"
        return (f"History({len(self.epoch)} epoch{'s' if len(self.epoch) != 1 else ''}: "
                f"train_loss {self.train_loss[-1]:.4g}, val_loss {self.val_loss[-1]:.4g})")

    def __getitem__(self, key: str) -> list[Any]:
        if key not in ("epoch", "train_loss", "val_loss", "seconds"):
            raise KeyError(key)
        values: list[Any] = getattr(self, key)
        return values

    def as_dict(self) -> dict[str, list[Any]]:
        """Plain lists, ready for ``json.dumps``."""
        return {k: list(self[k]) for k in ("epoch", "train_loss", "val_loss", "seconds")}


class LossMeter:
    """Collects (loss, batch size) pairs on the device; reads them to the host once per epoch."""

    def __init__(self, to_host: Callable[[list[Any]], np.ndarray]) -> None:
        self._to_host = to_host
        self.values: list[Any] = []
        self.counts: list[int] = []
        self._host: np.ndarray | None = None

    def add(self, value: Any, count: int) -> None:
        self.values.append(value)
        self.counts.append(count)
        self._host = None

    def add_many(self, values: Any, counts: list[int]) -> None:
        """A vector of losses (one per step of a compiled call) and their batch sizes."""
        self.values.append(values)
        self.counts.extend(counts)
        self._host = None

    def reset(self) -> None:
        self.values.clear()
        self.counts.clear()
        self._host = None

    def host_values(self) -> np.ndarray:
        """Every recorded loss as float64 NumPy: one transfer, then cached until the next ``add``."""
        if self._host is None:
            if not self.values:
                self._host = np.zeros((0,), dtype=np.float64)
            else:
                self._host = np.asarray(self._to_host(self.values), dtype=np.float64).reshape(-1)
        return self._host

    def mean(self, weighted: bool) -> float:
        """Mean of the recorded losses, weighted by batch size if ``weighted``."""
        values = self.host_values()
        if values.size == 0:
            return float("nan")
        if not weighted:
            return float(values.mean())
        counts = np.asarray(self.counts, dtype=np.float64)
        return float((values * counts).sum() / counts.sum())
