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


@dataclass
class History:
    """What a ``Trainer.fit`` run produced, one entry per finished epoch.

    ``train_loss`` is the mean of the epoch's minibatch losses (d2l plots the
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

    def __getitem__(self, key: str) -> list[Any]:
        if key not in ("epoch", "train_loss", "val_loss", "seconds"):
            raise KeyError(key)
        values: list[Any] = getattr(self, key)
        return values

    def as_dict(self) -> dict[str, list[Any]]:
        """Plain lists, ready for ``json.dumps``."""
        return {k: list(self[k]) for k in ("epoch", "train_loss", "val_loss", "seconds")}


class LossMeter:
    """Collects (loss, batch size) pairs on the device; reduces them once per epoch."""

    def __init__(self, to_host: Callable[[list[Any]], np.ndarray]) -> None:
        self._to_host = to_host
        self.values: list[Any] = []
        self.counts: list[int] = []

    def add(self, value: Any, count: int) -> None:
        self.values.append(value)
        self.counts.append(count)

    def reset(self) -> None:
        self.values.clear()
        self.counts.clear()

    def host_values(self) -> np.ndarray:
        if not self.values:
            return np.zeros((0,), dtype=np.float64)
        return np.asarray(self._to_host(self.values), dtype=np.float64).reshape(-1)

    def mean(self, weighted: bool) -> float:
        """Mean of the recorded losses, weighted by batch size if ``weighted``."""
        values = self.host_values()
        if values.size == 0:
            return float("nan")
        if not weighted:
            return float(values.mean())
        counts = np.asarray(self.counts, dtype=np.float64)
        return float((values * counts).sum() / counts.sum())
