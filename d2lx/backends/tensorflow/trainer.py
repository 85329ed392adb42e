"""``d2l.Trainer`` for TensorFlow: d2l's ``GradientTape`` step, compiled with ``tf.function``.

How a step runs (and why):

* **One trace per run.** The training step is a ``tf.function`` whose
  ``input_signature`` has a ``None`` batch dimension, built from the loader's
  arrays before the first call. Full batches and the shorter last batch use
  the same concrete function, so there is no retrace per epoch or for the
  last batch (``reduce_retracing`` alone would still trace twice).
* **No host sync per step.** Each step's loss stays a device scalar in the
  core's ``LossMeter`` until the end of the epoch. Divergence is guarded on
  the device: a ``tf.cond`` applies the update only if the loss is finite
  and nothing diverged before; otherwise it latches the step index into a
  variable. The host reads that variable once per epoch (once per call in
  fused mode) and raises :class:`d2lx.DivergenceError`; since every later
  update was skipped, the model holds the last finite parameters.
* **Fused mode.** ``steps_per_execution=N`` runs N steps inside one
  ``tf.function`` call (a ``tf.while_loop`` slicing the epoch's shuffled
  device arrays), like Keras' option of that name. The epoch order is drawn
  with the loader's own ``epoch_tensors()``, so the random stream is consumed
  exactly as plain iteration consumes it and the batches equal every other
  backend's.
* **Losses reported from outside the trace.** ``Module.log`` called while
  tracing hands its symbolic value to the trace (see :meth:`record_loss`);
  the compiled function returns it and the host files the resulting device
  scalar, as the JAX adapter does.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from d2lx.backends.tensorflow.distributed import DataParallel, ensure_logical_cpus
from d2lx.backends.tensorflow.models import SGD
from d2lx.backends.tensorflow.ops import TFOps
from d2lx.data import ArrayLoader, DataModule
from d2lx.devices import DeviceSpec, gpu_unavailable
from d2lx.errors import ArgumentTypeError, CheckpointError
from d2lx.history import History
from d2lx.trainer import TrainerBase


def _batch_spec(tensors: Sequence[Any]) -> tuple[tf.TensorSpec, ...]:
    """Signature of one batch of ``tensors``: the arrays' shapes with a ``None`` batch dimension."""
    return tuple(tf.TensorSpec((None, *t.shape[1:]), t.dtype) for t in tensors)


def _batch_at(tensors: Sequence[Any], i: tf.Tensor, batch_size: int) -> tuple[Any, ...]:
    """Batch ``i`` of the epoch's ``tensors``, sliced in the graph (the last one may be shorter)."""
    n = tf.shape(tensors[0], out_type=tf.int64)[0]
    lo = i * batch_size
    hi = tf.minimum(lo + batch_size, n)
    return tuple(t[lo:hi] for t in tensors)


_INDICES: list[tf.Tensor] = []


def _indices(count: int) -> list[tf.Tensor]:
    """Host-made int64 scalars ``0..count-1`` for the compiled calls, created once per process.

    Passing a ready tensor costs nothing; making one per step is an eager op.
    """
    while len(_INDICES) < count:
        with tf.device("/CPU:0"):
            _INDICES.append(tf.constant(len(_INDICES), tf.int64))
    return _INDICES[:count]


def _batch_sizes(num_examples: int, batch_size: int, start: int, stop: int) -> list[int]:
    """Sizes of batches ``start..stop-1`` of an epoch (the last one may be shorter)."""
    return [min(batch_size, num_examples - k * batch_size) for k in range(start, stop)]


def _handle(variable: Any) -> Any:
    """The resource handle a traced function captures for ``variable`` (Keras or tf.Variable)."""
    if not isinstance(variable, tf.Variable):
        variable = variable.value  # a Keras variable wraps a tf.Variable
    return variable.handle


