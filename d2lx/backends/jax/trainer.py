"""``d2l.Trainer`` for JAX: a flax train state stepped by compiled pure functions.

How an epoch runs (the default :meth:`Trainer.fit_epoch`):

1. The epoch's order is drawn with ``loader.epoch_order()`` (the same shuffle
   stream the core loader and every other backend consume) and one compiled
   call gathers the device-resident data into a stack of full batches plus
   the shorter tail batch, if any.
2. A compiled function runs ``steps_per_execution`` optimizer steps per call
   (``jax.lax.scan`` when more than one) on that stack, reading its batches
   with ``dynamic_slice`` at a position carried on the device. Shapes are the
   same every epoch, so each function is traced once per ``fit``: one for
   the full chunks, one for a shorter last chunk, one for the tail batch.
3. Per-step losses come back as device arrays; the host reads them, and the
   divergence flag, once per epoch.

Divergence inside a compiled step cannot raise. The step computes
``ok = isfinite(loss)``, applies the update only while no step has failed,
and latches the first bad step's index in the carry. The host checks that
flag once per epoch and raises :class:`d2lx.DivergenceError` with the step
index; the parameters are those before the first bad step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from d2lx.backends.jax.module import Module, TrainState, to_device
from d2lx.backends.jax.ops import JaxOps
from d2lx.data import ArrayLoader, DataModule
from d2lx.devices import DeviceSpec, gpu_unavailable
from d2lx.errors import ArgumentTypeError, CheckpointError, InvalidArgumentError
from d2lx.history import History
from d2lx.seeding import resolve_seed
from d2lx.trainer import TrainerBase

MATMUL_PRECISIONS = ("highest", "high", "default", "float32", "tensorfloat32", "bfloat16")


class Carry(NamedTuple):
    """What a compiled training call threads from step to step (all on the device)."""

    state: TrainState
    diverged: jax.Array  # bool: a step in this epoch had a non-finite loss
    bad_step: jax.Array  # int32: global index of the first such step (-1: none)
    step: jax.Array  # int32: global index of the next step
    pos: jax.Array  # int32: next batch in this epoch's stack of full batches


def gpu_devices() -> list[jax.Device]:
    """The GPUs JAX can use; empty when jaxlib has no GPU backend."""
    try:
        return list(jax.devices("gpu"))
    except RuntimeError:  # "Unknown backend gpu" / no CUDA plugin installed
        return []


def _batch_split(tensors: Sequence[jax.Array], order: jax.Array | None, batch_size: int
                 ) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """Reorder ``tensors`` and cut them into ``(full batches stacked, tail batch)``."""
    n = tensors[0].shape[0]
    full = n // batch_size
    stacks, tails = [], []
    for t in tensors:
        if order is not None:
            t = jnp.take(t, order, axis=0)
        stacks.append(t[: full * batch_size].reshape((full, batch_size, *t.shape[1:])))
        tails.append(t[full * batch_size :])
    return tuple(stacks), tuple(tails)


# Model-independent, so one jitted function for the whole process: a later fit
# on data of the same shapes reuses its compiled code.
_split = jax.jit(_batch_split, static_argnums=2)


class Trainer(TrainerBase):
    """Trains a d2lx JAX ``Module`` (see :class:`d2lx.trainer.TrainerBase`).

    d2l-for-JAX surface: ``trainer.state`` is a flax :class:`TrainState`
    (``trainer.state.params['w']`` for the scratch model) and
    ``fit(model, data, key=None)`` takes an optional PRNG key (used for
    ``init`` of models without d2lx's seeded initializers, and as
    ``state.dropout_rng``).

    ``trainer.optim`` is the optax transformation of the train state:
    assigning it (as ``fit`` does with ``model.configure_optimizers()``)
    creates ``trainer.state`` from the model's parameters.

    JAX-only option ``matmul_precision`` (default ``"highest"``): the
    precision of float32 matmuls in the compiled steps. ``"highest"`` is full
    float32 on every device, so CPU and GPU runs agree with the other
    backends; ``"default"`` lets XLA use TF32 on Ampere+ GPUs (faster, about
    3 significant digits per product) and is *not* comparable to them.
    """

    backend_name = "jax"

    def __init__(self, max_epochs: int, num_gpus: int = 0, gradient_clip_val: float = 0, *,
                 matmul_precision: str = "highest", **kwargs: Any) -> None:
        if matmul_precision not in MATMUL_PRECISIONS:
            raise InvalidArgumentError(
                f"matmul_precision must be one of {', '.join(MATMUL_PRECISIONS)}, got "
                f"{matmul_precision!r}; use 'highest' for full float32"
            )
        self.matmul_precision = matmul_precision
        self.state: TrainState | None = None
        self._key: jax.Array | None = None
        self._compiled: dict[str, Callable[..., Any]] = {}
        self._val_split: Any = None
        super().__init__(max_epochs, num_gpus, gradient_clip_val, **kwargs)
        self.hparams["matmul_precision"] = matmul_precision

    # -- adapter hooks -------------------------------------------------------------
    def _native_device(self, spec: DeviceSpec) -> jax.Device:
        if spec.kind == "cpu":
            return jax.devices("cpu")[0]
        gpus = gpu_devices()
        if spec.index >= len(gpus):
            raise gpu_unavailable(
                "jax", spec, len(gpus),
                'install a CUDA build of jaxlib (pip install -U "jax[cuda12]") on a machine '
                "with an NVIDIA GPU",
            )
        return gpus[spec.index]

    def _array_ops(self) -> JaxOps:
        return JaxOps(self.device)

    def _losses_to_host(self, values: list[Any]) -> np.ndarray:
        host = jax.device_get(values)  # one call for the whole epoch
        return np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in host])

    def _is_finite(self, loss: Any) -> bool:
        return bool(jnp.isfinite(loss).all())

    def _optimizer_state(self) -> dict[str, np.ndarray]:
        """The optax state's array leaves, keyed by their pytree path (none for SGD)."""
        if self.state is None:
            return {}
        leaves = jax.tree_util.tree_flatten_with_path(self.state.opt_state)[0]
        return {jax.tree_util.keystr(path): np.asarray(jax.device_get(leaf)) for path, leaf in leaves}

    def _load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        if self.state is None:
            raise CheckpointError("no train state to load optimizer state into; call it after "
                                  "configure_optimizers (trainer.optim = ...)")
        flat, treedef = jax.tree_util.tree_flatten_with_path(self.state.opt_state)
        keys = [jax.tree_util.keystr(path) for path, _ in flat]
        if sorted(keys) != sorted(state):
            raise CheckpointError(
                f"optimizer state does not fit this optimizer: checkpoint has {sorted(state)}, "
                f"the optimizer expects {sorted(keys)}; resume with the same optimizer"
            )
        leaves = [jax.device_put(np.asarray(state[k], dtype=leaf.dtype).reshape(leaf.shape), self.device)
                  for k, (_, leaf) in zip(keys, flat)]
        self.state = self.state.replace(opt_state=jax.tree_util.tree_unflatten(treedef, leaves))

    # -- the train state -------------------------------------------------------------
    @property
    def optim(self) -> Any:
        """The optax transformation in ``self.state`` (``None`` before ``fit``)."""
        return None if self.state is None else self.state.tx

    @optim.setter
    def optim(self, tx: Any) -> None:
        if tx is None:
            self.state = None
            return
        model = self.model
        params = model.current_params()
        assert params is not None, "_place_model runs before the optimizer is installed"
        key = self._key if self._key is not None else _default_key(model)
        self.state = jax.device_put(TrainState.create(
            apply_fn=model.apply, params=params, tx=tx, batch_stats={},
            dropout_rng=jax.random.split(key)[1],
        ), self.device)
        self._compiled = {}  # a new run: trace again (new tx, new apply_fn)
        self._val_split = None

    def prepare_model(self, model: Any) -> None:
        if not isinstance(model, Module):
            raise ArgumentTypeError(
                f"the JAX Trainer trains d2lx JAX modules (subclasses of d2l.Module), got "
                f"{type(model).__name__}"
            )
        previous = self.model
        if isinstance(previous, Module) and previous is not model:
            previous.park_params()  # the model this trainer trained before keeps its result
        model.park_params()  # take the params out of the trainer that owned the model
        self.state = None
        super().prepare_model(model)

    def _place_model(self, model: Any, num_inputs: int) -> None:
        key = self._key if self._key is not None else _default_key(model)
        self._key = key
        params_key, _ = jax.random.split(key)
        dummy = tuple(jax.lax.slice_in_dim(t, 0, 1) for t in self.train_dataloader.tensors[:-1])
        params = model.initial_params(dummy, params_key)
        model._parked_params = to_device(params, self.device)

    def fit(self, model: Any, data: DataModule, key: jax.Array | None = None) -> History:
        """Train ``model`` on ``data``; ``key`` is d2l's optional ``jax.random`` key."""
        self._key = _check_key(key)
        return super().fit(model, data)

    # -- gradient clipping -----------------------------------------------------------
    def clip_gradients(self, grad_clip_val: float, grads: Any) -> Any:
        """Rescale ``grads`` so their joint L2 norm is at most ``grad_clip_val`` (d2l 9.5).

        Pure (a ``jnp.minimum`` scale, no Python ``if`` on a traced value), so
        it runs inside the compiled step without a host sync.
        """
        leaves = jax.tree_util.tree_leaves(grads)
        norm = jnp.sqrt(sum(jnp.vdot(g, g) for g in leaves))
        scale = jnp.minimum(1.0, grad_clip_val / norm)
        return jax.tree_util.tree_map(lambda g: g * scale.astype(g.dtype), grads)

    # -- the compiled functions --------------------------------------------------------
    def _train_step(self, carry: Carry, batch: tuple[jax.Array, ...]) -> tuple[Carry, jax.Array]:
        """One optimizer step as a pure function of the carry and one batch."""
        state = carry.state
        with jax.default_matmul_precision(self.matmul_precision):
            out = self.model.training_step(state.params, self.prepare_batch(batch), state)
        if not (isinstance(out, tuple) and len(out) == 2) or isinstance(out[0], tuple):
            raise TypeError("training_step(params, batch, state) must return (loss, grads); "
                            "models with mutable collections (batch norm) need their own fit_epoch")
        loss, grads = out
        if self.gradient_clip_val > 0:
            grads = self.clip_gradients(self.gradient_clip_val, grads)
        new_state = state.apply_gradients(grads=grads)
        ok = jnp.isfinite(loss) if self.check_finite else jnp.bool_(True)
        apply = ok & ~carry.diverged
        state = jax.tree_util.tree_map(lambda new, old: jnp.where(apply, new, old), new_state, state)
        first_bad = ~ok & ~carry.diverged
        return Carry(
            state=state,
            diverged=carry.diverged | ~ok,
            bad_step=jnp.where(first_bad, carry.step, carry.bad_step),
            step=carry.step + 1,
            pos=carry.pos,
        ), loss

    def _run_chunk(self, carry: Carry, stacks: tuple[jax.Array, ...], k: int) -> tuple[Carry, jax.Array]:
        """``k`` steps on the batches ``stacks[:, pos:pos + k]`` (``lax.scan`` if ``k > 1``)."""
        chunk = tuple(jax.lax.dynamic_slice_in_dim(s, carry.pos, k, axis=0) for s in stacks)
        if k == 1:
            carry, loss = self._train_step(carry, tuple(c[0] for c in chunk))
            losses = loss.reshape(1)
        else:
            carry, losses = jax.lax.scan(self._train_step, carry, chunk)
        return carry._replace(pos=carry.pos + k), losses

    def _tail_step(self, carry: Carry, batch: tuple[jax.Array, ...]) -> tuple[Carry, jax.Array]:
        carry, loss = self._train_step(carry, batch)
        return carry, loss.reshape(1)

    def _evaluate(self, state: TrainState, stacks: tuple[jax.Array, ...],
                  tail: tuple[jax.Array, ...]) -> jax.Array:
        """Example-weighted mean validation loss over all batches, in one call."""

        def batch_loss(batch: tuple[jax.Array, ...]) -> jax.Array:
            with jax.default_matmul_precision(self.matmul_precision):
                return self.model.validation_step(state.params, self.prepare_batch(batch), state)

        total, count = jnp.float32(0.0), 0
        full, bs = stacks[0].shape[0], stacks[0].shape[1]
        if full:
            total = total + jax.lax.map(batch_loss, stacks).sum() * bs
            count += full * bs
        if tail[0].shape[0]:
            total = total + batch_loss(tail) * tail[0].shape[0]
            count += tail[0].shape[0]
        return total / count

    def _fn(self, name: str) -> Callable[..., Any]:
        """The jitted function ``name``, built once per ``fit`` (so traced once per shape)."""
        fn = self._compiled.get(name)
        if fn is None:
            fn = {
                "chunk": jax.jit(self._run_chunk, static_argnums=2),
                "tail": jax.jit(self._tail_step),
                "evaluate": jax.jit(self._evaluate),
            }[name]
            self._compiled[name] = fn
        return fn

    def _device_scalar(self, value: Any, dtype: Any) -> jax.Array:
        return jax.device_put(np.asarray(value, dtype=dtype), self.device)

    # -- d2l's fit_epoch ----------------------------------------------------------------
    def fit_epoch(self) -> None:
        """One epoch: compiled training chunks, one divergence check, compiled validation."""
        assert self.state is not None, "fit() creates the train state before the first epoch"
        self.model.training = True
        loader: ArrayLoader = self.train_dataloader
        order = loader.epoch_order()  # consumes the shuffle stream exactly like iteration
        order_dev = None if order is None else self._array_ops().indices(order)
        stacks, tail = _split(loader.tensors, order_dev, loader.batch_size)
        carry = Carry(
            state=self.state,
            diverged=self._device_scalar(False, np.bool_),
            bad_step=self._device_scalar(-1, np.int32),
            step=self._device_scalar(self.train_batch_idx, np.int32),
            pos=self._device_scalar(0, np.int32),
        )
        full, done = stacks[0].shape[0], 0
        while done < full:
            k = min(self.steps_per_execution, full - done)
            carry, losses = self._fn("chunk")(carry, stacks, k)
            self._train_meter.add(losses, k)
            done += k
        if tail[0].shape[0]:
            carry, losses = self._fn("tail")(carry, tail)
            self._train_meter.add(losses, 1)
        self.state = carry.state
        diverged, bad_step = jax.device_get((carry.diverged, carry.bad_step))  # the epoch's one check
        if diverged:
            self.train_batch_idx = int(bad_step)
            self.raise_divergence(self.epoch, int(bad_step))
        self.train_batch_idx += len(loader)

        if self.val_dataloader is None:
            return
        self.model.training = False
        val = self.val_dataloader
        if self._val_split is None:  # validation data is not shuffled: cut it once per fit
            self._val_split = _split(val.tensors, None, val.batch_size)
        loss = self._fn("evaluate")(self.state, *self._val_split)
        self._val_meter.add(loss, val.num_examples)
        self.val_batch_idx += len(val)


def _default_key(model: Any) -> jax.Array:
    """A PRNG key from the model's seed (else d2lx's global seed), for reproducible runs."""
    seed = getattr(model, "seed", None)
    seed = resolve_seed(seed if isinstance(seed, int) else None)
    # device_put: an explicit transfer (jax.random.key(int) would be an implicit one)
    return jax.random.key(jax.device_put(np.uint32(0 if seed is None else seed % (2**32))))


def _check_key(key: Any) -> jax.Array | None:
    if key is None:
        return None
    if isinstance(key, jax.Array) and (
        jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        or (key.dtype == jnp.uint32 and key.shape == (2,))
    ):
        return key
    raise ArgumentTypeError(
        f"key must be a JAX PRNG key (jax.random.key(0) or jax.random.PRNGKey(0)), got {key!r}"
    )

