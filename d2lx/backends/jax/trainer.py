"""``d2l.Trainer`` for JAX: devices, keys, the flax train state, checkpoint state.

d2l-for-JAX surface: ``trainer.state`` is a flax :class:`TrainState`
(``trainer.state.params['w']``), ``fit(model, data, ckpt_path=None,
key=None)`` takes an optional PRNG key (d2l's positional ``fit(model, data,
key)`` too), and assigning ``trainer.optim`` (as ``fit`` does with
``model.configure_optimizers()``) creates the train state from the model's
parameters. The compiled steps are in :mod:`d2lx.backends.jax.compiled`, run by
:mod:`d2lx.backends.jax.step`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from d2lx.backends.jax.carry import Carry, begin_carry, zeros_like
from d2lx.backends.jax.compiled import Programs, StepSpec, clip_by_global_norm, programs
from d2lx.backends.jax.distributed import make_mesh
from d2lx.backends.jax.module import ByIdentity, Module, Params, TrainState, module_key, strip_state
from d2lx.backends.jax.ops import JaxOps, gpu_devices, place
from d2lx.backends.jax.step import JaxStep, host_batch, order_transfer
from d2lx.data import DataModule
from d2lx.devices import DeviceSpec, gpu_unavailable
from d2lx.errors import ArgumentTypeError, CheckpointError, DeviceUnavailableError, InvalidArgumentError
from d2lx.history import History
from d2lx.loader import Batch
from d2lx.seeding import resolve_seed
from d2lx.trainer import TrainerBase

MATMUL_PRECISIONS = ("highest", "high", "default", "float32", "tensorfloat32", "bfloat16")


class Trainer(TrainerBase):
    """Trains a d2lx JAX ``Module`` (see :class:`d2lx.trainer.TrainerBase` and the module docstring).

    JAX-only option ``matmul_precision`` (default ``"highest"``): the precision
    of float32 matmuls in the compiled steps. ``"highest"`` is full float32
    on every device, so CPU and GPU runs agree with the other backends;
    ``"default"`` lets XLA use TF32 on Ampere+ GPUs (faster, not comparable).
    ``devices=N``: one process drives a ``jax.sharding.Mesh`` of N devices
    (``trainer.mesh``; see :mod:`d2lx.backends.jax.distributed`).
    """

    backend_name = "jax"
    module_class = Module
    module_kind = "JAX"
    module_base = "a flax linen Module"

    def __init__(self, max_epochs: int, num_gpus: int = 0, gradient_clip_val: float = 0, *,
                 matmul_precision: str = "highest", **kwargs: Any) -> None:
        if matmul_precision not in MATMUL_PRECISIONS:
            raise InvalidArgumentError(f"matmul_precision must be one of {', '.join(MATMUL_PRECISIONS)}, got "
                                       f"{matmul_precision!r}; use 'highest' for full float32")
        self.matmul_precision = matmul_precision
        self.state: TrainState | None = None
        self.last_grads: Params | None = None  # the last applied step's gradients (device)
        self.mesh: Any = None
        self._placement: Any = None
        self._key: jax.Array | None = None
        self._configuring = False  # fit() is about to install model.configure_optimizers()
        self._tx_key: Any = None
        self._specs: dict[bool, StepSpec] = {}
        self._fits = 0
        super().__init__(max_epochs, num_gpus, gradient_clip_val, **kwargs)
        if self.mesh is None:
            self._placement = self.device
        self.hparams["matmul_precision"] = matmul_precision

    # -- devices ----------------------------------------------------------------------
    def _native_device(self, spec: DeviceSpec) -> jax.Device:
        if spec.kind == "cpu":
            cpus = jax.devices("cpu")
            if spec.index >= len(cpus):
                wanted = max(spec.index + 1, len(self.device_specs) if hasattr(self, "device_specs") else 0)
                raise DeviceUnavailableError(
                    f"CPU device {spec.index} was requested but jax sees {len(cpus)} CPU device(s); set "
                    f"XLA_FLAGS=--xla_force_host_platform_device_count={wanted} in the environment before "
                    "importing jax, or use fewer devices")
            return cpus[spec.index]
        gpus = gpu_devices()
        if spec.index >= len(gpus):
            raise gpu_unavailable("jax", spec, len(gpus), 'install a CUDA build of jaxlib (pip install -U '
                                  '"jax[cuda12]") on a machine with an NVIDIA GPU')
        return gpus[spec.index]

    def _setup_data_parallel(self, specs: list[DeviceSpec]) -> None:
        self.mesh, self._placement = make_mesh([self._native_device(spec) for spec in specs])

    @property
    def is_global_zero(self) -> bool:
        return jax.process_index() == 0

    def _array_ops(self) -> JaxOps:
        return JaxOps(self._placement)

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
        # the keys and the step come placed from _run_keys (placing a key again costs ~20 us a fit)
        params, opt_state = place((params, tx.init(params)), self._placement)
        self.state = TrainState(step=step, apply_fn=model.apply, params=params, tx=tx, opt_state=opt_state,
                                batch_stats={}, dropout_rng=dropout_rng)
        self._tx_key = "configure_optimizers" if configured else ByIdentity(tx)
        self._specs = {}

    def prepare_model(self, model: Any) -> None:
        self._check_model(model)
        previous = self.model
        if isinstance(previous, Module) and previous is not model:
            previous.park_params()  # the model this trainer trained before keeps its result
        model.park_params()  # take the params out of the trainer that owned the model
        self.state = None
        self.last_grads = model.__dict__.get("_parked_grads")
        super().prepare_model(model)

    def _model_example(self) -> Batch:
        """The first batch as the loader gave it, unless the reader prepares batches their own way.

        Only its first row's shapes reach ``init`` (through the jitted
        ``_first_rows``, whose C++ dispatch copies a NumPy row for about
        10 us, where ``prepare_batch``'s ``device_put`` of the whole batch
        costs a few hundred).
        """
        if type(self).prepare_batch is not TrainerBase.prepare_batch:
            return super()._model_example()
        return host_batch(self._example)

    def _place_model(self, model: Any, example: Batch) -> None:
        if self._key is None:
            self._key = _default_key(model, self._placement)
        params_key, _, _ = _run_keys(self._key, self._placement)
        with order_transfer():  # the NumPy rows of _model_example, also under a transfer guard
            dummy = _first_rows(tuple(example[:-1]))
        model._parked_params = place(model.initial_params(dummy, params_key), self._placement)

    def fit(self, model: Any, data: DataModule, ckpt_path: Any = None,
            key: jax.Array | None = None) -> History:
        """Train ``model`` on ``data``; see the core's ``fit`` (``key``: d2l's optional PRNG key)."""
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

    # -- the step ---------------------------------------------------------------------------
    def clip_gradients(self, grad_clip_val: float, grads: Any) -> Any:
        """Rescale ``grads`` so their joint L2 norm is at most ``grad_clip_val`` (d2l 9.5), traceable."""
        return clip_by_global_norm(grad_clip_val, grads)

    def step_spec(self, check_data: bool = False) -> StepSpec:
        """The :class:`~d2lx.backends.jax.compiled.StepSpec` of this run (d2lx's loaders, or others)."""
        spec = self._specs.get(check_data)
        if spec is None:
            assert self.state is not None, "fit() creates the train state first"
            own_hooks = (type(self).prepare_batch is not TrainerBase.prepare_batch
                         or type(self).clip_gradients is not Trainer.clip_gradients)
            spec = self._specs[check_data] = StepSpec(
                model=self.model, model_key=module_key(self.model), tx=self.state.tx, tx_key=self._tx_key,
                opt_def=strip_state(self.state)[1], hooks=self if own_hooks else None,
                hooks_key=(ByIdentity(self), self._fits) if own_hooks else None,
                matmul_precision=self.matmul_precision, gradient_clip_val=self.gradient_clip_val,
                check_finite=self.check_finite, check_data=check_data, mesh=self.mesh)
        return spec

    def make_step(self) -> JaxStep:
        return JaxStep(self, self.step_spec)

    def programs(self, check_data: bool = False) -> Programs:
        """This run's jitted functions (to inspect them: ``.lower(...)``, ``jax.make_jaxpr``)."""
        return programs(self.step_spec(check_data))

    def initial_carry(self) -> Carry:
        """The carry an epoch starts from: the train state's arrays, the last gradients, fresh flags."""
        assert self.state is not None, "fit() creates the train state first"
        grads = self.last_grads if self.last_grads is not None else zeros_like(self.state.params)
        return begin_carry(strip_state(self.state)[0], grads, 0)[0]

    # -- checkpoints ---------------------------------------------------------------------------
    def _leaves(self, tree: Any) -> dict[str, np.ndarray]:
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {jax.tree_util.keystr(path): np.asarray(jax.device_get(leaf)) for path, leaf in flat
                if isinstance(leaf, (jax.Array, np.ndarray))}

    def _load_leaves(self, tree: Any, state: dict[str, np.ndarray], what: str) -> Any:
        flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
        keys = [jax.tree_util.keystr(path) for path, leaf in flat
                if isinstance(leaf, (jax.Array, np.ndarray))]
        if sorted(keys) != sorted(state):
            raise CheckpointError(f"the checkpoint's {what} {sorted(state)} does not fit this run's "
                                  f"{sorted(keys)}; resume with the same model and the same optimizer")
        leaves = []
        for path, leaf in flat:
            key = jax.tree_util.keystr(path)
            if key in state:
                if tuple(state[key].shape) != tuple(np.shape(leaf)):
                    raise CheckpointError(f"the checkpoint's {what} {key} has shape {state[key].shape}, this "
                                          f"run's {np.shape(leaf)}; resume with the same model")
                leaf = jax.device_put(np.asarray(state[key], dtype=leaf.dtype), self._placement)
            leaves.append(leaf)
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def model_state(self) -> dict[str, np.ndarray]:
        assert self.state is not None
        return self._leaves({"params": self.state.params, "batch_stats": self.state.batch_stats})

    def load_model_state(self, state: dict[str, np.ndarray]) -> None:
        assert self.state is not None
        tree = self._load_leaves({"params": self.state.params, "batch_stats": self.state.batch_stats},
                                 state, "model state")
        self.state = self.state.replace(params=tree["params"], batch_stats=tree["batch_stats"])
        self.model._parked_params = tree["params"]

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """The optax state's array leaves by pytree path (none for SGD)."""
        return {} if self.state is None else self._leaves(self.state.opt_state)

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        if self.state is None:
            raise CheckpointError("no train state to load optimizer state into; call it after "
                                  "configure_optimizers (trainer.optim = ...)")
        self.state = self.state.replace(opt_state=self._load_leaves(self.state.opt_state, state,
                                                                    "optimizer state"))

    def rng_state(self) -> dict[str, np.ndarray]:
        """The train state's dropout key (JAX has no global generator)."""
        if self.state is None:
            return {}
        return {"jax_dropout_key": np.asarray(jax.random.key_data(self.state.dropout_rng))
                if jnp.issubdtype(self.state.dropout_rng.dtype, jax.dtypes.prng_key)
                else np.asarray(self.state.dropout_rng)}

    def load_rng_state(self, state: dict[str, np.ndarray]) -> None:
        key = state.get("jax_dropout_key")
        if key is None or self.state is None:
            return
        old = self.state.dropout_rng
        new = (jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))
               if jnp.issubdtype(old.dtype, jax.dtypes.prng_key) else jnp.asarray(key, old.dtype))
        self.state = self.state.replace(dropout_rng=place(new, self._placement))


