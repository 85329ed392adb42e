"""The divergence guard: its errors (one wording for every backend) and the eager backends' guards.

A step never keeps an update whose loss, or whose resulting parameters,
are NaN or inf (see :mod:`d2lx.step`): it does not apply it, or, with
:class:`LateGuard`, undoes it before the next update. The core turns what
the step latched into the error here, after putting the step counter where
training stopped.
Losses read back at the end of an epoch are checked too: a validation loss
can overflow although every parameter is finite.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from d2lx.errors import DivergenceError, NonFiniteDataError
from d2lx.loader import to_numpy
from d2lx.step import Divergence

_ADVICE = "Lower the learning rate (lr) or set gradient_clip_val, and check the data scale"


def raise_divergence(trainer: Any, first_step: int, divergence: Divergence) -> None:
    """Raise the error for ``divergence``: the first refused step of the epoch begun at ``first_step``."""
    trainer.train_batch_idx = step = first_step + divergence.step
    epoch = trainer.epoch
    if divergence.cause == "data":
        raise NonFiniteDataError(
            f"training batch {divergence.step} of epoch {epoch} (step {step}) contains NaN or inf; "
            "its update was not applied. Clean or impute the data the loader yields "
            "(e.g. np.nan_to_num) before training")
    what = {"loss": "the loss became NaN or inf",
            "parameters": "the update made the parameters NaN or inf (float32 overflow)"}[divergence.cause]
    if divergence.restored == "epoch":
        kept = (f"the model was reset to its parameters at the start of epoch {epoch}, the last ones "
                "known to be finite")
    else:
        kept = "the update of that step was not applied, so the model keeps the last finite parameters"
    raise DivergenceError(f"training diverged: {what} at epoch {epoch}, step {step}; {kept}. {_ADVICE}",
                          epoch=epoch, step=step)


def raise_if_not_finite(trainer: Any, val: Sequence[Any] | np.ndarray | None,
                        train: Sequence[Any] | np.ndarray | None) -> None:
    """Raise if a training loss (a reader's loop) or a validation loss read back is NaN or inf."""
    if train is not None and len(train):
        values = train if isinstance(train, np.ndarray) else np.concatenate(
            [np.asarray(to_numpy(v), dtype=np.float64).reshape(-1) for v in train])
        if not np.isfinite(values).all():
            bad = int(np.argmin(np.isfinite(values)))
            done = trainer.train_batch_idx
            step = done if len(values) == 1 else done - len(values) + bad
            raise DivergenceError(
                f"training diverged: the loss became NaN or inf at epoch {trainer.epoch}, step {step}; "
                f"the update of that step was not applied, so the model keeps the last finite "
                f"parameters. {_ADVICE}", epoch=trainer.epoch, step=step)
    if val is not None and len(val) and not np.isfinite(np.asarray(val, dtype=np.float64)).all():
        raise DivergenceError(
            f"training diverged: the validation loss after epoch {trainer.epoch} (step "
            f"{trainer.train_batch_idx}) is NaN or inf, although the training steps were finite: the "
            f"parameters predict values beyond float32's range on the validation data. {_ADVICE}",
            epoch=trainer.epoch, step=trainer.train_batch_idx)


class EagerGuard:
    """The guard of an eager step (PyTorch, MXNet): one host read of the loss per step.

    The step reads its loss (``loss.item()``) before it updates, as d2l's own
    loop does when it plots the loss; on the CPU that costs about a
    microsecond. A non-finite loss is never applied. An update that overflows
    the parameters shows up as the next step's non-finite loss, or in the one
    parameter check at the end of the epoch; the model is then reset to the
    copy taken at the start of the epoch (the last parameters known to be
    finite), which is far cheaper than copying the parameters every step.

    The framework's part: ``all_finite(arrays) -> bool`` (one host read;
    it skips what is not a floating-point array of its framework, such as a
    batch's integer labels), ``copy(array)`` and ``assign(array, value)`` (in
    place: optimizers and gradient buffers keep pointing at the parameters).
    """

    def __init__(self, params: list[Any], check: bool, all_finite: Any, copy: Any, assign: Any) -> None:
        self.params, self.check = params, check
        self._all_finite, self._copy, self._assign = all_finite, copy, assign
        self._bad: Divergence | None = None
        self._applied = 0
        self._snapshot: list[Any] = []

    def begin_epoch(self) -> None:
        self._bad, self._applied = None, 0
        if self.check:
            self._snapshot = [self._copy(p) for p in self.params]

    def accepts(self, loss_value: float, batch: Sequence[Any]) -> bool:
        """Whether a step with this loss may update; if not, latch why (data, last update, or loss).

        The batch is only looked at when the loss is not finite: the common
        step costs one comparison.
        """
        if not self.check or math.isfinite(loss_value):
            return True
        if not self._all_finite(list(batch)):
            self._bad = Divergence(self._applied, "data")
        elif not self._all_finite(self.params):
            self._restore()
            self._bad = Divergence(max(self._applied - 1, 0), "parameters", "epoch")
        else:
            self._bad = Divergence(self._applied, "loss")
        return False

    def applied(self) -> None:
        self._applied += 1

    def divergence(self, end_of_epoch: bool) -> Divergence | None:
        if self._bad is None and end_of_epoch and self.check and self._applied \
                and not self._all_finite(self.params):
            self._restore()  # the epoch's last update overflowed
            self._bad = Divergence(self._applied - 1, "parameters", "epoch")
        return self._bad

    def _restore(self) -> None:
        for param, saved in zip(self.params, self._snapshot):
            self._assign(param, saved)


class UpdateSaver(Protocol):
    """What a :class:`LateGuard` copies before each update and puts back when the update is refused."""

    def save(self) -> None:
        """Copy what the coming update changes (the parameters, the optimizer's state), on the device."""
        ...

    def undo(self) -> None:
        """Put back what :meth:`save` copied: the update since then is gone, exactly."""
        ...


class LateGuard(EagerGuard):
    """The guard of an asynchronous eager step (MXNet): a step's loss is read one step late.

    Why: MXNet queues each operation on its engine and returns at once, so
    the host can prepare step k+1 while step k computes. Reading step k's
    loss before its update, as :class:`EagerGuard` does, makes the host wait
    for every forward pass: in A/B runs of the MLP benchmark that cost
    1.23-1.35x the hand-written loop, and the read a step late 1.05-1.14x,
    about what no guard costs (1.01-1.13x in the same runs). So each update
    lands after ``saver.save()`` has copied what it changes (on the engine:
    the host does not wait), and its loss is read once the next step's
    forward pass is queued, by which time it is ready. A
    non-finite loss is then undone from that copy before the next update,
    and the verdict is :class:`EagerGuard`'s on the same step: the model
    ends exactly where the eager guard leaves it, and the refused update is
    never kept.

    The step calls :meth:`resolve` after queuing a step's forward pass and,
    if it returns True, runs the backward pass and calls :meth:`will_update`
    before the update. If it returns False, the backward pass is skipped, so
    the gradient buffers keep the refused step's gradients. When an error or
    an interrupt leaves an epoch early, the core asks for the epoch's verdict
    on the way out (``divergence(end_of_epoch=True)``), so the one update
    whose loss is still unread is judged too.
    """

    def __init__(self, params: list[Any], check: bool, all_finite: Any, copy: Any, assign: Any,
                 saver: UpdateSaver) -> None:
        super().__init__(params, check, all_finite, copy, assign)
        self._saver = saver
        self._pending: tuple[Any, Sequence[Any]] | None = None  # the last update's loss and batch

    def begin_epoch(self) -> None:
        super().begin_epoch()
        self._pending = None

    def resolve(self) -> bool:
        """Judge the last update by its loss (one host read); False once a step was refused and undone."""
        if self._pending is not None:
            loss, batch = self._pending
            self._pending = None
            value = loss.item()
            if not math.isfinite(value):
                self._saver.undo()
                self._applied -= 1
                self.accepts(value, batch)  # the eager verdict, on the parameters before that update
        return self._bad is None

    def will_update(self, loss: Any, batch: Sequence[Any]) -> None:
        """Copy what the coming update changes; its ``loss`` is judged at the next :meth:`resolve`."""
        self._saver.save()
        self._pending = (loss, batch)
        self.applied()

    def divergence(self, end_of_epoch: bool) -> Divergence | None:
        if end_of_epoch:
            self.resolve()  # the epoch's last update
        return super().divergence(end_of_epoch)
