"""The JAX step: the compiled programs of :mod:`d2lx.backends.jax.compiled` run for one fit.

:class:`JaxStep` holds what passes between the calls of an epoch (the
carry, donated from call to call) and brings ``trainer.state`` (the flax
train state d2l's JAX code reads) up to date at the end of every epoch. An
epoch over d2lx's own loader is a few compiled calls with one read back to
the host; any other loader's batches go to the one-batch program as they
come, host arrays and all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from d2lx.backends.jax.carry import Carry, begin, read, zeros_like
from d2lx.backends.jax.compiled import Programs, StepSpec, programs
from d2lx.backends.jax.module import ArrayState, Params, join_opt_state, split_opt_state, strip_state
from d2lx.loader import ArrayLoader, Batch, host_array
from d2lx.step import CAUSES, Divergence, EpochResult


def divergence_of(flags: np.ndarray) -> Divergence | None:
    """The latch read back (diverged, bad step, cause) as a :class:`~d2lx.step.Divergence`."""
    if not flags[0]:
        return None
    return Divergence(int(flags[1]), CAUSES[int(flags[2]) - 1] if 1 <= flags[2] <= 3 else "loss")


def order_transfer() -> Any:
    """Allow the one host-to-device copy an epoch makes: its shuffle order, as a jit argument.

    JAX's C++ dispatch copies a NumPy argument (about 10 us); ``device_put``
    of the same 4 KB costs about 100 us of Python. Only this call relaxes a
    ``jax.transfer_guard("disallow")`` set by the user.
    """
    return jax.transfer_guard_host_to_device("allow")


class JaxStep:
    """:class:`d2lx.step.Step` for one JAX fit: the compiled programs, and the carry between calls."""

    host_guard = False
    #: The compiled step applies a reader's ``prepare_batch`` itself (see ``compiled._prepared``).
    prepares_batches = True

    def __init__(self, trainer: Any, spec: Callable[[bool], StepSpec]) -> None:
        self.trainer = trainer
        self._spec = spec  # the run's StepSpec for d2lx's loaders (False) or other loaders (True)
        self._carry: Carry | None = None
        self._programs: Programs | None = None  # other loaders' programs (one fit: one spec)
        self._eval_state: tuple[Any, Any] = (None, None)  # (train state, its evaluate call)
        self._train_call: Callable[[Carry, Batch], tuple[Carry, jax.Array]] | None = None

    def begin_epoch(self) -> None:
        self._carry = None

    def set_training(self, mode: bool) -> None:
        self.trainer.model.training = mode

    def _grads(self) -> Params:
        grads = self.trainer.last_grads
        return grads if grads is not None else zeros_like(self.trainer.state.params)

    def _finish(self, state: ArrayState, grads: Params, applied: bool) -> None:
        trainer = self.trainer
        trainer.state = trainer.state.replace(step=state.step, params=state.params,
                                              batch_stats=state.batch_stats,
                                              opt_state=join(state.opt_state, trainer.state.opt_state))
        if applied:
            trainer.last_grads = grads

    def run_epoch(self, train: ArrayLoader, val: ArrayLoader | None, steps_per_execution: int) -> EpochResult:
        trainer, spec = self.trainer, self._spec(False)
        fns = programs(spec)
        order = train.epoch_order()  # consumes the shuffle stream exactly like iteration
        if order is not None:
            order = np.asarray(order, dtype=np.int32)  # JAX has no int64 by default
        steps, rng = len(train), trainer.state.dropout_rng
        val_tensors, val_bs = (None, 0) if val is None else (tuple(val.tensors), val.batch_size)
        state, _ = strip_state(trainer.state)
        if steps_per_execution >= steps:
            with order_transfer():
                state, grads, record = fns.epoch(state, self._grads(), rng, tuple(train.tensors), order,
                                                 train.batch_size, val_tensors, val_bs)
        else:
            with order_transfer():
                carry, order_on_device = begin(state, self._grads(), steps, order)
            full, done = len(train.batch_sizes()) - (1 if train.num_examples % train.batch_size else 0), 0
            tensors = tuple(train.tensors)
            while done < full:
                k = min(steps_per_execution, full - done)
                carry, done = fns.chunk(carry, rng, tensors, order_on_device, k, train.batch_size), done + k
            if full < steps:
                carry = fns.tail(carry, rng, tensors, order_on_device, train.batch_size)
            state, grads, record = fns.finish(carry, rng, val_tensors, val_bs, trainer.state.params)
        host = np.asarray(record)  # the epoch's one device-to-host transfer (see ops.to_host)
        divergence = divergence_of(host[steps:steps + 3])
        applied = divergence is None or divergence.step > 0 or trainer.last_grads is not None
        self._finish(state, grads, applied=applied)
        losses = host[:steps] if divergence is None else host[:divergence.step + 1]
        return EpochResult(losses, None if val is None else host[steps + 3:], divergence)

    # -- any other loader: one compiled call per batch, host arrays copied by the call itself -------
    def _batch_programs(self) -> Programs:
        if self._programs is None:
            self._programs = programs(self._spec(True))
        return self._programs

    def train(self, batch: Batch) -> jax.Array:
        if self._carry is None:  # the epoch's first batch: what every call of the epoch shares
            state, _ = strip_state(self.trainer.state)
            self._carry = begin(state, self._grads(), 0)[0]  # a copy: the calls below donate their carry
            self._train_call = batch_caller(self._batch_programs().batch, self.trainer.state.dropout_rng)
        call = self._train_call
        assert call is not None
        self._carry, loss = call(self._carry, batch)
        return loss

    def evaluate(self, batch: Batch) -> jax.Array:
        state = self.trainer.state
        if self._eval_state[0] is not state:  # the state changes once per epoch, not per batch
            call = batch_caller(self._batch_programs().eval_batch, state.dropout_rng)
            self._eval_state = (state, functools.partial(call, strip_state(state)[0]))
        return self._eval_state[1](batch)

    def divergence(self, end_of_epoch: bool = False) -> Divergence | None:
        carry = self._carry
        if not end_of_epoch or carry is None:
            return None
        flags, state, grads = read(carry, self.trainer.state.params)
        divergence = divergence_of(np.asarray(flags))
        self._finish(state, grads, applied=divergence is None or divergence.step > 0)
        self._carry = None
        return divergence


def host_batch(batch: Batch) -> Batch:
    """``batch`` with every array that is not JAX's as NumPy (float64 to float32), for a jitted call.

    A tuple of NumPy arrays that are not float64 (what a loader of NumPy
    batches yields) is passed on as it is after one type and dtype test per
    array: this runs once per step, where ``isinstance(a, jax.Array)`` and
    ``np.asarray`` per array cost about a microsecond, a few percent of a
    small model's step.
    """
    for a in batch:
        if type(a) is not np.ndarray or a.dtype == _FLOAT64:
            return tuple([a if isinstance(a, jax.Array) else host_array(a) for a in batch])
    return batch if type(batch) is tuple else tuple(batch)


_FLOAT64 = np.dtype(np.float64)


def batch_caller(fn: Callable[..., Any], rng: jax.Array) -> Callable[[Any, Batch], Any]:
    """``call(carry, batch)``: ``fn(carry, rng, batch)`` where the batch may hold host arrays.

    A jitted call copies NumPy arguments to the device in its C++ dispatch
    (about 10 us); ``jax.device_put`` first costs about 100 us of Python per
    array. Float64 is narrowed to float32 as everywhere in d2lx. Under a
    user's ``jax.transfer_guard`` the copy is allowed explicitly, as it is
    the one d2lx means to make. Made once per epoch, so that a batch's call
    reads neither the guard's setting nor the train state's key again (a
    small step costs only tens of microseconds).
    """
    if jax.config.jax_transfer_guard_host_to_device in (None, "allow") \
            and jax.config.jax_transfer_guard in (None, "allow"):
        def call(carry: Any, batch: Batch) -> Any:
            return fn(carry, rng, host_batch(batch))
    else:
        def call(carry: Any, batch: Batch) -> Any:
            with order_transfer():
                return fn(carry, rng, host_batch(batch))
    return call


def join(arrays: tuple[Any, ...], like: Any) -> Any:
    """Optimizer-state arrays back into the structure of ``like`` (an optimizer state)."""
    return join_opt_state(arrays, split_opt_state(like)[1])