_KEYS: OrderedDict[Hashable, tuple[jax.Array, jax.Array, jax.Array]] = OrderedDict()


def _run_keys(key: jax.Array, placement: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(params_key, dropout_rng, zero step)`` of a run from its key, placed; cached per key.

    Eager ``jax.random.split`` and a ``device_put`` per fit cost more than a
    compiled epoch of the seed workload; keys are immutable, so runs from the
    same key can share them.
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
_SEED_KEYS: OrderedDict[Hashable, jax.Array] = OrderedDict()


def _default_key(model: Any, placement: Any) -> jax.Array:
    """A PRNG key from the model's seed (else d2lx's global seed), cached per seed and placement."""
    seed = getattr(model, "seed", None)
    seed = resolve_seed(seed if isinstance(seed, int) else None)
    seed = 0 if seed is None else seed % (2**32)
    hit = _SEED_KEYS.get((seed, placement))
    if hit is None:
        hit = _SEED_KEYS[(seed, placement)] = jax.random.key(jax.device_put(np.uint32(seed), placement))
        while len(_SEED_KEYS) > 256:
            _SEED_KEYS.popitem(last=False)
    return hit


def _check_key(key: Any) -> jax.Array | None:
    if key is None:
        return None
    if isinstance(key, jax.Array) and (jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                                       or (key.dtype == jnp.uint32 and key.shape == (2,))):
        return key
    raise ArgumentTypeError(
        f"key must be a JAX PRNG key (jax.random.key(0) or jax.random.PRNGKey(0)), got {key!r}")
