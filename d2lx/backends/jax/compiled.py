"""What the JAX step is compiled from: pure functions of a carried train state, and their cache.

How an epoch over d2lx's own loader runs: the epoch's order is drawn from
the shared shuffle stream; :func:`run_chunk` runs ``steps_per_execution``
steps per call (``lax.scan``), each gathering its own batch's rows of the
device-resident data at a position carried on the device, and
:func:`tail_step` the shorter last batch; :func:`finish` runs validation
and packs the epoch's record (per-step losses, the guard's latch,
per-batch validation losses) into one vector, or :func:`run_epoch` does
the whole epoch in one call when ``steps_per_execution`` covers it. Any
other loader's batches go through :func:`train_step`, compiled for one batch.

The guard cannot raise inside a compiled step: a step applies its update
only if its loss and the parameters it produces are finite (and, for
batches d2lx did not check, the batch too) and no earlier step of the epoch
failed; the first failure's index and cause are latched in the carry.

The functions are pure functions of a hashable :class:`StepSpec` (the flax
module compares by its fields), compiled once per spec (:func:`programs`):
a later ``fit`` of an equal model with the same options reuses the code
compiled by the first. :mod:`d2lx.backends.jax.step` runs them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from d2lx.backends.jax.carry import Carry, carried, new_carry
from d2lx.backends.jax.distributed import shard_batch
from d2lx.backends.jax.module import (
    ArrayState,
    Module,
    OptDef,
    Params,
    bind_state,
    bounded_cache,
    detached,
    strip_state,
)
from d2lx.errors import ArgumentTypeError
from d2lx.loader import Batch
from d2lx.step import step_loss


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Everything the compiled functions close over; equal specs share compiled code."""

    model: Module = dataclasses.field(compare=False)
    model_key: Any
    tx: Any = dataclasses.field(compare=False)
    tx_key: Any
    opt_def: OptDef
    hooks: Any = dataclasses.field(compare=False)  # the trainer, if it overrides prepare_batch/clipping
    hooks_key: Any
    matmul_precision: str
    gradient_clip_val: float
    check_finite: bool
    check_data: bool  # also refuse batches with NaN/inf (loaders d2lx did not check)
    mesh: Any


class _Collector:
    """Stands in for the trainer while a step is traced: keeps what ``self.plot`` reports."""

    def __init__(self) -> None:
        self._observing: list[tuple[str, Any, bool]] = []

    def observe(self, model: Any, key: str, value: Any, train: bool) -> None:
        self._observing.append((key, value, train))


def _call(spec: StepSpec, name: str, *args: Any) -> tuple[Any, list[tuple[str, Any, bool]]]:
    """``spec.model.<name>(*args)`` with its ``plot`` calls collected (the model is a detached clone)."""
    model, collector = spec.model, _Collector()
    object.__setattr__(model, "trainer", collector)
    try:
        with jax.default_matmul_precision(spec.matmul_precision):
            return getattr(model, name)(*args), collector._observing
    finally:
        object.__setattr__(model, "trainer", None)


def _prepared(spec: StepSpec, batch: Batch) -> Batch:
    batch = shard_batch(spec.mesh, tuple(batch))
    return spec.hooks.prepare_batch(batch) if spec.hooks is not None else batch


