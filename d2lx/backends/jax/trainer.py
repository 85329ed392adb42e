"""``d2l.Trainer`` for JAX: a flax train state stepped by compiled pure functions.

How an epoch runs (the default :meth:`Trainer.fit_epoch`):

1. The epoch's order is drawn with ``loader.epoch_order()`` (the same shuffle
   stream the core loader and every other backend consume) and one compiled
   call gathers the device-resident data into a stack of full batches plus
   the shorter tail batch, if any.
2. A compiled function runs ``steps_per_execution`` optimizer steps per call
   (``jax.lax.scan`` when more than one) on that stack, reading its batches
   with ``dynamic_slice`` at a position carried on the device. Shapes are the
   same every epoch, so each function is traced once per shape: one for the
   full chunks, one for a shorter last chunk, one for the tail batch.
3. Per-step losses come back as device arrays; the host reads them, and the
   divergence flag, once per epoch.

The compiled functions are module-level pure functions of a hashable
:class:`StepSpec` (the flax module, which is a dataclass compared by its
fields, the optimizer's origin, the matmul precision, clipping, the mesh),
cached per spec. A later ``fit`` of an equal model with the same trainer
options (a new model object, a new ``Trainer``) therefore reuses the code
compiled by the first one: no tracing, no XLA compilation.

Divergence inside a compiled step cannot raise. The step computes
``ok = isfinite(loss)``, applies the update only while no step has failed,
and latches the first bad step's index in the carry. The host checks that
flag once per epoch and raises :class:`d2lx.DivergenceError` with the step
index; the parameters are those before the first bad step.

Data parallelism (``devices=N``): one process, a ``jax.sharding.Mesh`` over
the N devices with one axis, ``data``. Data, parameters and optimizer state
are replicated over the mesh; inside the same compiled step every batch is
constrained to be sharded along ``data`` (``with_sharding_constraint``), so
XLA's SPMD partitioner gives each device its slice of the batch and inserts
the all-reduce of the gradients itself. The program is the one-device
program (the global batch's mean loss), only partitioned, so the result is
the one-device result up to float32 summation order; a batch that does not
divide by N is padded and masked by XLA, not by d2lx.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from d2lx.backends.jax.module import (
    ByIdentity,
    Module,
    Params,
    TrainState,
    bounded_cache,
    detached,
    module_key,
)
from d2lx.backends.jax.ops import JaxOps
from d2lx.data import ArrayLoader, DataModule
from d2lx.devices import DeviceSpec, gpu_unavailable
from d2lx.errors import (
    ArgumentTypeError,
    CheckpointError,
    DeviceUnavailableError,
    InvalidArgumentError,
)
from d2lx.history import History
from d2lx.seeding import resolve_seed
from d2lx.trainer import TrainerBase

MATMUL_PRECISIONS = ("highest", "high", "default", "float32", "tensorfloat32", "bfloat16")
DATA_AXIS = "data"  #: the mesh axis the batch is sharded along under data parallelism


class ArrayState(NamedTuple):
    """The array fields of a :class:`TrainState`: what changes from step to step.

    A compiled call's carry holds these instead of the ``TrainState``
    itself: ``apply_fn`` and ``tx`` are static fields of its pytree (a fresh
    ``model.apply`` or ``optax.sgd(lr)`` object per fit would be a new
    structure, i.e. a new trace), the dropout key never changes within a
    step, and a flax dataclass is rebuilt in Python on every call's output,
    which costs a sizeable part of the seed workload's step. The compiled
    functions rebuild the ``TrainState`` the model sees inside the trace
    (:func:`_bind_state`), with ``apply_fn``/``tx`` from the :class:`StepSpec`.
    """

    step: jax.Array
    params: Params
    opt_state: Any
    batch_stats: Any


class Carry(NamedTuple):
    """What a compiled training call threads from step to step (all on the device).

    The step writes its loss into ``losses`` rather than returning it, so an
    epoch ends with one array to read back (see :func:`finish`), whatever
    ``steps_per_execution`` is.
    """

    state: ArrayState
    grads: Params  # the gradients of the last applied step (what get_grads() returns)
    diverged: jax.Array  # bool: a step in this epoch had a non-finite loss
    bad_step: jax.Array  # int32: index in this epoch of the first such step (-1: none)
    pos: jax.Array  # int32: steps done in this epoch (= the next batch of the stack)
    losses: jax.Array  # float32[steps in the epoch]: each step's loss, at its index


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Everything the compiled functions close over; equal specs share compiled code.

    ``model_key`` identifies the module (flax modules compare and hash by
    their fields, see :func:`~d2lx.backends.jax.module.module_key`); the
    cache stores a spec whose ``model`` is a detached clone, so it keeps no
    trainer alive. ``tx_key`` says where the
    optimizer came from: ``"configure_optimizers"`` when ``fit`` took it from
    the model (then equal models give equal optimizers, which is how d2l's
    ``configure_optimizers`` is written), else the optimizer object itself.
    ``hooks`` is the trainer whose ``prepare_batch``/``clip_gradients`` run
    inside the step, or ``None`` when they are d2lx's own (then any trainer
    will do); a trainer that overrides them is keyed by identity and ``fit``
    number, so its hooks are traced anew per ``fit``, as user code may expect.
    """

    model: Module = dataclasses.field(compare=False)
    model_key: Any
    tx: Any = dataclasses.field(compare=False)
    tx_key: Any
    hooks: Any = dataclasses.field(compare=False)
    hooks_key: Any
    matmul_precision: str
    gradient_clip_val: float
    check_finite: bool
    mesh: Mesh | None


