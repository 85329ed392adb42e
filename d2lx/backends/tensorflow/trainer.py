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

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from d2lx.backends.tensorflow.ops import TFOps
from d2lx.data import ArrayLoader, DataModule
from d2lx.devices import DeviceSpec, gpu_unavailable
from d2lx.errors import ArgumentTypeError, CheckpointError
from d2lx.history import History
from d2lx.trainer import TrainerBase


def _batch_spec(tensors: Sequence[Any]) -> tuple[tf.TensorSpec, ...]:
    """Signature of one batch of ``tensors``: the arrays' shapes with a ``None`` batch dimension."""
    return tuple(tf.TensorSpec((None, *t.shape[1:]), t.dtype) for t in tensors)


def _batch_sizes(num_examples: int, batch_size: int, start: int, stop: int) -> list[int]:
    """Sizes of batches ``start..stop-1`` of an epoch (the last one may be shorter)."""
    return [min(batch_size, num_examples - k * batch_size) for k in range(start, stop)]


class _Compiled:
    """The compiled functions of one ``fit`` (one model, optimizer, pair of loaders).

    The ``tf.function`` s are kept (their tracing counts are what tests and
    users inspect); calls go to their single concrete function, fetched once,
    which skips ``tf.function``'s per-call signature matching (a few ms per
    call on a small CPU, i.e. most of a small model's step time).
    """

    def __init__(self, key: tuple[int, ...], train_step: Any, val_step: Any,
                 train_many: Any, val_many: Any) -> None:
        self.key = key
        self.train_step = train_step
        self.val_step = val_step
        self.train_many = train_many
        self.val_many = val_many
        self._concrete: dict[str, Any] = {}

    def concrete(self, name: str) -> Any:
        """The one concrete function of ``name`` (traced on first request)."""
        fn = self._concrete.get(name)
        if fn is None:
            fn = self._concrete[name] = getattr(self, name).get_concrete_function()
        return fn


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

    def __init__(
        self,
        max_epochs: int,
        num_gpus: int = 0,
        gradient_clip_val: float = 0,
        *,
        device: str | None = None,
        steps_per_execution: int = 1,
        progress: bool | None = None,
        plot: str | Path | None = None,
        check_finite: bool = True,
        callbacks: Sequence[Callable[[TrainerBase], None]] = (),
        allow_tf32: bool = False,
    ) -> None:
        if not isinstance(allow_tf32, bool):
            raise ArgumentTypeError(f"allow_tf32 must be True or False, got {allow_tf32!r}")
        self.allow_tf32 = allow_tf32
        super().__init__(max_epochs, num_gpus, gradient_clip_val, device=device,
                         steps_per_execution=steps_per_execution, progress=progress, plot=plot,
                         check_finite=check_finite, callbacks=callbacks)
        self.trace_counts: dict[str, int] = {"train": 0, "val": 0}
        self._capture: list[Any] | None = None
        self._compiled: _Compiled | None = None
        self._step: tf.Variable | None = None
        self._bad_step: tf.Variable | None = None

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
        materialize = getattr(model, "materialize", None)
        if materialize is None:
            raise ArgumentTypeError(
                f"{type(model).__name__} is not a d2lx TensorFlow Module; subclass "
                "d2lx.tensorflow.Module (a tf.keras.Model) for your model"
            )
        materialize(num_inputs, self.device)

    def _losses_to_host(self, values: list[Any]) -> np.ndarray:
        with tf.device(self.device):
            stacked = tf.stack([tf.reshape(tf.cast(v, tf.float32), []) for v in values])
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
    def fit(self, model: Any, data: DataModule) -> History:
        """Train ``model`` on ``data``; every array op runs under ``tf.device``."""
        self._compiled = None
        self.trace_counts = {"train": 0, "val": 0}
        if self.device_spec.kind == "gpu":
            tf.config.experimental.enable_tensor_float_32_execution(self.allow_tf32)
        with tf.device(self.device):
            return super().fit(model, data)

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
        norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, tf.float32))) for g in dense]))
        scale = tf.minimum(tf.constant(1.0, tf.float32), tf.cast(grad_clip_val, tf.float32) / norm)
        return [g * tf.cast(scale, g.dtype) for g in dense]

    def fit_epoch(self) -> None:
        """One epoch: compiled steps over the training set, then the validation set."""
        with tf.device(self.device):
            compiled = self._ensure_compiled()
            if self.steps_per_execution > 1:
                self._fused_epoch(compiled)
            else:
                self._stepwise_epoch(compiled)

    # -- the epoch loops ------------------------------------------------------------------
    def _stepwise_epoch(self, compiled: _Compiled) -> None:
        """d2l's loop: iterate the loader, one compiled call per batch."""
        train_step = compiled.concrete("train_step")
        for batch in self.train_dataloader:
            loss = train_step(*batch)
            self._train_meter.add(loss, int(batch[-1].shape[0]))
            self.train_batch_idx += 1
        self._raise_if_diverged()  # one host read per epoch
        if self.val_dataloader is None:
            return
        val_step = compiled.concrete("val_step")
        for batch in self.val_dataloader:
            loss = val_step(*batch)
            self._val_meter.add(loss, int(batch[-1].shape[0]))
            self.val_batch_idx += 1

    def _fused_epoch(self, compiled: _Compiled) -> None:
        """``steps_per_execution`` steps per compiled call over the epoch's device arrays."""
        loader = self.train_dataloader
        tensors = loader.epoch_tensors()  # draws the order exactly as iteration would
        self._run_fused(compiled.concrete("train_many"), loader, tensors, self._train_meter, train=True)
        if self.val_dataloader is not None:
            val = self.val_dataloader
            self._run_fused(compiled.concrete("val_many"), val, val.epoch_tensors(), self._val_meter,
                            train=False)

    def _run_fused(self, fn: Any, loader: ArrayLoader, tensors: tuple[Any, ...], meter: Any,
                   train: bool) -> None:
        num_batches = len(loader)
        for start in range(0, num_batches, self.steps_per_execution):
            stop = min(start + self.steps_per_execution, num_batches)
            losses = fn(tuple(tensors), tf.constant(start, tf.int64), tf.constant(stop, tf.int64))
            sizes = _batch_sizes(loader.num_examples, loader.batch_size, start, stop)
            for loss, size in zip(tf.unstack(losses, num=stop - start), sizes):  # one op, no sync
                meter.add(loss, size)
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
    def _ensure_compiled(self) -> _Compiled:
        key = (id(self.model), id(self.optim), id(self.train_dataloader), id(self.val_dataloader))
        if self._compiled is not None and self._compiled.key == key:
            return self._compiled
        self._build_optimizer()
        self._step = tf.Variable(self.train_batch_idx, dtype=tf.int64, trainable=False, name="step")
        self._bad_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="first_bad_step")

        train_spec = _batch_spec(self.train_dataloader.tensors)
        val_loader = self.val_dataloader
        val_spec = train_spec if val_loader is None else _batch_spec(val_loader.tensors)
        index = tf.TensorSpec((), tf.int64)

        def train_step(*batch: Any) -> tf.Tensor:
            self.trace_counts["train"] += 1  # Python side effect: runs only while tracing
            return self._train_one(batch)

        def val_step(*batch: Any) -> tf.Tensor:
            self.trace_counts["val"] += 1
            return self._val_one(batch)

        train_bs = self.train_dataloader.batch_size
        val_bs = train_bs if val_loader is None else val_loader.batch_size

        def train_many(tensors: tuple[Any, ...], start: tf.Tensor, stop: tf.Tensor) -> tf.Tensor:
            self.trace_counts["train"] += 1
            return self._loop(self._train_one, tensors, start, stop, train_bs)

        def val_many(tensors: tuple[Any, ...], start: tf.Tensor, stop: tf.Tensor) -> tf.Tensor:
            self.trace_counts["val"] += 1
            return self._loop(self._val_one, tensors, start, stop, val_bs)

        ag = self.autograph
        self._compiled = _Compiled(
            key,
            tf.function(train_step, input_signature=list(train_spec), autograph=ag),
            tf.function(val_step, input_signature=list(val_spec), autograph=ag),
            tf.function(train_many, input_signature=[train_spec, index, index], autograph=ag),
            tf.function(val_many, input_signature=[val_spec, index, index], autograph=ag),
        )
        return self._compiled

    @staticmethod
    def _loop(step: Callable[[tuple[Any, ...]], tf.Tensor], tensors: tuple[Any, ...],
              start: tf.Tensor, stop: tf.Tensor, batch_size: int) -> tf.Tensor:
        """Run ``step`` on batches ``start..stop-1`` of ``tensors``; return their losses."""
        n = tf.shape(tensors[0], out_type=tf.int64)[0]
        bs = tf.constant(batch_size, tf.int64)
        losses = tf.TensorArray(tf.float32, size=tf.cast(stop - start, tf.int32))

        def body(i: tf.Tensor, losses: tf.TensorArray) -> tuple[tf.Tensor, tf.TensorArray]:
            lo = i * bs
            hi = tf.minimum(lo + bs, n)
            loss = step(tuple(t[lo:hi] for t in tensors))
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

    def _train_one(self, batch: tuple[Any, ...]) -> tf.Tensor:
        """One optimizer step, traced: tape, gradients, optional clipping, guarded update."""
        assert self._step is not None and self._bad_step is not None
        batch = self.prepare_batch(batch)
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            loss = self._captured(self.model.training_step, batch, "training_step")
        grads = tape.gradient(loss, variables)
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        if self.gradient_clip_val > 0 and pairs:
            clipped = self.clip_gradients(self.gradient_clip_val, [g for g, _ in pairs])
            pairs = list(zip(clipped, [v for _, v in pairs]))
        if self.check_finite:
            bad_step, step = self._bad_step, self._step
            ok = tf.logical_and(tf.reduce_all(tf.math.is_finite(loss)), bad_step < 0)

            def apply() -> tf.Tensor:
                self.optim.apply_gradients(pairs)
                return tf.constant(True)

            def latch() -> tf.Tensor:  # keep the first bad step; skip this and every later update
                bad_step.assign(tf.where(bad_step < 0, step.read_value(), bad_step.read_value()))
                return tf.constant(False)

            tf.cond(ok, apply, latch)
        else:
            self.optim.apply_gradients(pairs)
        self._step.assign_add(1)
        return tf.reshape(tf.cast(loss, tf.float32), [])

    def _val_one(self, batch: tuple[Any, ...]) -> tf.Tensor:
        batch = self.prepare_batch(batch)
        loss = self._captured(self.model.validation_step, batch, "validation_step")
        return tf.reshape(tf.cast(loss, tf.float32), [])
