"""The carry: what the JAX step's compiled calls hand each other within an epoch.

An epoch is one compiled call or many (chunks of steps, or one call per
batch of another loader); between calls, the train state, the last applied
gradients, the guard's latch and the per-step losses stay on the device in
a :class:`Carry`, donated from call to call so XLA updates it in place.
:func:`begin_carry` makes an epoch's first one from the trainer's state and
:func:`carried` gives the state and gradients back at its end.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from d2lx.backends.jax.module import ArrayState, Params


class Carry(NamedTuple):
    """What a compiled training call threads from step to step, all on the device.

    As few arrays as the step allows: each array a compiled call takes and
    returns costs about a microsecond of dispatch, where a small model's
    whole step on a CPU takes some 30 us. So the train state's step counter
    rides in ``status`` and the gradients travel as one vector (raveling
    fuses into the select that keeps or replaces them, so it adds no pass
    over memory); :func:`carried` gives both back in their own form.
    """

    state: ArrayState  # its ``step`` is None: the count is status[4]
    #: the gradients of the last applied step (what get_grads() returns), raveled into one vector
    grads: jax.Array
    #: int32[5]: [a step of this epoch was refused (0/1), index of the first refused step (-1: none),
    #: 1 + index in d2lx.step.CAUSES of why (0: none), steps done in this epoch, the train state's step]
    status: jax.Array
    #: float32[steps]: each step's loss at its index; ``None`` for single batches (the loss is returned),
    #: so their calls pass and return no array for it (every array is dispatch time on a small step)
    losses: jax.Array | None

    @property
    def diverged(self) -> jax.Array:
        return self.status[0] > 0

    @property
    def pos(self) -> jax.Array:
        """Steps done in this epoch (= the position of the next batch)."""
        return self.status[3]

    @property
    def train_state(self) -> ArrayState:
        """The train state's arrays, the step counter back in place."""
        return self.state._replace(step=self.status[4])


def new_carry(state: ArrayState, grads: Params, steps: int) -> Carry:
    """An epoch's first carry (inside a trace): the status "not diverged, no bad step, no cause,
    position 0" with the state's step, the gradients raveled, and room for ``steps`` losses."""
    status = jnp.stack([jnp.int32(0), jnp.int32(-1), jnp.int32(0), jnp.int32(0),
                        jnp.asarray(state.step, jnp.int32)])
    return Carry(state._replace(step=None), ravel_pytree(grads)[0], status,
                 jnp.zeros((steps,), jnp.float32) if steps else None)


def carried(carry: Carry, params: Params) -> tuple[ArrayState, Params]:
    """The carry's train state and its gradients as a tree shaped like ``params`` (their structure)."""
    return carry.train_state, ravel_pytree(params)[1](carry.grads)


def read_carry(carry: Carry, params: Params) -> tuple[jax.Array, ArrayState, Params]:
    """After an epoch of single batches: the latch, the train state and the gradients."""
    return (carry.status[:3], *carried(carry, params))


def begin_carry(state: ArrayState, grads: Params, steps: int, order: Any = None) -> tuple[Carry, Any]:
    """An epoch's first carry, and its shuffle order on the device (``None`` stays ``None``).

    The carry holds *copies* of the state and gradients, fresh flags and
    room for the losses: the chunk calls donate their carry (XLA updates it
    in place, as the hand-written loop donates its parameters), and copying
    once per epoch keeps ``trainer.state`` valid should the epoch be
    interrupted. The order comes back as a device array because a jitted
    call copies a NumPy argument in its C++ dispatch, where ``device_put``
    costs about 100 us of Python.
    """
    copy = functools.partial(jnp.array, copy=True)
    return new_carry(jax.tree_util.tree_map(copy, state), grads, steps), order


begin = jax.jit(begin_carry, static_argnums=2)
read = jax.jit(read_carry)
zeros_like = jax.jit(lambda tree: jax.tree_util.tree_map(jnp.zeros_like, tree))
