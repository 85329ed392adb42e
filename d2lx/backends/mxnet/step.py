"""The MXNet step: d2l 3.4's MXNet ``fit_epoch`` body, eager, guarded, one host read per step.

``train`` is d2l's: ``training_step`` (forward and loss) under
``autograd.record()``, ``loss.backward()``, optional clipping, then
``optim.step(1)``, for any model and any optimizer (``gluon.Trainer`` or a
hand-written one with ``step``). The ``1`` matters:
``gluon.Trainer.step(batch_size)`` divides gradients by its argument, and
the losses are already minibatch means, so any other value would shrink the
step (and by a different factor on the shorter last batch).

The guard reads the loss once per step. With a ``gluon.Trainer`` or d2lx's
``SGD`` on one context (and the guard on) it is
:class:`d2lx.guard.LateGuard`: the update lands after a copy of the
parameters and the optimizer's state (made on MXNet's engine), and the
loss is read a step later, when it is ready, so the host does not wait for
each step's forward pass; a non-finite loss is undone from the copy. With
any other optimizer (whose state d2lx cannot copy) it is
:class:`d2lx.guard.EagerGuard`, which reads the loss before the update.
Either way a non-finite loss's update is never kept.
"""

from __future__ import annotations

from typing import Any

import mxnet as mx
from mxnet import autograd, gluon, np

from d2lx.backends.mxnet.models import SGD
from d2lx.backends.mxnet.ops import as_np
from d2lx.errors import ArgumentTypeError
from d2lx.guard import EagerGuard, LateGuard
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


def _save_tree(state: Any, saved: Any) -> Any:
    """Copy ``state`` (an array, ``None``, or tuples and lists of them) into ``saved``, its earlier copy
    (made now when ``None``): in place, so a step allocates nothing."""
    if isinstance(state, (tuple, list)):
        saved = saved if saved is not None else [None] * len(state)
        return [_save_tree(part, copy) for part, copy in zip(state, saved)]
    if state is None:
        return None
    if saved is None:
        return state.copy()
    state.copyto(saved)
    return saved


def _undo_tree(state: Any, saved: Any) -> None:
    if isinstance(state, (tuple, list)):
        for part, copy in zip(state, saved):
            _undo_tree(part, copy)
    elif state is not None:
        saved.copyto(state)


class GluonUpdateSaver:
    """:class:`d2lx.guard.UpdateSaver` for the parameters and, with a ``gluon.Trainer``, its optimizer.

    Gluon keeps an optimizer's state in its updaters (``states``: one entry
    per parameter, made on its first update) and counts updates on the host
    (``_index_update_count``, ``num_update``: learning-rate schedules and
    Adam's bias correction read them). All of it is copied, so an undone
    update leaves no trace; the arrays are copied in place into buffers kept
    for the fit.
    """

    def __init__(self, params: list[np.ndarray], optim: gluon.Trainer | None) -> None:
        self.params = params
        self.optim = optim
        self._params: list[np.ndarray] = []
        self._states: dict[tuple[int, int], Any] = {}
        self._counts: dict[Any, dict[int, int]] = {}
        self._num_update = 0

    def save(self) -> None:
        if not self._params:
            self._params = [p.copy() for p in self.params]
        else:
            for param, saved in zip(self.params, self._params):
                param.copyto(saved)
        if self.optim is None:
            return
        saved = self._states  # the buffers of states already seen are reused
        self._states = {(u, index): _save_tree(state, saved.get((u, index)))
                        for u, updater in enumerate(self.optim._updaters)
                        for index, state in updater.states.items()}
        optimizer = self.optim._optimizer
        self._counts = {device: dict(counts) for device, counts in optimizer._all_index_update_counts.items()}
        self._num_update = optimizer.num_update

    def undo(self) -> None:
        for param, saved in zip(self.params, self._params):
            saved.copyto(param)
        if self.optim is None:
            return
        for u, updater in enumerate(self.optim._updaters):
            for index in list(updater.states):
                if (u, index) in self._states:
                    _undo_tree(updater.states[index], self._states[u, index])
                else:  # made by the undone update: made again by the next one
                    del updater.states[index]
                    updater.states_synced.pop(index, None)
        optimizer = self.optim._optimizer
        for device, counts in optimizer._all_index_update_counts.items():
            counts.clear()  # in place: the optimizer's current counts are one of these dicts
            counts.update(self._counts.get(device, {}))
        optimizer.num_update = self._num_update


def update_saver(optim: Any, params: list[np.ndarray], contexts: list[mx.Context]) -> GluonUpdateSaver | None:
    """A saver for ``optim``'s updates, or ``None`` where d2lx cannot copy all they change.

    One context only (several share a kvstore, see ``distributed.py``);
    ``gluon.Trainer`` only where it updates on the host's updaters (a
    distributed kvstore keeps the state itself); d2lx's stateless ``SGD``
    (not a subclass of it).
    A reader's own optimizer may keep state of its own: it gets the eager
    guard.
    """
    if len(contexts) != 1:
        return None
    if type(optim) is SGD:  # a subclass may keep state of its own
        return GluonUpdateSaver(params, None)
    if isinstance(optim, gluon.Trainer):
        kvstore = optim._kvstore_params["kvstore"]
        if (kvstore is None or (isinstance(kvstore, str) and "dist" not in kvstore)) \
                and not optim._contains_sparse_weight:
            return GluonUpdateSaver(params, optim)
    return None


class MXNetStep:
    """:class:`d2lx.step.Step` for one MXNet fit (one context; see ``distributed.py`` for several)."""

    host_guard = True

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.model = trainer.model
        self.optim = trainer.optim
        self.contexts: list[mx.Context] = list(trainer.contexts)
        params = [a for ctx in self.contexts for a in self.model.param_arrays(ctx)]
        # with check_finite=False nothing is read, so nothing needs copying to be read late
        saver = update_saver(self.optim, params, self.contexts) if trainer.check_finite else None
        self.guard: EagerGuard = EagerGuard(params, trainer.check_finite, all_finite, _copy, _assign) \
            if saver is None else LateGuard(params, trainer.check_finite, all_finite, _copy, _assign, saver)

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
        guard = self.guard
        if isinstance(guard, LateGuard):
            # The last step's loss, ready by now: this forward pass is queued after its update. If it is
            # refused, backward is not run, so the gradient buffers keep the refused step's gradients.
            if guard.resolve():
                loss.backward()
                guard.will_update(loss, batch)
                self.update()
            return loss.detach()
        # backward is queued before the eager guard's read of the loss: while the host waits, the engine
        # goes on into the backward pass (gradients are only written; the update, which the guard decides
        # on, comes after)
        loss.backward()
        if self.accepts(loss, batch):
            self.update()
            guard.applied()
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
