"""The adapter contract: the device work of one ``fit``, as one typed :class:`Step`.

The core (:class:`d2lx.trainer.TrainerBase`) owns the control flow of a
fit: it iterates the loaders, moves foreign batches to the device
(``prepare_batch``), records the losses a step *returns*, checks for
divergence, counts batches, validates, feeds the board and runs callbacks.
An adapter supplies, per fit, an object that satisfies :class:`Step`:

* ``train(batch)`` / ``evaluate(batch)``: one optimizer step, one validation
  batch. Each returns the loss as a value of its framework, left on the
  device (no host sync); the core reads an epoch's losses in one transfer.
* ``run_epoch(train, val, steps_per_execution)``: an optional fast path for
  d2lx's own device-resident :class:`~d2lx.loader.ArrayLoader`: the whole
  epoch (and validation) in as few compiled calls as the framework allows
  (JAX's ``lax.scan``, TensorFlow's ``tf.while_loop``). ``None`` means "no
  such path here": the core then iterates the loader and calls ``train``.
* ``divergence()``: the guard. A step never applies an update whose loss,
  or whose resulting parameters, are not finite; it latches the first such
  step instead. ``host_guard`` says whether that is known on the host after
  each ``train`` (eager backends check there) or only when asked (compiled
  backends latch on the device and are read once per epoch).

``docs/adding-a-backend.md`` walks through an implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from d2lx.errors import ArgumentTypeError
from d2lx.loader import ArrayLoader, Batch

#: Why a step was refused: its loss, the parameters its update made, or its batch was not finite.
CAUSES = ("loss", "parameters", "data")


class Divergence(NamedTuple):
    """The first refused step of an epoch.

    ``step`` counts the steps of the epoch applied before it. ``restored``
    says which parameters the model holds now: ``"step"`` (those before the
    refused update, exactly) or ``"epoch"`` (those at the start of the
    epoch: an eager backend learns of overflowed parameters one step late).
    """

    step: int
    cause: str
    restored: str = "step"


class EpochResult(NamedTuple):
    """What :meth:`Step.run_epoch` read back: host copies, one transfer."""

    train_losses: np.ndarray
    val_losses: np.ndarray | None
    divergence: Divergence | None


@runtime_checkable
class Step(Protocol):
    """One fit's device work (see the module docstring)."""

    #: True if :meth:`divergence` is known on the host after every :meth:`train` (no device read).
    host_guard: bool

    def begin_epoch(self) -> None:
        """Reset the per-epoch guard (and whatever else the step keeps per epoch)."""
        ...

    def set_training(self, mode: bool) -> None:
        """Switch the model between training and evaluation behaviour (dropout, batch norm)."""
        ...

    def train(self, batch: Batch) -> Any:
        """One optimizer step on ``batch`` (already on the device); its loss, on the device."""
        ...

    def evaluate(self, batch: Batch) -> Any:
        """The validation loss of ``batch``, on the device."""
        ...

    def divergence(self, end_of_epoch: bool = False) -> Divergence | None:
        """The first refused step of this epoch, if any.

        ``end_of_epoch=True`` once, after the epoch's last step: the step may
        then read the device (a compiled latch, or the last update's parameters).
        """
        ...

    def run_epoch(self, train: ArrayLoader, val: ArrayLoader | None,
                  steps_per_execution: int) -> EpochResult | None:
        """The whole epoch over d2lx's device-resident loaders, or ``None`` if not provided."""
        ...


def step_loss(out: Any, observed: Sequence[tuple[Any, ...]], what: str) -> Any:
    """The loss of a ``training_step``/``validation_step``: what it returned, else what it plotted.

    d2l's ``validation_step`` returns nothing and only calls
    ``self.plot('loss', l, train=False)``; the value it plotted then stands
    for the return value. One rule for every backend, eager or traced.
    """
    if out is not None:
        return out
    for key, value, *_ in reversed(observed):  # (key, value, train)
        if key == "loss":
            return value
    raise ArgumentTypeError(
        f"{what} returned nothing and plotted no loss; return the loss, or report it with "
        f"self.plot('loss', l, train=...) as d2l does"
    )
