"""What a model reports while it trains: d2l's ``plot`` calls, the losses, the board.

d2l's ``Module.plot(key, value, train)`` draws a point on the model's board
at a position that depends on the trainer's counters (the fraction of epochs
done, or the epoch's end). :class:`Reporting` is the trainer's side of it:
inside d2lx's own loop a step's ``plot`` calls are collected (the loss the
step returns is recorded by the loop; other keys are drawn when the step
ends), and from a reader's own ``fit_epoch`` they are recorded as they come.
At the end of an epoch of d2lx's loop the losses read back from the device
are drawn at d2l's positions, in one pass on the host.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from d2lx.errors import InvalidArgumentError
from d2lx.guard import raise_if_not_finite
from d2lx.outputs import write_figure


class _Observation:
    """:meth:`Reporting.observing`'s context: a plain class, as it is entered twice per step."""

    __slots__ = ("draw_extras", "previous", "reporting", "seen")

    def __init__(self, reporting: Reporting, draw_extras: bool) -> None:
        self.reporting, self.draw_extras = reporting, draw_extras
        self.seen: list[tuple[str, Any, bool]] = []
        self.previous: list[tuple[str, Any, bool]] | None = None

    def __enter__(self) -> list[tuple[str, Any, bool]]:
        self.previous, self.reporting._observing = self.reporting._observing, self.seen
        return self.seen

    def __exit__(self, *exc_info: object) -> None:
        reporting = self.reporting
        reporting._observing = self.previous
        if self.draw_extras:
            for key, value, train in self.seen:
                if key != "loss":
                    reporting._draw(reporting.model, key, value, train)


class Reporting:
    """The trainer's side of ``Module.plot`` (a mixin of :class:`d2lx.trainer.TrainerBase`)."""

    model: Any
    epoch: int
    train_batch_idx: int
    num_train_batches: int
    num_val_batches: int
    check_finite: bool
    train_dataloader: Any
    val_dataloader: Any
    _train_meter: Any
    _val_meter: Any
    _board_fed: bool
    _observing: list[tuple[str, Any, bool]] | None = None

    def observing(self, draw_extras: bool = True) -> _Observation:
        """Collect the ``plot`` calls of one step as ``(key, value, train)`` (a context manager).

        d2lx's loop records the loss the step returns (or, if it returns
        nothing, the one it plotted: :func:`d2lx.step.step_loss`); other keys
        are drawn on the board when the step ends, unless ``draw_extras`` is
        false (a step being traced has only symbolic values).
        """
        return _Observation(self, draw_extras)

    def observe(self, model: Any, key: str, value: Any, train: bool) -> None:
        """A model's ``self.plot(key, value, train)``: d2l's board, and the loss for the history.

        Inside d2lx's loop the value is only collected (:meth:`observing`).
        From a reader's own ``fit_epoch`` it is recorded: a training loss
        that is not finite stops the run here, before the step's update.
        """
        if self._observing is not None:
            self._observing.append((key, value, train))
            return
        if key == "loss":
            if train and self.check_finite:
                raise_if_not_finite(self, None, [value])
            loader = self.train_dataloader if train else self.val_dataloader
            (self._train_meter if train else self._val_meter).add(value, getattr(loader, "current_size", 1))
        self._board_fed = True
        self._draw(model, key, value, train)

    def _draw(self, model: Any, key: str, value: Any, train: bool) -> None:
        """d2l's board position of a value reported now: fraction of epochs done (train), or epoch + 1."""
        n = self.num_train_batches or 1
        if train:
            x, every = self.train_batch_idx / n, n / model.plot_train_per_epoch
        else:
            x, every = self.epoch + 1, (self.num_val_batches or 1) / model.plot_valid_per_epoch
        model.board.draw(x, value, ("train_" if train else "val_") + key, every_n=max(1, int(every)))

    def _feed_board(self, train: np.ndarray, val: np.ndarray, first_step: int) -> None:
        """Draw an epoch's losses on the model's board at d2l's positions, from host values."""
        model, board = self.model, self.model.board
        n = self.num_train_batches or max(1, len(train))
        every = max(1, int(n / model.plot_train_per_epoch))
        steps = np.arange(first_step, first_step + len(train), dtype=np.float64) / n
        board.draw_many(steps.tolist(), train.tolist(), "train_loss", every_n=every)
        every = max(1, int(max(1, len(val)) / model.plot_valid_per_epoch))
        board.draw_many([self.epoch + 1] * len(val), val.tolist(), "val_loss", every_n=every)

    def plot(self, path: str | Path) -> Path:
        """Write the model's board (d2l's loss curves of the last ``fit``) to ``path``."""
        model = self.model
        if model is None:
            raise InvalidArgumentError("nothing to plot yet: call fit(model, data) first")
        lr = getattr(model, "lr", None)
        title = f"{type(model).__name__}" + (f", lr={lr:g}" if isinstance(lr, (int, float)) else "")
        title += f" · {self.backend_name}, {', '.join(str(s) for s in self.device_specs)}"  # type: ignore[attr-defined]
        return write_figure(lambda tmp, fmt: model.board.save(tmp, title=title, format=fmt), path)
