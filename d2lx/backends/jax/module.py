"""``d2l.Module`` for JAX: a ``flax.linen.Module`` with d2l's methods.

Flax modules are frozen dataclasses: their parameters do not live on
``self`` but in a variables dict that ``init`` creates and ``apply``
consumes. d2l's JAX edition keeps them in the trainer's flax train state
(``trainer.state.params``), and so does d2lx. What the model itself keeps is
only a *parked* copy for when no trainer owns it (before the first fit, or
after ``set_w_b`` on a fresh model), so that ``get_w_b()`` / ``set_w_b()``
work like on every other backend.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import linen as nn
from flax.training import train_state

from d2lx.errors import NotFittedError
from d2lx.module import ModuleBase

Params = Any  # a pytree of jax.Array (flax's FrozenDict or dict)

# Host-side bookkeeping a frozen flax module must still accept after
# construction: the d2l trainer link, d2l's train/eval switch, the parked
# params and last gradients.
_HOST_ATTRS = frozenset({"trainer", "training", "_parked_params", "_parked_grads"})


class TrainState(train_state.TrainState):
    """flax's ``TrainState`` plus the two fields d2l's JAX ``Trainer`` carries.

    ``batch_stats`` holds mutable collections (empty for chapter 3's models)
    and ``dropout_rng`` a PRNG key, so d2l-style ``fit_epoch`` code that reads
    ``state.batch_stats`` or splits ``state.dropout_rng`` runs unchanged.
    """

    batch_stats: Any
    dropout_rng: jax.Array


class OptDef(NamedTuple):
    """The optimizer state's structure and its non-array leaves (d2l's SGD returns the class
    ``optax.EmptyState``): static parts of a compiled step, kept out of its arguments."""

    treedef: Any
    statics: tuple[tuple[int, Hashable], ...]


def split_opt_state(opt_state: Any) -> tuple[tuple[Any, ...], OptDef]:
    leaves, treedef = jax.tree_util.tree_flatten(opt_state)
    arrays, statics = [], []
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, (jax.Array, np.ndarray)):
            arrays.append(leaf)
        else:
            try:
                hash(leaf)
                statics.append((i, leaf))
            except TypeError:
                statics.append((i, ByIdentity(leaf)))
    return tuple(arrays), OptDef(treedef, tuple(statics))


def join_opt_state(arrays: tuple[Any, ...], opt_def: OptDef) -> Any:
    leaves = list(arrays)
    for i, leaf in opt_def.statics:
        leaves.insert(i, leaf.obj if isinstance(leaf, ByIdentity) else leaf)
    return jax.tree_util.tree_unflatten(opt_def.treedef, leaves)


class ArrayState(NamedTuple):
    """The arrays of a :class:`TrainState` that change from step to step (what a call carries)."""

    step: jax.Array
    params: Params
    opt_state: tuple[Any, ...]
    batch_stats: Any


def strip_state(state: TrainState) -> tuple[ArrayState, OptDef]:
    arrays, opt_def = split_opt_state(state.opt_state)
    return ArrayState(state.step, state.params, arrays, state.batch_stats), opt_def


def bind_state(spec: Any, arrays: ArrayState, rng: jax.Array) -> TrainState:
    """A :class:`TrainState` again, inside a trace (``apply_fn``, ``tx``, optimizer structure: ``spec``)."""
    return TrainState(step=arrays.step, apply_fn=spec.model.apply, params=arrays.params, tx=spec.tx,
                      opt_state=join_opt_state(arrays.opt_state, spec.opt_def),
                      batch_stats=arrays.batch_stats, dropout_rng=rng)



class Module(ModuleBase, nn.Module):
    """Base class of models: ``flax.linen.Module`` + d2l's JAX methods.

    The d2l-for-JAX signatures are kept: ``loss(params, X, y, state)``,
    ``training_step(params, batch, state) -> (loss, grads)`` and
    ``validation_step(params, batch, state) -> loss``, where ``X`` is the
    tuple of inputs and ``state`` the train state (``state.apply_fn`` is
    ``self.apply``). The trainer calls these inside ``jax.jit``.

    ``self.plot(...)`` inside the compiled step hands its traced loss to the
    trainer, which returns it from the compiled function (no host sync).
    Host-side helpers (parameter bookkeeping, ``get_w_b``, ``predict``...)
    are marked ``nn.nowrap``: flax otherwise wraps every method for scope
    handling, which these never need and which costs more per call than a
    compiled training step.
    """

    @nn.nowrap
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _HOST_ATTRS:  # not dataclass fields: never part of a clone or a trace
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    def __call__(self, X: Any, *args: Any, **kwargs: Any) -> Any:
        return self.forward(X, *args, **kwargs)

    # -- d2l's JAX surface -----------------------------------------------------
    def loss(self, params: Params, X: Sequence[Any], y: Any, state: Any) -> Any:  # type: ignore[override]
        raise NotImplementedError(f"{type(self).__name__} must define loss(params, X, y, state)")

    def training_step(self, params: Params, batch: Sequence[Any], state: Any) -> tuple[Any, Params]:  # type: ignore[override]
        l, grads = jax.value_and_grad(self.loss)(params, tuple(batch[:-1]), batch[-1], state)
        self.plot("loss", l, train=True)
        return l, grads

    def validation_step(self, params: Params, batch: Sequence[Any], state: Any) -> Any:  # type: ignore[override]
        l = self.loss(params, tuple(batch[:-1]), batch[-1], state)
        self.plot("loss", l, train=False)
        return l

    @nn.nowrap
    def plot(self, key: str, value: Any, train: bool) -> None:
        """d2l's ``plot``; a traced value outside d2lx's compiled step is dropped.

        Inside d2lx's step the trainer collects the traced loss and the
        compiled function returns it. A traced value anywhere else (a
        reader's own ``jax.jit``) is not a number yet and cannot be recorded.
        """
        trainer = self.__dict__.get("trainer")
        if isinstance(value, jax.core.Tracer) and getattr(trainer, "_observing", None) is None:
            return
        super().plot(key, value, train)

    @nn.nowrap
    def apply_init(self, dummy_input: Sequence[Any], key: jax.Array) -> Any:
        """d2l's name for ``self.init(key, *dummy_input)``: the full variables dict."""
        return self.init(key, *dummy_input)

    # -- parameters: the trainer's state while a trainer owns the model -------------
    @nn.nowrap
    def _owner_state(self) -> Any:
        trainer = self.__dict__.get("trainer")
        if trainer is None or getattr(trainer, "model", None) is not self:
            return None
        return getattr(trainer, "state", None)

    @nn.nowrap
    def current_params(self) -> Params | None:
        """The live parameters: the owning trainer's ``state.params``, else the parked copy."""
        state = self._owner_state()
        if state is not None:
            return state.params
        return self.__dict__.get("_parked_params")

    @nn.nowrap
    def current_grads(self) -> Params | None:
        """The gradients of the last applied step (the owning trainer's, else parked), or ``None``."""
        if self._owner_state() is not None:
            return getattr(self.__dict__["trainer"], "last_grads", None)
        return self.__dict__.get("_parked_grads")

    @nn.nowrap
    def _params_for_predict(self) -> Params:
        params = self.current_params()
        if params is None:
            raise NotFittedError(f"{type(self).__name__} has no parameters yet: call "
                                 "trainer.fit(model, data) first, or set_w_b(w, b)")
        return params

    @nn.nowrap
    def predict(self, X: np.ndarray) -> np.ndarray:
        """The model's output for the NumPy batch ``X``, as NumPy float32 (host in, host out).

        Works with or without a trainer (on a fresh model after ``set_w_b``).
        ``X`` is placed where the parameters are (device, or replicated over
        a data-parallel mesh); full float32 matmuls, like the trainer's steps.
        """
        params = self._params_for_predict()
        placement = getattr(jax.tree_util.tree_leaves(params)[0], "sharding", None)
        X = jax.device_put(np.asarray(X, dtype=np.float32), placement)
        with jax.default_matmul_precision("highest"):
            y_hat = self.apply({"params": params}, X)
        return np.asarray(jax.device_get(y_hat), dtype=np.float32)

    @nn.nowrap
    def replace_params(self, params: Params) -> None:
        """Make ``params`` the parameters the next training step starts from."""
        trainer = self.__dict__.get("trainer")
        if trainer is not None and self._owner_state() is not None:
            trainer.state = trainer.state.replace(params=params)
        self._parked_params = params

    @nn.nowrap
    def park_params(self) -> None:
        """Copy the live parameters (and last gradients) out of the trainer before another takes over."""
        self._parked_params = self.current_params()
        self._parked_grads = self.current_grads()

    @nn.nowrap
    def initial_params(self, dummy_input: Sequence[Any], key: jax.Array) -> Params:
        """Parameters to start from: the parked ones, else flax ``init`` on a dummy batch.

        ``init`` runs under ``jax.jit`` (as flax recommends), compiled once per
        distinct module (see :func:`module_key`): eager ``init`` dispatches
        every op of ``setup`` one by one, which costs more than a whole
        compiled epoch of the seed workload.
        """
        params = self.current_params()
        if params is None:
            init = bounded_cache(_INIT_CACHE, module_key(self), lambda: _jitted_init(self))
            params = init(key, tuple(dummy_input))
        return params


def module_key(module: nn.Module) -> Hashable:
    """What identifies ``module``'s computation: the module itself (flax modules are
    dataclasses, equal and hashable by their fields), or its identity if a field is unhashable."""
    try:
        hash(module)
    except TypeError:
        return ByIdentity(module)
    return module


def detached(module: nn.Module) -> nn.Module:
    """A clone of ``module`` without host attributes (no trainer link, no parked arrays).

    Caches keep this clone, never the user's object, so a cached compiled
    function does not keep a trainer, its data or its parameters alive.
    """
    return module.clone(parent=None)


def _jitted_init(module: Module) -> tuple[Hashable, Callable[..., Params]]:
    clone = detached(module)
    key = module_key(module)
    stored = clone if key is module else key

    def init(rng: jax.Array, dummy: tuple[Any, ...]) -> Params:
        return clone.apply_init(dummy, rng)["params"]

    return stored, jax.jit(init)


class ByIdentity:
    """A hashable stand-in that compares equal only to a stand-in for the same object."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByIdentity) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


CACHE_SIZE = 64  #: compiled programs kept per kind (init, training steps); least recently used go first
_INIT_CACHE: OrderedDict[Hashable, Callable[..., Params]] = OrderedDict()


def bounded_cache(cache: OrderedDict[Any, Any], key: Hashable,
                  build: Callable[[], tuple[Hashable, Any]]) -> Any:
    """``cache[key]``, else ``build()`` -> ``(stored_key, value)`` stored under ``stored_key``.

    ``stored_key`` must equal ``key``; it is what the cache keeps (a detached
    clone instead of the caller's module). Least recently used entries are
    dropped beyond :data:`CACHE_SIZE`, so sweeps over many settings stay bounded.
    """
    value = cache.get(key)
    if value is not None:
        cache.move_to_end(key)
        return value
    stored, value = build()
    cache[stored] = value
    while len(cache) > CACHE_SIZE:
        cache.popitem(last=False)
    return value