def clip_by_global_norm(grad_clip_val: float, grads: Params) -> Params:
    """d2l 9.5's clipping: optax's own ``clip_by_global_norm`` (pure, so no host sync in the step)."""
    return optax.clip_by_global_norm(grad_clip_val).update(grads, optax.EmptyState())[0]


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.isfinite(x).all() for x in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def train_step(spec: StepSpec, carry: Carry, rng: jax.Array, batch: Batch) -> tuple[Carry, jax.Array]:
    """One guarded optimizer step as a pure function of the carry and one batch."""
    state = bind_state(spec, carry.train_state, rng)
    batch = _prepared(spec, batch)
    out, _ = _call(spec, "training_step", state.params, batch, state)
    if not (isinstance(out, tuple) and len(out) == 2) or isinstance(out[0], tuple):
        raise ArgumentTypeError("training_step(params, batch, state) must return (loss, grads); models "
                                "with mutable collections (batch norm) need their own fit_epoch")
    loss, grads = out
    loss = jnp.asarray(loss, jnp.float32).reshape(())
    if spec.gradient_clip_val > 0:
        clip = spec.hooks.clip_gradients if spec.hooks is not None else clip_by_global_norm
        grads = clip(spec.gradient_clip_val, grads)
    new_state, _ = strip_state(state.apply_gradients(grads=grads))
    loss_ok, params_ok = jnp.isfinite(loss), _all_finite(new_state.params)
    data_ok = _all_finite(batch) if spec.check_data else jnp.bool_(True)
    ok = (loss_ok & params_ok & data_ok) if spec.check_finite else jnp.bool_(True)
    apply = ok & ~carry.diverged
    new_step = jnp.asarray(new_state.step, jnp.int32)
    new_state = jax.tree_util.tree_map(lambda new, old: jnp.where(apply, new, old),
                                       new_state._replace(step=None), carry.state)
    flat_grads = jnp.where(apply, ravel_pytree(grads)[0].astype(carry.grads.dtype), carry.grads)
    first_bad = ~ok & ~carry.diverged
    cause = jnp.where(~data_ok, 3, jnp.where(~loss_ok, 1, 2)).astype(jnp.int32)
    status = jnp.stack([(carry.diverged | ~ok).astype(jnp.int32),
                        jnp.where(first_bad, carry.pos, carry.status[1]),
                        jnp.where(first_bad, cause, carry.status[2]), carry.pos + 1,
                        jnp.where(apply, new_step, carry.status[4])])
    new = Carry(state=new_state, grads=flat_grads, status=status,
                losses=None if carry.losses is None else carry.losses.at[carry.pos].set(loss))
    return new, loss


def batch_at(tensors: tuple[jax.Array, ...], order: jax.Array | None, start: Any, size: int) -> Batch:
    """The batch of ``size`` examples at position ``start`` of this epoch's ``order``, gathered now.

    Each step gathers its own rows (a few MB that stay in the cache) instead
    of the epoch gathering the whole shuffled data set first: that would
    write and read back a data set-sized array every epoch, the largest cost
    of a large epoch.
    """
    if order is None:
        return tuple(jax.lax.dynamic_slice_in_dim(t, start, size, axis=0) for t in tensors)
    rows = jax.lax.dynamic_slice_in_dim(order, start, size)
    return tuple(jnp.take(t, rows, axis=0, unique_indices=True, indices_are_sorted=False) for t in tensors)


def run_chunk(spec: StepSpec, carry: Carry, rng: jax.Array, tensors: tuple[jax.Array, ...],
              order: jax.Array | None, k: int, batch_size: int) -> Carry:
    """``k`` full-batch steps from the carry's position (``lax.scan`` if ``k > 1``)."""
    def one(c: Carry) -> Carry:
        return train_step(spec, c, rng, batch_at(tensors, order, c.pos * batch_size, batch_size))[0]

    if k == 1:
        return one(carry)
    carry, _ = jax.lax.scan(lambda c, _: (one(c), None), carry, None, length=k)
    return carry


def tail_step(spec: StepSpec, carry: Carry, rng: jax.Array, tensors: tuple[jax.Array, ...],
              order: jax.Array | None, batch_size: int) -> Carry:
    """The epoch's shorter last batch (its own shape, so its own compiled variant)."""
    n = tensors[0].shape[0]
    start = n - n % batch_size
    return train_step(spec, carry, rng, batch_at(tensors, order, start, n - start))[0]


def eval_batch(spec: StepSpec, state: ArrayState, rng: jax.Array, batch: Batch) -> jax.Array:
    """The validation loss of one batch (d2l's validation_step may only plot it)."""
    bound = bind_state(spec, state, rng)
    out, seen = _call(spec, "validation_step", bound.params, _prepared(spec, batch), bound)
    return jnp.asarray(step_loss(out, seen, "validation_step"), jnp.float32).reshape(())


