"""The MXNet step: d2l 3.4's MXNet ``fit_epoch`` body, eager, guarded, one host read per step.

``train`` is d2l's: ``training_step`` (forward and loss) under
``autograd.record()``, ``loss.backward()``, optional clipping, then
``optim.step(1)``, for any model and any optimizer (``gluon.Trainer`` or a
hand-written one with ``step``). The ``1`` matters:
``gluon.Trainer.step(batch_size)`` divides gradients by its argument, and
the losses are already minibatch means, so any other value would shrink the
step (and by a different factor on the shorter last batch).

The guard (:class:`d2lx.guard.EagerGuard`) reads the loss once per step,
after ``backward`` is queued and before the update, so a non-finite loss
never lands (its gradients are written, not applied).
"""

from __future__ import annotations

from typing import Any

import mxnet as mx
from mxnet import autograd, np

from d2lx.backends.mxnet.ops import as_np
from d2lx.errors import ArgumentTypeError
from d2lx.guard import EagerGuard
from d2lx.loader import ArrayLoader, Batch
from d2lx.step import Divergence, EpochResult, step_loss


def all_finite(arrays: list[Any]) -> bool:
    """One host read: are all floating-point arrays among ``arrays`` finite (whatever their contexts)?"""
    arrays = [a for a in map(as_np, arrays) if isinstance(a, np.ndarray) and a.dtype.kind == "f"]
    if not arrays:
        return True
    first = arrays[0].ctx
    flags = np.stack([np.isfinite(a).all().as_in_ctx(first) for a in arrays])
    return bool(flags.all().item())


def scalar_loss(loss: Any, what: str) -> np.ndarray:
    """The loss as a one-element ``mxnet.np`` array; anything else is refused with the fix.

    MXNet's ``backward`` on a vector silently sums it (a per-example loss
    would take a step ``batch_size`` times too large), so the batch's loss
    must be one number, as on every d2lx backend.
    """
    loss = as_np(loss)
    if not isinstance(loss, np.ndarray) or loss.size != 1:
        shape = tuple(loss.shape) if isinstance(loss, np.ndarray) else type(loss).__name__
        raise ArgumentTypeError(f"{what} must return the batch's loss as one number (a scalar array, "
                                f"e.g. l.mean()), got {shape}")
    return loss


def _copy(array: np.ndarray) -> np.ndarray:
    return array.copy()


def _assign(array: np.ndarray, value: np.ndarray) -> None:
    array[:] = value  # in place (every context's copy): the gradient buffers stay attached


class MXNetStep:
    """:class:`d2lx.step.Step` for one MXNet fit (one context; see ``distributed.py`` for several)."""

    host_guard = True

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.model = trainer.model
        self.optim = trainer.optim
        self.contexts: list[mx.Context] = list(trainer.contexts)
        params = [a for ctx in self.contexts for a in self.model.param_arrays(ctx)]
        self.guard = EagerGuard(params, trainer.check_finite, all_finite, _copy, _assign)

    def begin_epoch(self) -> None:
        self.guard.begin_epoch()

    def set_training(self, mode: bool) -> None:
        """Nothing to switch: MXNet's training mode is autograd's (``record()`` trains, outside predicts)."""

    def _loss(self, batch: Batch) -> np.ndarray:
        with self.trainer.observing() as seen:
            with autograd.record():
                out = self.model.training_step(batch)
            loss = step_loss(out, seen, "training_step")
        return scalar_loss(loss, "training_step")

    def accepts(self, loss: np.ndarray, batch: Batch) -> bool:
        """The guard's verdict on this step (one host read of the loss)."""
        return self.guard.accepts(loss.item(), batch) if self.guard.check else True

    def train(self, batch: Batch) -> np.ndarray:
        loss = self._loss(batch)
        # backward is queued before the guard's read of the loss: while the host waits for the
        # forward pass, the engine goes on into the backward pass (gradients are only written; the
        # update, which the guard decides on, comes after)
        loss.backward()
        if self.accepts(loss, batch):
            self.update()
            self.guard.applied()
        return loss.detach()

    def update(self) -> None:
        """d2l's update after ``backward``: clip if asked, then ``optim.step(1)`` (see the module doc)."""
        if self.trainer.gradient_clip_val > 0:
            self.trainer.clip_gradients(self.trainer.gradient_clip_val, self.model)
        self.optim.step(1)

    def evaluate(self, batch: Batch) -> Any:
        """The validation loss, outside ``record()``: no graph, predict mode."""
        with self.trainer.observing() as seen:
            loss = step_loss(self.model.validation_step(batch), seen, "validation_step")
        loss = as_np(loss)
        return loss.detach() if isinstance(loss, np.ndarray) else loss

    def divergence(self, end_of_epoch: bool = False) -> Divergence | None:
        return self.guard.divergence(end_of_epoch)

    def run_epoch(self, train: ArrayLoader, val: ArrayLoader | None, steps_per_execution: int
                  ) -> EpochResult | None:
        return None  # eager: the core iterates the loader (batches are slices on the device)