class _Compiled:
    """The compiled functions of one run's structure: traced once, reusable across fits.

    ``fns`` maps names (``train``/``val``) to ``tf.function`` s traced with the
    variables of the run that built them (``owner``: model, optimizer and
    trainer variables, in :meth:`Trainer._state_variables` order). Calls go
    to each function's single concrete function, fetched once, which skips
    ``tf.function``'s per-call signature matching.

    A later fit with a model of the *same structure* (see
    :meth:`Trainer._structure_key`) reuses them: the concrete functions' only
    captured inputs are those variables' resource handles (checked when
    traced), and :meth:`bind` points them at the new run's variables with
    ``ConcreteFunction.set_external_captures``, TensorFlow's own way of
    re-binding a traced function's captured state (used when loading a
    SavedModel). The graph is unchanged; only which variables it reads and
    writes changes, so there is no retracing and no graph re-optimisation.
    """

    def __init__(self, fns: dict[str, Any], owner: Sequence[Any] | None) -> None:
        self.fns = fns
        self.concrete = {name: fn.get_concrete_function() for name, fn in fns.items()}
        if owner is None:  # not reusable (no structure key): never re-bound
            self._owner_ids = self._bound = []
            self.rebindable = False
            return
        self._owner_ids = [id(_handle(v)) for v in owner]
        self._bound: list[int] = list(self._owner_ids)
        # The captures as traced (set_external_captures replaces a function's list).
        self._captures = {name: list(cf.captured_inputs) for name, cf in self.concrete.items()}
        owned = set(self._owner_ids)
        self.rebindable = all(id(t) in owned for caps in self._captures.values() for t in caps)

    def bind(self, state: Sequence[Any]) -> None:
        """Make the functions read and write ``state`` (same layout as the owner's variables)."""
        if not self.rebindable:
            return
        handles = [_handle(v) for v in state]
        ids = [id(h) for h in handles]
        if ids == self._bound:
            return
        position = {owner_id: i for i, owner_id in enumerate(self._owner_ids)}
        for name, cf in self.concrete.items():
            cf.set_external_captures([handles[position[id(t)]] for t in self._captures[name]])
        self._bound = ids


#: Compiled functions by run structure (see Trainer._structure_key); a few recent ones.
_CACHE: OrderedDict[Any, _Compiled] = OrderedDict()
_CACHE_SIZE = 16


