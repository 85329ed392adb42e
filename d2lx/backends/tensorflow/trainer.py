"""``d2l.Trainer`` for TensorFlow: devices, TF32, the strategy's scope, the step, checkpoint state.

The step itself (tracing, the guard, stepwise and fused epochs, reuse of
compiled steps) is :mod:`d2lx.backends.tensorflow.step`; data parallelism is
:mod:`d2lx.backends.tensorflow.distributed`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from d2lx.backends.tensorflow.distributed import DataParallel, DataParallelStep, ensure_logical_cpus
from d2lx.backends.tensorflow.models import SGD, optimizer_variables
from d2lx.backends.tensorflow.module import Module, state_variables
from d2lx.backends.tensorflow.ops import TFOps
from d2lx.backends.tensorflow.step import TFStep
from d2lx.data import DataModule
from d2lx.devices import DeviceSpec, gpu_unavailable
from d2lx.errors import ArgumentTypeError, CheckpointError, InvalidArgumentError
from d2lx.history import History
from d2lx.loader import ArrayLoader, Batch
from d2lx.trainer import TrainerBase


def _by_position(what: str, owner: str, state: dict[str, np.ndarray], variables: Sequence[Any]) -> list[Any]:
    """``state`` keyed ``"<index>:<name>"`` as one array per variable, or a :class:`CheckpointError`.

    Keras makes names unique per instance (``dense_3/kernel``, ``sgd_1/...``),
    so a fresh model or optimizer is matched by position, shape and dtype;
    the name is for people.
    """
    try:
        by_index = {int(key.split(":", 1)[0]): np.asarray(value) for key, value in state.items()}
    except ValueError:
        by_index = {}
    if sorted(by_index) != list(range(len(variables))) or any(
            by_index[i].shape != tuple(v.shape) for i, v in enumerate(variables)):
        raise CheckpointError(
            f"{what} state does not match {owner}: the checkpoint has {sorted(state)}, it has "
            f"{[f'{i}:{_name(v)} {tuple(v.shape)}' for i, v in enumerate(variables)]}; "
            f"resume with the {what} it was saved from")
    return [by_index[i].astype(tf.as_dtype(v.dtype).as_numpy_dtype) for i, v in enumerate(variables)]


def _name(variable: Any) -> str:
    """A variable's own name (``kernel``, ``w``): stable across instances, unlike Keras' path."""
    return str(variable.name).split(":", 1)[0]


def _global_generator() -> Any:
    """TensorFlow's global ``tf.random.Generator`` if the program made one (asking would make it)."""
    module = sys.modules.get("tensorflow.python.ops.stateful_random_ops")
    return getattr(module, "global_generator", None)