def evaluate(spec: StepSpec, state: ArrayState, rng: jax.Array, tensors: tuple[jax.Array, ...],
             batch_size: int) -> jax.Array:
    """Every validation batch's loss, in order, in one call.

    Each batch is a ``dynamic_slice`` of the device-resident arrays at a
    loop index: on XLA:CPU that reads the validation set once, where cutting
    it into a stack of batches (a reshape, or static slices) made XLA copy it
    and took five times as long.
    """
    n = tensors[0].shape[0]
    full = n // batch_size
    parts = []
    if full:
        parts.append(jax.lax.map(
            lambda i: eval_batch(spec, state, rng, batch_at(tensors, None, i * batch_size, batch_size)),
            jnp.arange(full)))
    if n % batch_size:
        parts.append(eval_batch(spec, state, rng, tuple(t[full * batch_size:] for t in tensors)).reshape(1))
    return jnp.concatenate(parts) if parts else jnp.zeros((0,), jnp.float32)


def finish(spec: StepSpec, carry: Carry, rng: jax.Array, val: tuple[jax.Array, ...] | None,
           val_batch_size: int) -> jax.Array:
    """The epoch's record, one float32 vector: per-step losses, the latch, validation losses."""
    val_losses = (jnp.zeros((0,), jnp.float32) if val is None
                  else evaluate(spec, carry.state, rng, val, val_batch_size))
    flags = carry.status[:3].astype(jnp.float32)
    losses = jnp.zeros((0,), jnp.float32) if carry.losses is None else carry.losses
    return jnp.concatenate([losses, flags, val_losses])


def run_epoch(spec: StepSpec, state: ArrayState, grads: Params, rng: jax.Array,
              tensors: tuple[jax.Array, ...], order: jax.Array | None, batch_size: int,
              val: tuple[jax.Array, ...] | None, val_batch_size: int) -> tuple[ArrayState, Params, jax.Array]:
    """A whole epoch in one call: every step (each gathering its batch), the tail, validation, the record."""
    n = tensors[0].shape[0]
    full, tail = divmod(n, batch_size)
    carry = new_carry(state, grads, full + (1 if tail else 0))
    if full:
        carry = run_chunk(spec, carry, rng, tensors, order, full, batch_size)
    if tail:
        carry = tail_step(spec, carry, rng, tensors, order, batch_size)
    return finish_chunks(spec, carry, rng, val, val_batch_size, state.params)


def finish_chunks(spec: StepSpec, carry: Carry, rng: jax.Array, val: tuple[jax.Array, ...] | None,
                  val_batch_size: int, params: Params) -> tuple[ArrayState, Params, jax.Array]:
    """After an epoch's steps (its chunk calls, or inside :func:`run_epoch`): the train state, the
    gradients shaped like ``params``, and the record (:func:`finish`)."""
    return (*carried(carry, params), finish(spec, carry, rng, val, val_batch_size))


class Programs(NamedTuple):
    """The jitted functions of one :class:`StepSpec`."""

    chunk: Callable[..., Carry]
    tail: Callable[..., Carry]
    finish: Callable[..., tuple[ArrayState, Params, jax.Array]]
    epoch: Callable[..., tuple[ArrayState, Params, jax.Array]]
    batch: Callable[..., tuple[Carry, jax.Array]]
    eval_batch: Callable[..., jax.Array]


_PROGRAMS: OrderedDict[StepSpec, Programs] = OrderedDict()


def programs(spec: StepSpec) -> Programs:
    """The jitted functions for ``spec``, made once per distinct spec in this process.

    The cache keeps a spec whose model is a detached clone, so it keeps no
    trainer, data or parameters alive.
    """
    return bounded_cache(_PROGRAMS, spec, lambda: _build(spec))


def _build(spec: StepSpec) -> tuple[StepSpec, Programs]:
    clone = detached(spec.model)
    stored = dataclasses.replace(spec, model=clone,
                                 model_key=clone if spec.model_key is spec.model else spec.model_key)
    bind = functools.partial
    return stored, Programs(
        chunk=jax.jit(bind(run_chunk, stored), static_argnums=(4, 5), donate_argnums=0),
        tail=jax.jit(bind(tail_step, stored), static_argnums=4, donate_argnums=0),
        finish=jax.jit(bind(finish_chunks, stored), static_argnums=3),
        epoch=jax.jit(bind(run_epoch, stored), static_argnums=(5, 7)),
        batch=jax.jit(bind(train_step, stored), donate_argnums=0),
        eval_batch=jax.jit(bind(eval_batch, stored)))