def strip_state(state: TrainState) -> ArrayState:
    """The arrays of ``state`` that compiled steps carry (see :class:`ArrayState`)."""
    return ArrayState(state.step, state.params, state.opt_state, state.batch_stats)


def restore_state(state: TrainState, arrays: ArrayState) -> TrainState:
    """``state`` with the arrays a compiled call returned."""
    return state.replace(step=arrays.step, params=arrays.params, opt_state=arrays.opt_state,
                         batch_stats=arrays.batch_stats)


def _bind_state(spec: StepSpec, arrays: ArrayState, rng: jax.Array) -> TrainState:
    return TrainState(step=arrays.step, apply_fn=spec.model.apply, params=arrays.params, tx=spec.tx,
                      opt_state=arrays.opt_state, batch_stats=arrays.batch_stats, dropout_rng=rng)


def _shard_batch(spec: StepSpec, batch: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """Under data parallelism, split the batch's examples across the mesh (XLA pads uneven ones)."""
    if spec.mesh is None:
        return batch
    sharding = NamedSharding(spec.mesh, PartitionSpec(DATA_AXIS))
    return tuple(jax.lax.with_sharding_constraint(t, sharding) for t in batch)


def clip_by_global_norm(grad_clip_val: float, grads: Params) -> Params:
    """Rescale ``grads`` so their joint L2 norm is at most ``grad_clip_val`` (d2l 9.5).

    Pure (a ``jnp.minimum`` scale, no Python ``if`` on a traced value), so
    it runs inside the compiled step without a host sync.
    """
    leaves = jax.tree_util.tree_leaves(grads)
    norm = jnp.sqrt(sum(jnp.vdot(g, g) for g in leaves))
    scale = jnp.minimum(1.0, grad_clip_val / norm)
    return jax.tree_util.tree_map(lambda g: g * scale.astype(g.dtype), grads)


def train_step(spec: StepSpec, carry: Carry, rng: jax.Array, batch: tuple[jax.Array, ...]) -> Carry:
    """One optimizer step as a pure function of the carry and one batch (``rng``: the dropout key)."""
    state = _bind_state(spec, carry.state, rng)
    batch = _shard_batch(spec, tuple(batch))
    if spec.hooks is not None:
        batch = spec.hooks.prepare_batch(batch)
    with jax.default_matmul_precision(spec.matmul_precision):
        out = spec.model.training_step(state.params, batch, state)
    if not (isinstance(out, tuple) and len(out) == 2) or isinstance(out[0], tuple):
        raise TypeError("training_step(params, batch, state) must return (loss, grads); "
                        "models with mutable collections (batch norm) need their own fit_epoch")
    loss, grads = out
    if spec.gradient_clip_val > 0:
        clip = spec.hooks.clip_gradients if spec.hooks is not None else clip_by_global_norm
        grads = clip(spec.gradient_clip_val, grads)
    new_state = strip_state(state.apply_gradients(grads=grads))
    ok = jnp.isfinite(loss) if spec.check_finite else jnp.bool_(True)
    apply = ok & ~carry.diverged
    new_state, grads = jax.tree_util.tree_map(
        lambda new, old: jnp.where(apply, new, old), (new_state, grads), (carry.state, carry.grads)
    )
    first_bad = ~ok & ~carry.diverged
    return Carry(
        state=new_state,
        grads=grads,
        diverged=carry.diverged | ~ok,
        bad_step=jnp.where(first_bad, carry.pos, carry.bad_step),
        pos=carry.pos + 1,
        losses=carry.losses.at[carry.pos].set(jnp.asarray(loss, carry.losses.dtype)),
    )


def run_chunk(spec: StepSpec, carry: Carry, rng: jax.Array, stacks: tuple[jax.Array, ...], k: int
              ) -> Carry:
    """``k`` steps on the batches ``stacks[pos:pos + k]`` (``lax.scan`` if ``k > 1``)."""
    chunk = tuple(jax.lax.dynamic_slice_in_dim(s, carry.pos, k, axis=0) for s in stacks)
    if k == 1:
        return train_step(spec, carry, rng, tuple(c[0] for c in chunk))
    carry, _ = jax.lax.scan(lambda c, batch: (train_step(spec, c, rng, batch), None), carry, chunk)
    return carry


def tail_step(spec: StepSpec, carry: Carry, rng: jax.Array, batch: tuple[jax.Array, ...]) -> Carry:
    """The epoch's last, shorter batch (its own shape, so its own compiled variant)."""
    return train_step(spec, carry, rng, batch)


def evaluate(spec: StepSpec, state: ArrayState, rng: jax.Array, stacks: tuple[jax.Array, ...],
             tail: tuple[jax.Array, ...]) -> jax.Array:
    """Example-weighted mean validation loss over all batches, in one call."""
    bound = _bind_state(spec, state, rng)

    def batch_loss(batch: tuple[jax.Array, ...]) -> jax.Array:
        batch = _shard_batch(spec, tuple(batch))
        if spec.hooks is not None:
            batch = spec.hooks.prepare_batch(batch)
        with jax.default_matmul_precision(spec.matmul_precision):
            return spec.model.validation_step(bound.params, batch, bound)

    total, count = jnp.float32(0.0), 0
    full, bs = stacks[0].shape[0], stacks[0].shape[1]
    if full:
        total = total + jax.lax.map(batch_loss, stacks).sum() * bs
        count += full * bs
    if tail[0].shape[0]:
        total = total + batch_loss(tail) * tail[0].shape[0]
        count += tail[0].shape[0]
    return total / count


def finish(spec: StepSpec, carry: Carry, rng: jax.Array, val: tuple[Any, Any] | None) -> jax.Array:
    """The epoch's record, one float32 vector: per-step losses, diverged, bad step, val loss.

    One array, so the host reads an epoch's results with a single
    ``jax.device_get`` (a tuple of arrays costs a transfer each). The bad
    step index is exact in float32 (it is below 2**24 steps per epoch).
    """
    val_loss = jnp.float32(jnp.nan) if val is None else evaluate(spec, carry.state, rng, *val)
    flags = jnp.stack([carry.diverged.astype(jnp.float32), carry.bad_step.astype(jnp.float32),
                       jnp.asarray(val_loss, jnp.float32)])
    return jnp.concatenate([carry.losses.astype(jnp.float32), flags])


def _batch_split(tensors: Sequence[jax.Array], order: jax.Array | None, batch_size: int
                 ) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """Reorder ``tensors``, cut them into ``(full batches stacked, tail batch)``, fresh flags.

    The flags (not diverged, no bad step, position 0, zero losses) are made
    here rather than sent from the host: a compiled constant costs nothing,
    a ``device_put`` per epoch would cost a transfer.
    """
    n = tensors[0].shape[0]
    full = n // batch_size
    stacks, tails = [], []
    for t in tensors:
        if order is not None:
            t = jnp.take(t, order, axis=0)
        stacks.append(t[: full * batch_size].reshape((full, batch_size, *t.shape[1:])))
        tails.append(t[full * batch_size :])
    steps = full + (1 if n % batch_size else 0)
    fresh = (jnp.bool_(False), jnp.int32(-1), jnp.int32(0), jnp.zeros((steps,), jnp.float32))
    return tuple(stacks), tuple(tails), fresh


def run_epoch(spec: StepSpec, state: ArrayState, grads: Params, rng: jax.Array,
              tensors: tuple[jax.Array, ...], order: jax.Array | None, batch_size: int,
              val: tuple[Any, Any] | None) -> tuple[ArrayState, Params, jax.Array]:
    """A whole epoch in one call: gather, every step (``lax.scan``), the tail, validation.

    Used when ``steps_per_execution`` covers the epoch: one dispatch per
    epoch instead of one per chunk plus the gather and the validation.
    """
    stacks, tail, fresh = _batch_split(tensors, order, batch_size)
    carry = Carry(state, grads, *fresh)
    if stacks[0].shape[0]:
        carry = run_chunk(spec, carry, rng, stacks, stacks[0].shape[0])
    if tail[0].shape[0]:
        carry = tail_step(spec, carry, rng, tail)
    return carry.state, carry.grads, finish(spec, carry, rng, val)


class Programs(NamedTuple):
    """The jitted functions of one :class:`StepSpec`."""

    chunk: Callable[..., Carry]
    tail: Callable[..., Carry]
    finish: Callable[..., jax.Array]
    epoch: Callable[..., tuple[ArrayState, Params, jax.Array]]


_PROGRAMS: OrderedDict[StepSpec, Programs] = OrderedDict()


def compiled(spec: StepSpec) -> Programs:
    """The jitted functions for ``spec``, made once per distinct spec in this process.

    Each is a ``jax.jit`` of a pure function with the spec bound, so the
    per-step call hashes no static arguments (only the chunk length ``k``);
    jax keeps the compiled executables with the jitted function, which this
    bounded cache keeps alive across fits and trainers.
    """
    return bounded_cache(_PROGRAMS, spec, lambda: _build_programs(spec))


def _build_programs(spec: StepSpec) -> tuple[StepSpec, Programs]:
    clone = detached(spec.model)
    stored = dataclasses.replace(
        spec, model=clone, model_key=clone if spec.model_key is spec.model else spec.model_key
    )
    return stored, Programs(
        chunk=jax.jit(functools.partial(run_chunk, stored), static_argnums=3),
        tail=jax.jit(functools.partial(tail_step, stored)),
        finish=jax.jit(functools.partial(finish, stored)),
        epoch=jax.jit(functools.partial(run_epoch, stored), static_argnums=5),
    )


def gpu_devices() -> list[jax.Device]:
    """The GPUs JAX can use; empty when jaxlib has no GPU backend."""
    try:
        return list(jax.devices("gpu"))
    except RuntimeError:  # "Unknown backend gpu" / no CUDA plugin installed
        return []


# Model-independent, so one jitted function for the whole process: a later fit
# on data of the same shapes reuses its compiled code.
_split = jax.jit(_batch_split, static_argnums=2)
_zeros_like = jax.jit(lambda tree: jax.tree_util.tree_map(jnp.zeros_like, tree))


class Trainer(TrainerBase):
    """Trains a d2lx JAX ``Module`` (see :class:`d2lx.trainer.TrainerBase`).

    d2l-for-JAX surface: ``trainer.state`` is a flax :class:`TrainState`
    (``trainer.state.params['w']`` for the scratch model) and
    ``fit(model, data, ckpt_path=None, key=None)`` takes an optional PRNG
    key (used for ``init`` of models without d2lx's seeded initializers, and
    as ``state.dropout_rng``; d2l's positional ``fit(model, data, key)`` is
    accepted too).

    ``trainer.optim`` is the optax transformation of the train state:
    assigning it (as ``fit`` does with ``model.configure_optimizers()``)
    creates ``trainer.state`` from the model's parameters.

    JAX-only option ``matmul_precision`` (default ``"highest"``): the
    precision of float32 matmuls in the compiled steps. ``"highest"`` is full
    float32 on every device, so CPU and GPU runs agree with the other
    backends; ``"default"`` lets XLA use TF32 on Ampere+ GPUs (faster, about
    3 significant digits per product) and is *not* comparable to them.

    ``devices=N`` (``strategy="data_parallel"``): one process drives a
    ``jax.sharding.Mesh`` of N devices (``trainer.mesh``); see the module
    docstring.
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
        self.last_grads: Params | None = None  # the last applied step's gradients (device)
        self.mesh: Mesh | None = None
        self._placement: jax.Device | NamedSharding | None = None
        self._key: jax.Array | None = None
        self._programs: Programs | None = None
        self._spec: StepSpec | None = None
        self._val_split: Any = None
        self._configuring = False  # fit() is about to install model.configure_optimizers()
        self._tx_key: Any = None
        self._fits = 0
        super().__init__(max_epochs, num_gpus, gradient_clip_val, **kwargs)
        if self.mesh is None:
            self._placement = self.device
        self.hparams["matmul_precision"] = matmul_precision

    # -- adapter hooks -------------------------------------------------------------
    def _native_device(self, spec: DeviceSpec) -> jax.Device:
        if spec.kind == "cpu":
            cpus = jax.devices("cpu")
            if spec.index >= len(cpus):
                raise DeviceUnavailableError(
                    f"CPU device {spec.index} was requested but jax sees {len(cpus)} CPU device(s); "
                    f"set XLA_FLAGS=--xla_force_host_platform_device_count={spec.index + 1} in the "
                    "environment before importing jax, or use fewer devices"
                )
            return cpus[spec.index]
        gpus = gpu_devices()
        if spec.index >= len(gpus):
            raise gpu_unavailable(
                "jax", spec, len(gpus),
                'install a CUDA build of jaxlib (pip install -U "jax[cuda12]") on a machine '
                "with an NVIDIA GPU",
            )
        return gpus[spec.index]

    def _setup_data_parallel(self, specs: list[DeviceSpec]) -> None:
        """A one-axis ``Mesh`` over the requested devices; arrays are replicated over it.

        Single process: the N devices are this process's (``jax.devices``).
        Several hosts would call ``jax.distributed.initialize()`` first and
        build the mesh over ``jax.devices()`` of all processes; d2lx does not
        do that for you (see docs/scaling-out.md).
        """
        devices = [self._native_device(spec) for spec in specs]
        self.mesh = Mesh(np.array(devices), (DATA_AXIS,))
        self._placement = NamedSharding(self.mesh, PartitionSpec())

    @property
    def is_global_zero(self) -> bool:
        return jax.process_index() == 0

    def _array_ops(self) -> JaxOps:
        assert self._placement is not None
        return JaxOps(self._placement)

    def _losses_to_host(self, values: list[Any]) -> np.ndarray:
        # The compiled epoch records NumPy already (read once by fit_epoch); an
        # eager d2l-style fit_epoch records device scalars: one call for all.
        host = values if all(isinstance(v, np.ndarray) for v in values) else jax.device_get(values)
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
        leaves = [jax.device_put(np.asarray(state[k], dtype=leaf.dtype).reshape(leaf.shape), self._placement)
                  for k, (_, leaf) in zip(keys, flat)]
        self.state = self.state.replace(opt_state=jax.tree_util.tree_unflatten(treedef, leaves))

    # -- the train state -------------------------------------------------------------
    @property
    def optim(self) -> Any:
        """The optax transformation in ``self.state`` (``None`` before ``fit``)."""
        return None if self.state is None else self.state.tx

    @optim.setter
    def optim(self, tx: Any) -> None:
        configured, self._configuring = self._configuring, False
        if tx is None:
            self.state = None
            return
        model = self.model
        params = model.current_params()
        assert params is not None, "_place_model runs before the optimizer is installed"
        key = self._key if self._key is not None else _default_key(model, self._placement)
        _, dropout_rng, step = _run_keys(key, self._placement)
        # TrainState.create would make step a Python int (a transfer per use); the
        # cached keys and step are already placed, so place() moves nothing here.
        self.state = place(TrainState(
            step=step, apply_fn=model.apply, params=params, tx=tx, opt_state=tx.init(params),
            batch_stats={}, dropout_rng=dropout_rng,
        ), self._placement)
        self._tx_key = "configure_optimizers" if configured else ByIdentity(tx)
        self._programs = self._spec = None  # a new run: look up (or build) its compiled functions
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
        self.last_grads = model.__dict__.get("_parked_grads")
        super().prepare_model(model)

    def _place_model(self, model: Any, num_inputs: int) -> None:
        key = self._key if self._key is not None else _default_key(model, self._placement)
        self._key = key
        params_key, _, _ = _run_keys(key, self._placement)
        dummy = _first_rows(tuple(self.train_dataloader.tensors[:-1]))
        params = model.initial_params(dummy, params_key)
        model._parked_params = place(params, self._placement)

    def fit(self, model: Any, data: DataModule, ckpt_path: Any = None,
            key: jax.Array | None = None) -> History:
        """Train ``model`` on ``data``; resume from ``ckpt_path`` if given (see the core's ``fit``).

        ``key`` is d2l's optional ``jax.random`` key; d2l's positional
        ``fit(model, data, key)`` is recognised by the key's type.
        """
        if isinstance(ckpt_path, jax.Array):  # d2l for JAX: fit(model, data, key)
            if key is not None:
                raise ArgumentTypeError("pass the PRNG key once (third argument or key=)")
            ckpt_path, key = None, ckpt_path
        self._key = _check_key(key)
        self._fits += 1
        self._configuring = True  # the core's fit installs model.configure_optimizers() next
        try:
            return super().fit(model, data, ckpt_path=ckpt_path)
        finally:
            self._configuring = False

    # -- gradient clipping -----------------------------------------------------------
    def clip_gradients(self, grad_clip_val: float, grads: Any) -> Any:
        """Rescale ``grads`` so their joint L2 norm is at most ``grad_clip_val`` (d2l 9.5).

        Pure (a ``jnp.minimum`` scale, no Python ``if`` on a traced value), so
        it runs inside the compiled step without a host sync.
        """
        return clip_by_global_norm(grad_clip_val, grads)

    # -- the compiled functions --------------------------------------------------------
    def step_spec(self) -> StepSpec:
        """The :class:`StepSpec` of the current run (built once per ``fit``)."""
        if self._spec is None:
            assert self.state is not None, "fit() creates the train state first"
            own_hooks = (type(self).prepare_batch is not TrainerBase.prepare_batch
                         or type(self).clip_gradients is not Trainer.clip_gradients)
            self._spec = StepSpec(
                model=self.model,
                model_key=module_key(self.model),
                tx=self.state.tx,
                tx_key=self._tx_key,
                hooks=self if own_hooks else None,
                hooks_key=(ByIdentity(self), self._fits) if own_hooks else None,
                matmul_precision=self.matmul_precision,
                gradient_clip_val=self.gradient_clip_val,
                check_finite=self.check_finite,
                mesh=self.mesh,
            )
        return self._spec

    def _fns(self) -> Programs:
        if self._programs is None:
            self._programs = compiled(self.step_spec())
        return self._programs

    def _grads_or_zeros(self) -> Params:
        assert self.state is not None
        if self.last_grads is not None:
            return self.last_grads
        return _zeros_like(self.state.params)  # before any step: zeros placed like the parameters

    def initial_carry(self) -> Carry:
        """The carry an epoch starts from: the train state, last gradients, fresh flags."""
        assert self.state is not None, "fit() creates the train state first"
        loader = self.train_dataloader
        _, _, fresh = _split(loader.tensors, None, loader.batch_size)
        return Carry(strip_state(self.state), self._grads_or_zeros(), *fresh)

    def _train_step(self, carry: Carry, batch: tuple[jax.Array, ...]) -> Carry:
        """One step of this run, uncompiled (for inspection, e.g. ``jax.make_jaxpr``)."""
        assert self.state is not None
        return train_step(self.step_spec(), carry, self.state.dropout_rng, batch)

    def _val_batches(self) -> tuple[Any, Any] | None:
        """The validation data cut into batches, once per fit (it is not shuffled)."""
        val = self.val_dataloader
        if val is None:
            return None
        if self._val_split is None:
            stacks, tail, _ = _split(val.tensors, None, val.batch_size)
            self._val_split = (stacks, tail)
        return self._val_split

    # -- d2l's fit_epoch ----------------------------------------------------------------
    def fit_epoch(self) -> None:
        """One epoch: compiled steps, then a single read of its losses, divergence flag, val loss.

        When ``steps_per_execution`` covers the epoch, the gather, every step
        and the validation are one compiled call; otherwise the gather, the
        chunks of ``steps_per_execution`` steps, the tail batch and a
        ``finish`` call (validation + packing) are separate calls. Either way
        the host transfers the shuffle order in and one vector out.
        """
        assert self.state is not None, "fit() creates the train state before the first epoch"
        fns = self._fns()
        self.model.training = True
        loader: ArrayLoader = self.train_dataloader
        order = loader.epoch_order()  # consumes the shuffle stream exactly like iteration
        if order is not None:
            order = np.asarray(order, dtype=np.int32)  # JAX has no int64 by default
        steps = len(loader)
        val = self._val_batches()
        had_grads = self.last_grads is not None
        rng = self.state.dropout_rng
        if self.steps_per_execution >= steps:
            grads = self._grads_or_zeros()
            with _order_transfer():
                state, grads, record = fns.epoch(strip_state(self.state), grads, rng,
                                                 tuple(loader.tensors), order, loader.batch_size, val)
        else:
            with _order_transfer():
                stacks, tail, fresh = _split(loader.tensors, order, loader.batch_size)
            carry = Carry(strip_state(self.state), self._grads_or_zeros(), *fresh)
            full, done = stacks[0].shape[0], 0
            while done < full:
                k = min(self.steps_per_execution, full - done)
                carry = fns.chunk(carry, rng, stacks, k)
                done += k
            if tail[0].shape[0]:
                carry = fns.tail(carry, rng, tail)
            state, grads, record = carry.state, carry.grads, fns.finish(carry, rng, val)
        self.state = restore_state(self.state, state)
        host = np.asarray(jax.device_get(record))  # the epoch's one device-to-host transfer
        losses, diverged, bad_step = host[:steps], host[steps] > 0, int(host[steps + 1])
        if not (diverged and bad_step == 0 and not had_grads):
            self.last_grads = grads  # else no step has been applied yet: no gradients
        if diverged:
            self.train_batch_idx += bad_step
            self.raise_divergence(self.epoch, self.train_batch_idx)
        self._train_meter.add(losses, steps)
        self.train_batch_idx += steps

        if val is None:
            return
        self.model.training = False
        self._val_meter.add(host[steps + 2 :], self.val_dataloader.num_examples)
        self.val_batch_idx += len(self.val_dataloader)


def _order_transfer() -> Any:
    """Allow the one host-to-device copy an epoch makes: its shuffle order, as a jit argument.

    The order goes into the compiled gather as a NumPy argument, which JAX's
    C++ dispatch copies to the device (about 10 us); ``jax.device_put`` of
    the same 4 KB costs about 100 us of Python on CPU, a third of a compiled
    epoch of the seed workload. The guard is relaxed for that call only, so a
    ``jax.transfer_guard("disallow")`` set by the user still catches every
    other transfer (the backend tests run epochs under it).
    """
    return jax.transfer_guard_host_to_device("allow")


_KEYS: OrderedDict[Hashable, tuple[jax.Array, jax.Array, jax.Array]] = OrderedDict()


def _run_keys(key: jax.Array, placement: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(params_key, dropout_rng, zero step)`` of a run from its key, placed; cached per seed.

    Eager ``jax.random.split`` and a ``device_put`` per fit cost more than a
    compiled epoch of the seed workload; keys are immutable arrays, so runs
    from the same seed can share them.
    """
    cache_key = (ByIdentity(key), placement)
    hit = _KEYS.get(cache_key)
    if hit is None:
        params_key, dropout_rng = jax.random.split(key)
        step = jax.device_put(np.int32(0), placement)
        hit = _KEYS[cache_key] = place((params_key, dropout_rng, step), placement)
        while len(_KEYS) > 256:
            _KEYS.popitem(last=False)
    return hit


_first_rows = jax.jit(lambda tensors: tuple(t[:1] for t in tensors))  # init's dummy batch, one call


def place(tree: Any, placement: Any) -> Any:
    """``tree`` with every array on ``placement``, moving only the leaves that are not there."""
    target = placement if isinstance(placement, jax.sharding.Sharding) else SingleDeviceSharding(placement)

    def move(leaf: Any) -> Any:
        # (jit outputs of constants may be uncommitted, yet already where they belong)
        if isinstance(leaf, jax.Array) and leaf.sharding.is_equivalent_to(target, leaf.ndim):
            return leaf
        return jax.device_put(leaf, target)

    return jax.tree_util.tree_map(move, tree)


_SEED_KEYS: OrderedDict[Hashable, jax.Array] = OrderedDict()


def _default_key(model: Any, placement: Any) -> jax.Array:
    """A PRNG key from the model's seed (else d2lx's global seed), for reproducible runs.

    Cached per seed and placement (the same key object), so :func:`_run_keys`
    finds its split keys cached too.
    """
    seed = getattr(model, "seed", None)
    seed = resolve_seed(seed if isinstance(seed, int) else None)
    seed = 0 if seed is None else seed % (2**32)
    hit = _SEED_KEYS.get((seed, placement))
    if hit is None:
        # device_put: an explicit transfer (jax.random.key(int) would be an implicit one)
        hit = _SEED_KEYS[(seed, placement)] = jax.random.key(jax.device_put(np.uint32(seed), placement))
        while len(_SEED_KEYS) > 256:
            _SEED_KEYS.popitem(last=False)
    return hit


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