class Trainer(TrainerBase):
    """Trains a d2lx TensorFlow ``Module`` (see :class:`d2lx.trainer.TrainerBase`).

    Extra keyword: ``allow_tf32`` (default ``False``). On an Ampere or newer
    GPU TensorFlow runs float32 matmuls in TF32 unless told otherwise, which
    breaks agreement with the other backends at the 1e-4 level; d2lx turns
    TF32 off on GPU runs unless you allow it (a process-wide TensorFlow
    setting). It has no effect on the CPU.

    ``trace_counts`` says how often each compiled function was traced during
    the last ``fit`` (``{"train": 1, "val": 1}`` for a healthy run).
    """

    backend_name = "tensorflow"

    #: Whether ``tf.function`` runs AutoGraph over the step. d2lx's own loop uses
    #: ``tf.while_loop``/``tf.cond`` directly and d2l's ``training_step`` code has
    #: no Python control flow on tensors, so it is off: converting the traced
    #: code costs more than the whole rest of a small run's tracing. Set it to
    #: ``True`` (on the class or an instance) if your ``training_step``,
    #: ``loss`` or ``prepare_batch`` branches or loops on tensor values.
    autograph: bool = False

    def __init__(self, max_epochs: int, num_gpus: int = 0, gradient_clip_val: float = 0, *,
                 allow_tf32: bool = False, **kwargs: Any) -> None:
        if not isinstance(allow_tf32, bool):
            raise ArgumentTypeError(f"allow_tf32 must be True or False, got {allow_tf32!r}")
        self.allow_tf32 = allow_tf32
        self._dp: DataParallel | None = None
        self.trace_counts: dict[str, int] = {"train": 0, "val": 0}
        self._capture: list[Any] | None = None
        self._compiled: _Compiled | None = None
        self._compiled_key: tuple[int, ...] | None = None
        self.compile_cache_hit = False
        self._step: tf.Variable | None = None
        self._bad_step: tf.Variable | None = None
        self._grad_slots: list[tuple[Any, tf.Variable]] = []
        self._fit_first_step = 0
        # Every TrainerBase keyword (device, steps_per_execution, devices, strategy...) is forwarded.
        super().__init__(max_epochs, num_gpus, gradient_clip_val, **kwargs)

    # -- data parallel (one process, MirroredStrategy; see distributed.py) ----------------
    def _setup_data_parallel(self, specs: list[DeviceSpec]) -> None:
        if specs[0].kind == "cpu":
            ensure_logical_cpus(len(specs))
            devices = [f"/CPU:{spec.index}" for spec in specs]
        else:
            devices = [self._native_device(spec) for spec in specs]
        self._dp = DataParallel(devices)

    @property
    def distribute_strategy(self) -> tf.distribute.Strategy | None:
        """The ``tf.distribute.MirroredStrategy`` of a ``devices=N`` run (``None`` on one device)."""
        return None if self._dp is None else self._dp.strategy

    # -- adapter hooks -----------------------------------------------------------------
    def _native_device(self, spec: DeviceSpec) -> str:
        if spec.kind == "cpu":
            return "/CPU:0"
        visible = len(tf.config.list_logical_devices("GPU"))
        if spec.index >= visible:
            raise gpu_unavailable(
                "tensorflow", spec, visible,
                "run on a machine with an NVIDIA GPU and a CUDA build of TensorFlow "
                "(pip install 'tensorflow[and-cuda]'; tensorflow-cpu has no GPU support)",
            )
        return f"/GPU:{spec.index}"

    def _array_ops(self) -> TFOps:
        return TFOps(self.device)

    def _place_model(self, model: Any, num_inputs: int) -> None:
        if self._dp is not None:
            self._dp.check_batches(self.train_dataloader.num_examples, self.train_dataloader.batch_size)
        materialize = getattr(model, "materialize", None)
        if materialize is None:
            raise ArgumentTypeError(
                f"{type(model).__name__} is not a d2lx TensorFlow Module; subclass "
                "d2lx.tensorflow.Module (a tf.keras.Model) for your model"
            )
        materialize(num_inputs, self.device)

    def _losses_to_host(self, values: list[Any]) -> np.ndarray:
        """One device op and one transfer for the epoch's losses (scalars, or fused calls' vectors)."""
        with tf.device(self.device):
            if all(getattr(v, "shape", None) is not None and v.shape.rank == 0 for v in values):
                stacked = tf.stack(values)  # step by step: the compiled step returns scalars
            else:
                stacked = tf.concat([tf.reshape(v, [-1]) for v in values], axis=0)
            if stacked.dtype != tf.float32:
                stacked = tf.cast(stacked, tf.float32)
        return np.asarray(stacked.numpy(), dtype=np.float64)

    def _is_finite(self, loss: Any) -> bool:
        return bool(tf.reduce_all(tf.math.is_finite(loss)))

    def _optimizer_state(self) -> dict[str, np.ndarray]:
        """Keras optimizers' variables (``iterations``, learning rate, slots) as NumPy.

        Keys are ``"<index>:<variable name>"`` (``"0:iteration"``...). Keras
        makes paths unique per instance (``sgd_3/...``), so a fresh optimizer
        is matched by position, shape and dtype; the name is for people. The
        hand-written :class:`~d2lx.backends.tensorflow.models.SGD` has no state.
        """
        optim = self.optim
        if not isinstance(optim, tf.keras.optimizers.Optimizer):
            return {}
        self._build_optimizer()
        return {f"{i}:{v.name}": np.array(v.numpy()) for i, v in enumerate(optim.variables)}

    def _load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        optim = self.optim
        if not isinstance(optim, tf.keras.optimizers.Optimizer):
            if state:
                raise CheckpointError(
                    f"the checkpoint holds optimizer state ({sorted(state)}) but "
                    f"{type(optim).__name__} has none; load it with the optimizer it was saved from"
                )
            return
        self._build_optimizer()
        variables = list(optim.variables)
        if not state and not self._optimizer_slots(optim):
            # A stateless optimizer's checkpoint from another backend (torch/optax/Gluon
            # SGD keep nothing): nothing to restore but Keras' step counter, which
            # _restore sets from the checkpoint's step.
            return
        try:
            by_index = {int(key.split(":", 1)[0]): np.asarray(value) for key, value in state.items()}
        except ValueError:
            by_index = {}
        fits = sorted(by_index) == list(range(len(variables))) and all(
            by_index[i].shape == tuple(v.shape) for i, v in enumerate(variables))
        if not fits:
            raise CheckpointError(
                f"optimizer state does not match {type(optim).__name__}: checkpoint has "
                f"{sorted(state)}, the optimizer has "
                f"{[f'{i}:{v.name} {tuple(v.shape)}' for i, v in enumerate(variables)]}; "
                "load it with the optimizer it was saved from"
            )
        for i, variable in enumerate(variables):
            variable.assign(by_index[i].astype(variable.dtype))

    @staticmethod
    def _optimizer_slots(optim: tf.keras.optimizers.Optimizer) -> list[Any]:
        """The optimizer's per-parameter state (momentum...), i.e. all but its step and learning rate."""
        own = {id(optim.iterations)}
        lr = getattr(optim, "_learning_rate", None)
        if lr is not None:
            own.add(id(lr))
        return [v for v in optim.variables if id(v) not in own]

    def _restore(self, ckpt: Any, path: str | Path) -> None:
        """The core's restore, then Keras' step counter set to the checkpoint's step."""
        super()._restore(ckpt, path)
        if isinstance(self.optim, tf.keras.optimizers.Optimizer) and not ckpt.optimizer:
            self.optim.iterations.assign(self.train_batch_idx)

    def applied_gradients(self, variables: Sequence[Any]) -> list[np.ndarray] | None:
        """The gradients the last applied step used for ``variables`` (``None`` before any step).

        Kept on the device by the compiled step (one ``assign`` per variable,
        no host sync) and read here once.
        """
        if not self._grad_slots or self.train_batch_idx <= self._fit_first_step:
            return None
        slots = {id(var): slot for var, slot in self._grad_slots}
        if not all(id(v) in slots for v in variables):
            return None
        return [np.asarray(slots[id(v)].numpy()) for v in variables]

    def _build_optimizer(self) -> None:
        """Create a Keras optimizer's variables now, eagerly, on the training device.

        Inside ``tf.function`` Keras would create them during the first trace;
        building first keeps variable creation out of the compiled step.
        """
        optim = self.optim
        if isinstance(optim, tf.keras.optimizers.Optimizer) and not optim.built:
            with tf.device(self.device):
                optim.build(self.model.trainable_variables)

    # -- d2l's surface -----------------------------------------------------------------
    def fit(self, model: Any, data: DataModule, ckpt_path: str | Path | None = None) -> History:
        """Train ``model`` on ``data`` (resuming from ``ckpt_path`` if given); the core's ``fit``.

        Every array op runs under ``tf.device``; with ``devices=N`` the whole
        run (model and optimizer variables included) is in the strategy's scope.
        """
        self._compiled = None
        self._grad_slots = []
        self.trace_counts = {"train": 0, "val": 0}
        if self.device_spec.kind == "gpu":
            tf.config.experimental.enable_tensor_float_32_execution(self.allow_tf32)
        scope = self._dp.strategy.scope() if self._dp is not None else contextlib.nullcontext()
        with tf.device(self.device), scope:
            return super().fit(model, data, ckpt_path)

    def record_loss(self, value: Any, train: bool, count: int) -> None:
        """``Module.log``'s target: while a step is being traced, keep the symbolic loss.

        The compiled function returns it and the host files the device
        scalar afterwards; a loss logged eagerly goes the core's way.
        """
        if self._capture is not None:
            self._capture.append(value)
            return
        super().record_loss(value, train, count)

    def clip_gradients(self, grad_clip_val: float, grads: Sequence[Any]) -> list[Any]:
        """Rescale ``grads`` so their joint L2 norm is at most ``grad_clip_val`` (d2l 9.5).

        ``scale = min(1, clip / norm)`` is computed on the device, without a
        Python ``if`` on a tensor (which would need a host sync eagerly).
        """
        dense = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        scale = self._clip_scale(grad_clip_val, dense)
        return [g * tf.cast(scale, g.dtype) for g in dense]

    @staticmethod
    def _clip_scale(grad_clip_val: float, grads: Sequence[Any]) -> tf.Tensor:
        """``min(1, clip / joint L2 norm of grads)``, a float32 device scalar."""
        dense = [tf.convert_to_tensor(g) for g in grads]
        norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, tf.float32))) for g in dense]))
        return tf.minimum(tf.constant(1.0, tf.float32), tf.cast(grad_clip_val, tf.float32) / norm)

    def fit_epoch(self) -> None:
        """One epoch: compiled steps over the training set, then the validation set."""
        with tf.device(self.device):
            compiled = self._ensure_compiled()
            compiled.bind(self._state_variables())  # no-op unless another run used it since
            if self.steps_per_execution > 1:
                self._fused_epoch(compiled)
            else:
                self._stepwise_epoch(compiled)

    # -- the epoch loops ------------------------------------------------------------------
    def _stepwise_epoch(self, compiled: _Compiled) -> None:
        """d2l's loop, one compiled call per batch.

        The epoch's order is drawn with the loader's ``epoch_tensors()`` (the
        random stream is consumed exactly as iterating the loader consumes
        it) and each call slices its batch itself from a device index, as a
        hand-written ``tf.function`` loop does: no eager slicing per step.
        """
        loader = self.train_dataloader
        self._run_stepwise(compiled.concrete["train"], loader, self._train_meter, train=True)
        self._raise_if_diverged()  # one host read per epoch
        if self.val_dataloader is not None:
            self._run_stepwise(compiled.concrete["val"], self.val_dataloader, self._val_meter,
                               train=False)

    def _run_stepwise(self, fn: Any, loader: ArrayLoader, meter: Any, train: bool) -> None:
        tensors = tuple(loader.epoch_tensors())
        sizes = _batch_sizes(loader.num_examples, loader.batch_size, 0, len(loader))
        for index, size in zip(_indices(len(loader)), sizes):
            meter.add(fn(tensors, index), size)
        if train:
            self.train_batch_idx += len(sizes)
        else:
            self.val_batch_idx += len(sizes)

    def _fused_epoch(self, compiled: _Compiled) -> None:
        """``steps_per_execution`` steps per compiled call over the epoch's device arrays."""
        loader = self.train_dataloader
        tensors = loader.epoch_tensors()  # draws the order exactly as iteration would
        self._run_fused(compiled.concrete["train"], loader, tensors, self._train_meter, train=True)
        if self.val_dataloader is not None:
            val = self.val_dataloader
            self._run_fused(compiled.concrete["val"], val, val.epoch_tensors(), self._val_meter,
                            train=False)

    def _run_fused(self, fn: Any, loader: ArrayLoader, tensors: tuple[Any, ...], meter: Any,
                   train: bool) -> None:
        num_batches = len(loader)
        indices = _indices(num_batches + 1)
        for start in range(0, num_batches, self.steps_per_execution):
            stop = min(start + self.steps_per_execution, num_batches)
            losses = fn(tuple(tensors), indices[start], indices[stop])
            # The call's loss vector stays one device value; the meter gets one size per step.
            meter.values.append(losses)
            meter.counts.extend(_batch_sizes(loader.num_examples, loader.batch_size, start, stop))
            if train:
                self.train_batch_idx += stop - start
                self._raise_if_diverged()  # one host read per call
            else:
                self.val_batch_idx += stop - start

    def _raise_if_diverged(self) -> None:
        if not self.check_finite or self._bad_step is None:
            return
        bad = int(self._bad_step.numpy())
        if bad >= 0:
            self.train_batch_idx = bad  # steps actually applied
            self.raise_divergence(self.epoch, bad)

    # -- building the compiled functions -------------------------------------------------
    def _state_variables(self) -> list[Any]:
        """Every variable a compiled step reads or writes, in a fixed order.

        The model's, the optimizer's and the trainer's own (step counter,
        first-bad-step latch, applied-gradient slots): the layout in which a
        cached :class:`_Compiled` is re-bound to another run.
        """
        assert self._step is not None and self._bad_step is not None
        model_vars = list(self.model.trainable_variables) + list(
            getattr(self.model, "non_trainable_variables", []))
        optim_vars = list(self.optim.variables) if isinstance(
            self.optim, tf.keras.optimizers.Optimizer) else []
        return [*model_vars, *optim_vars, self._step, self._bad_step,
                *(slot for _, slot in self._grad_slots)]

    def _structure_key(self, state: Sequence[Any]) -> Any:
        """What fixes the traced graph, or ``None`` where d2lx cannot tell (then: no reuse).

        Reuse needs every Python value the trace reads to be known: the model
        says so with ``compile_key()`` (d2lx's two linear models: class, the
        methods in use and the hyperparameters; other models return ``None``),
        the optimizer is a Keras optimizer (its config) or d2l's ``SGD`` (its
        ``lr``), and the trainer's options, methods, device, data layout and
        variable shapes must match. Data-parallel runs are not shared.
        """
        model_key = getattr(self.model, "compile_key", lambda: None)()
        optim = self.optim
        if isinstance(optim, tf.keras.optimizers.Optimizer):
            # Keras numbers instance names (sgd, sgd_1...); the name does not shape the step.
            config = {k: v for k, v in optim.get_config().items() if k != "name"}
            optim_key: Any = (type(optim), repr(sorted(config.items())))
        elif type(optim) is SGD:
            optim_key = (SGD, repr(sorted(optim.hparams.items())))
        else:
            optim_key = None
        methods = ("prepare_batch", "clip_gradients", "_train_one", "_val_one", "_captured")
        if (model_key is None or optim_key is None or self._dp is not None
                or any(name in self.__dict__ for name in methods)):
            return None
        loaders = [self.train_dataloader, self.val_dataloader]
        data_key = tuple(None if ld is None else (ld.batch_size, _batch_spec(ld.tensors)) for ld in loaders)
        return (model_key, optim_key, type(self), tuple(getattr(type(self), m) for m in methods),
                self.gradient_clip_val, self.check_finite, self.autograph, self.device,
                self.steps_per_execution > 1, data_key,
                tuple((tuple(v.shape), v.dtype.name if hasattr(v.dtype, "name") else str(v.dtype))
                      for v in state))

    def _ensure_compiled(self) -> _Compiled:
        key = (id(self.model), id(self.optim), id(self.train_dataloader), id(self.val_dataloader))
        if self._compiled is not None and self._compiled_key == key:
            return self._compiled
        self._build_optimizer()
        self._step = tf.Variable(self.train_batch_idx, dtype=tf.int64, trainable=False, name="step")
        self._bad_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="first_bad_step")
        self._fit_first_step = self.train_batch_idx
        self._grad_slots = [(v, tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name="grad"))
                            for v in self.model.trainable_variables]
        state = self._state_variables()
        structure = self._structure_key(state)
        compiled = _CACHE.get(structure) if structure is not None else None
        if compiled is not None:
            _CACHE.move_to_end(structure)
            self.compile_cache_hit = True
        else:
            self.compile_cache_hit = False
            compiled = self._trace(state if structure is not None else None)
            if structure is not None and compiled.rebindable:
                _CACHE[structure] = compiled
                while len(_CACHE) > _CACHE_SIZE:
                    _CACHE.popitem(last=False)
        self._compiled, self._compiled_key = compiled, key
        return compiled

    def _trace(self, state: Sequence[Any] | None) -> _Compiled:
        """Build and trace this run's training and validation functions (one trace each)."""
        train_spec = _batch_spec(self.train_dataloader.tensors)
        val_loader = self.val_dataloader
        val_spec = train_spec if val_loader is None else _batch_spec(val_loader.tensors)
        index = tf.TensorSpec((), tf.int64)
        train_bs = self.train_dataloader.batch_size
        val_bs = train_bs if val_loader is None else val_loader.batch_size
        counts = self.trace_counts  # Python side effects: they run only while tracing

        def train_step(tensors: tuple[Any, ...], i: tf.Tensor) -> tf.Tensor:
            counts["train"] += 1
            return self._train_one(_batch_at(tensors, i, train_bs))

        def val_step(tensors: tuple[Any, ...], i: tf.Tensor) -> tf.Tensor:
            counts["val"] += 1
            return self._val_one(_batch_at(tensors, i, val_bs))

        def train_many(tensors: tuple[Any, ...], start: tf.Tensor, stop: tf.Tensor) -> tf.Tensor:
            counts["train"] += 1
            return self._loop(self._train_one, tensors, start, stop, train_bs)

        def val_many(tensors: tuple[Any, ...], start: tf.Tensor, stop: tf.Tensor) -> tf.Tensor:
            counts["val"] += 1
            return self._loop(self._val_one, tensors, start, stop, val_bs)

        ag = self.autograph
        if self.steps_per_execution > 1:
            fns = {"train": tf.function(train_many, input_signature=[train_spec, index, index], autograph=ag)}
            if val_loader is not None:
                fns["val"] = tf.function(val_many, input_signature=[val_spec, index, index], autograph=ag)
        else:
            fns = {"train": tf.function(train_step, input_signature=[train_spec, index], autograph=ag)}
            if val_loader is not None:
                fns["val"] = tf.function(val_step, input_signature=[val_spec, index], autograph=ag)
        return _Compiled(fns, state)

    @staticmethod
    def _loop(step: Callable[[tuple[Any, ...]], tf.Tensor], tensors: tuple[Any, ...],
              start: tf.Tensor, stop: tf.Tensor, batch_size: int) -> tf.Tensor:
        """Run ``step`` on batches ``start..stop-1`` of ``tensors``; return their losses."""
        losses = tf.TensorArray(tf.float32, size=tf.cast(stop - start, tf.int32))

        def body(i: tf.Tensor, losses: tf.TensorArray) -> tuple[tf.Tensor, tf.TensorArray]:
            loss = step(_batch_at(tensors, i, batch_size))
            return i + 1, losses.write(tf.cast(i - start, tf.int32), loss)

        # parallel_iterations=1: each step reads the parameters the previous one wrote.
        _, losses = tf.while_loop(lambda i, _: i < stop, body, (start, losses), parallel_iterations=1)
        return losses.stack()

    def _captured(self, step_fn: Callable[[Any], Any], batch: Any, what: str) -> tf.Tensor:
        """Call ``training_step``/``validation_step`` while tracing; return its loss."""
        self._capture = []
        try:
            out = step_fn(batch)
        finally:
            captured, self._capture = self._capture, None
        loss = out if out is not None else (captured[-1] if captured else None)
        if loss is None:
            raise TypeError(f"{what} must return the loss (or log it with self.log('loss', loss))")
        return loss

    def _loss_and_grads(self, batch: tuple[Any, ...], weight: tf.Tensor | None = None
                        ) -> tuple[tf.Tensor, list[Any]]:
        """``training_step`` under a ``GradientTape`` (its loss times ``weight``, if given)."""
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            loss = self._captured(self.model.training_step, batch, "training_step")
            if weight is not None:
                loss = loss * tf.cast(weight, loss.dtype)
        return loss, list(tape.gradient(loss, variables))

    def _train_one(self, batch: tuple[Any, ...]) -> tf.Tensor:
        """One optimizer step, traced: tape, gradients, optional clipping, guarded update.

        With ``devices=N`` the loss and gradients are the sums of the
        replicas' weighted shard losses and gradients (see
        :mod:`d2lx.backends.tensorflow.distributed`). A Keras optimizer is
        then applied in replica context (it sums the replicas' gradients
        itself); d2l's hand-written ``SGD`` updates the mirrored variables
        with the summed gradient in cross-replica context.
        """
        assert self._step is not None and self._bad_step is not None
        batch = self.prepare_batch(batch)
        variables = self.model.trainable_variables
        local = None
        if self._dp is None:
            loss, grads = self._loss_and_grads(batch)
        else:
            loss, grads, local = self._dp.loss_and_grads(self._loss_and_grads, batch)
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        clip_scale = None
        if self.gradient_clip_val > 0 and pairs:
            clip_scale = self._clip_scale(self.gradient_clip_val, [g for g, _ in pairs])
            clipped = self.clip_gradients(self.gradient_clip_val, [g for g, _ in pairs])
            pairs = list(zip(clipped, [v for _, v in pairs]))
        slots = {id(var): slot for var, slot in self._grad_slots}
        replica_apply = local is not None and isinstance(self.optim, tf.keras.optimizers.Optimizer)

        def update() -> None:
            for g, v in pairs:  # what get_grads() returns: the applied gradient
                if id(v) in slots:
                    slots[id(v)].assign(tf.convert_to_tensor(g))
            if replica_apply:
                assert self._dp is not None
                self._dp.apply_in_replicas(self.optim, local, [v for _, v in pairs], clip_scale)
            else:
                self.optim.apply_gradients(pairs)

        if self.check_finite:
            bad_step, step = self._bad_step, self._step
            ok = tf.logical_and(tf.reduce_all(tf.math.is_finite(loss)), bad_step < 0)

            def apply() -> tf.Tensor:
                update()
                return tf.constant(True)

            def latch() -> tf.Tensor:  # keep the first bad step; skip this and every later update
                bad_step.assign(tf.where(bad_step < 0, step.read_value(), bad_step.read_value()))
                return tf.constant(False)

            tf.cond(ok, apply, latch)
        else:
            update()
        self._step.assign_add(1)
        return tf.reshape(tf.cast(loss, tf.float32), [])

    def _val_one(self, batch: tuple[Any, ...]) -> tf.Tensor:
        batch = self.prepare_batch(batch)
        loss = self._captured(self.model.validation_step, batch, "validation_step")
        return tf.reshape(tf.cast(loss, tf.float32), [])