class Trainer(TrainerBase):
    """Trains a d2lx TensorFlow ``Module`` (see :class:`d2lx.trainer.TrainerBase`).

    Extra keyword: ``allow_tf32`` (default ``False``). On an Ampere or newer
    GPU TensorFlow runs float32 matmuls in TF32 unless told otherwise, which
    breaks agreement with the other backends at the 1e-4 level; d2lx turns
    TF32 off on GPU runs unless you allow it (a process-wide TensorFlow
    setting). It has no effect on the CPU.

    Extra keyword: ``jit_compile`` (``"auto"``, the default, ``True`` or
    ``False``), Keras 3's option: whether the compiled steps are compiled
    with XLA (``tf.function(jit_compile=...)``), which runs a small step in
    about half the time of a plain TensorFlow graph. With ``"auto"`` a step
    XLA cannot compile (an op without an XLA kernel, such as
    ``tf.numpy_function`` in a loss) runs as a plain graph instead, with one
    warning (``False`` silences it); with ``True`` that is an error.
    Data-parallel runs (``devices=N``) do not use XLA.

    ``trace_counts`` says how often each compiled function was traced during
    the last ``fit``: once each for a healthy run (``train``/``val``, and
    ``train_tail``/``val_tail`` for the shorter last batch of d2lx's own
    loader, a static shape for XLA), twice after a fallback from XLA, zeros
    when ``compile_cache_hit``: the compiled steps of an earlier fit were reused.
    """

    backend_name = "tensorflow"
    module_class = Module
    module_kind = "TensorFlow"
    module_base = "a tf.keras.Model"

    #: Whether ``tf.function`` runs AutoGraph over the step. d2lx's own loop uses
    #: ``tf.while_loop``/``tf.cond`` directly and d2l's ``training_step`` code has
    #: no Python control flow on tensors, so it is off: converting the traced
    #: code costs more than the whole rest of a small run's tracing. Set it to
    #: ``True`` (on the class or an instance) if your ``training_step``,
    #: ``loss`` or ``prepare_batch`` branches or loops on tensor values.
    autograph: bool = False

    def __init__(self, max_epochs: int, num_gpus: int = 0, gradient_clip_val: float = 0, *,
                 allow_tf32: bool = False, jit_compile: bool | str = "auto", **kwargs: Any) -> None:
        if not isinstance(allow_tf32, bool):
            raise ArgumentTypeError(f"allow_tf32 must be True or False, got {allow_tf32!r}")
        if not (isinstance(jit_compile, bool) or (isinstance(jit_compile, str) and jit_compile == "auto")):
            raise ArgumentTypeError(f"jit_compile must be 'auto', True or False, got {jit_compile!r}")
        self.allow_tf32 = allow_tf32
        self.jit_compile = jit_compile
        self._dp: DataParallel | None = None
        # Every TrainerBase keyword (device, steps_per_execution, devices, strategy...) is forwarded.
        super().__init__(max_epochs, num_gpus, gradient_clip_val, **kwargs)
        if jit_compile is True and self._dp is not None:
            raise InvalidArgumentError("jit_compile=True does not work with devices=N: the data-parallel "
                                       "step runs on several devices, an XLA program on one; use "
                                       "jit_compile='auto' (the default) or False")

    # -- devices and data parallelism (one process, MirroredStrategy) ---------------------
    def _native_device(self, spec: DeviceSpec) -> str:
        if spec.kind == "cpu":
            return "/CPU:0"
        visible = len(tf.config.list_logical_devices("GPU"))
        if spec.index >= visible:
            raise gpu_unavailable("tensorflow", spec, visible,
                                  "run on a machine with an NVIDIA GPU and a CUDA build of TensorFlow "
                                  "(pip install 'tensorflow[and-cuda]'; tensorflow-cpu has no GPU support)")
        return f"/GPU:{spec.index}"

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

    def _array_ops(self) -> TFOps:
        return TFOps(self.device)

    # -- the fit ---------------------------------------------------------------------------
    def fit(self, model: Any, data: DataModule, ckpt_path: str | Path | None = None) -> History:
        """The core's ``fit``, with every op under ``tf.device`` and, for ``devices=N``, the strategy's scope.

        Variables (model, optimizer, the step's own) are created inside, so
        under a strategy they are mirrored across its devices.
        """
        if self.device_spec.kind == "gpu":
            tf.config.experimental.enable_tensor_float_32_execution(self.allow_tf32)
        scope = self._dp.strategy.scope() if self._dp is not None else contextlib.nullcontext()
        with tf.device(self.device), scope:
            return super().fit(model, data, ckpt_path)

    def _place_model(self, model: Any, example: Batch) -> None:
        if self._dp is not None and isinstance(self.train_dataloader, ArrayLoader):
            self._dp.check_batches(self.train_dataloader.num_examples, self.train_dataloader.batch_size)
        model.materialize(example, self.device)

    def make_step(self) -> TFStep:
        if self.resumed is not None and isinstance(self.optim, tf.keras.optimizers.Optimizer):
            # Keras' step counter is the run's step (checkpoints keep only the optimizer's slots).
            optimizer_variables(self.optim, self.model.trainable_variables, self.device)
            self.optim.iterations.assign(self.train_batch_idx)
        return TFStep(self) if self._dp is None else DataParallelStep(self, self._dp)

    @property
    def trace_counts(self) -> dict[str, int]:
        """Traces of each compiled function during the last ``fit`` (see the class docstring)."""
        step = self._step
        return dict(step.trace_counts) if isinstance(step, TFStep) else {"train": 0, "val": 0}

    @property
    def compile_cache_hit(self) -> bool:
        """Whether the last ``fit`` reused the compiled step of an earlier fit (no tracing)."""
        return isinstance(self._step, TFStep) and self._step.cache_hit

    def applied_gradients(self, variables: Sequence[Any]) -> list[np.ndarray] | None:
        """The gradients the last applied step used for ``variables`` (``None`` before any step)."""
        step = self._step
        return step.applied_gradients(variables) if isinstance(step, TFStep) else None

    def clip_gradients(self, grad_clip_val: float, grads: Sequence[Any]) -> list[Any]:
        """``grads`` rescaled so their joint L2 norm is at most ``grad_clip_val`` (d2l 9.5's formula).

        d2l's TensorFlow signature (it takes and returns the gradients).
        ``tf.clip_by_global_norm`` computes the factor on the device, without
        d2l's Python ``if norm > clip`` (a host sync per step when eager, an
        error inside ``tf.function``); ``None`` gradients pass through.
        """
        return list(tf.clip_by_global_norm(list(grads), grad_clip_val)[0])

    def step_key(self) -> Any:
        """What of this trainer fixes a traced step (see ``TFStep.structure_key``); ``None``: no reuse.

        The data's layout is the step's to add (d2lx's loaders' batch sizes,
        or another loader's first batch).
        """
        methods = ("prepare_batch", "clip_gradients", "observing", "observe")
        if self._dp is not None or any(name in self.__dict__ for name in methods):
            return None
        optim = self.optim
        if isinstance(optim, tf.keras.optimizers.Optimizer):
            # Keras numbers instance names (sgd, sgd_1...); the name does not shape the step.
            config = sorted((k, v) for k, v in optim.get_config().items() if k != "name")
            optim_key: Any = (type(optim), repr(config))
        elif type(optim) is SGD:
            optim_key = (SGD, repr(sorted(optim.hparams.items())))
        else:
            return None
        return (optim_key, type(self), tuple(getattr(type(self), m) for m in methods), self.gradient_clip_val,
                self.check_finite, self.autograph, self.jit_compile, self.device)

    # -- checkpoints -------------------------------------------------------------------------
    def model_state(self) -> dict[str, np.ndarray]:
        """Every variable of the model (weights, batch statistics, seed states) as ``"<index>:<name>"``.

        By position and name, not by Keras' path: Keras numbers layers per
        instance (``dense_4/kernel``), so a fresh model's paths differ.
        """
        return {f"{i}:{_name(v)}": np.array(v.numpy()) for i, v in enumerate(state_variables(self.model))}

    def load_model_state(self, state: dict[str, np.ndarray]) -> None:
        variables = state_variables(self.model)
        values = _by_position("model", type(self.model).__name__, state, variables)
        for variable, value in zip(variables, values):
            variable.assign(value)

    def _slots(self) -> list[Any]:
        """A Keras optimizer's per-parameter state (momentum...): its variables but the step and the lr.

        The step counter is the run's step and the learning rate the model's
        ``lr``, both restored from the checkpoint's run description; saving
        only the slots makes plain SGD's state empty, as on every backend.
        """
        optim = self.optim
        variables = optimizer_variables(optim, self.model.trainable_variables, self.device)
        own = {id(optim.iterations), id(getattr(optim, "_learning_rate", None))}
        return [v for v in variables if id(v) not in own]

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """A Keras optimizer's slots as ``"<index>:<name>"`` (the hand-written SGD has none)."""
        if not isinstance(self.optim, tf.keras.optimizers.Optimizer):
            return {}
        return {f"{i}:{_name(v)}": np.array(v.numpy()) for i, v in enumerate(self._slots())}

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        optim = self.optim
        if not isinstance(optim, tf.keras.optimizers.Optimizer):
            if state:
                raise CheckpointError(f"the checkpoint holds optimizer state ({sorted(state)}) but "
                                      f"{type(optim).__name__} keeps none; resume with the same optimizer")
            return
        slots = self._slots()
        for variable, value in zip(slots, _by_position("optimizer", type(optim).__name__, state, slots)):
            variable.assign(value)

    def rng_state(self) -> dict[str, np.ndarray]:
        """TensorFlow's global ``tf.random.Generator``, if the program uses one.

        Keras' own random layers (dropout) keep their seed state in the model
        (:meth:`model_state`); ``tf.random.normal``'s op-level streams cannot
        be read back, so there is nothing else to save.
        """
        generator = _global_generator()
        return {} if generator is None else {"tf_global_generator": generator.state.numpy()}

    def load_rng_state(self, state: dict[str, np.ndarray]) -> None:
        saved = state.get("tf_global_generator")
        if saved is not None:
            generator = tf.random.get_global_generator()
            if tuple(generator.state.shape) == saved.shape:
                generator.state.assign(saved.astype(np.int64))
