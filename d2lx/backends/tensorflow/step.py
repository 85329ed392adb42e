"""The TensorFlow step: d2l's ``GradientTape`` step, compiled with ``tf.function``, guarded on the device.

How a step runs (and why):

* **One trace per fit.** Each compiled function has an ``input_signature``
  with a ``None`` batch dimension, so full batches and the shorter last one
  share one graph; calls go to its concrete function, fetched once, which
  skips ``tf.function``'s per-call signature matching.
* **No host sync per step.** Losses stay device values. For d2lx's own
  loaders, :meth:`TFStep.run_epoch` reads an epoch's training and validation
  losses and the guard's latch back in one transfer; for any other loader
  ``train`` returns a device scalar that the core reads once per epoch.
* **Stepwise and fused epochs.** The epoch's order is drawn with the
  loader's ``epoch_order()`` (the random stream is consumed exactly as
  iterating the loader consumes it) and goes in as a device vector; a
  compiled call gathers its batch's rows of the device-resident arrays
  itself: one call per batch *index*, or with ``steps_per_execution > 1``
  a ``tf.while_loop`` over a chunk of indices.
* **The guard, in the graph.** An update is kept only if its loss is finite,
  the parameters it produced are finite and no earlier step of the epoch
  was refused; otherwise a ``tf.cond`` assigns back the values read before
  the step, and the first refused step and its cause are latched in a
  variable that the host reads once per epoch.
* **Compiled steps are reused across fits** of same-structure models (see
  :class:`~d2lx.backends.tensorflow.ops.Compiled`): a reader's second
  ``fit`` of a fresh model does not trace.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from d2lx.backends.tensorflow.models import optimizer_variables
from d2lx.backends.tensorflow.module import state_variables
from d2lx.backends.tensorflow.ops import (
    Compiled,
    all_finite,
    batch_at,
    batch_spec,
    index,
    loss_scalar,
    tf_variable,
)
from d2lx.loader import ArrayLoader, Batch
from d2lx.step import CAUSES, Divergence, EpochResult, step_loss

#: The latch's cause codes (indices of CAUSES); made into tensors only inside a trace, since an
#: eager tensor at import would start TensorFlow's runtime (see LinearRegressionScratch).
_LOSS, _PARAMETERS, _DATA = (CAUSES.index(c) for c in ("loss", "parameters", "data"))


#: Compiled epoch functions by step structure (see TFStep.structure_key); a few recent ones.
_CACHE: OrderedDict[Any, Compiled] = OrderedDict()
_CACHE_SIZE = 16


class TFStep:
    """:class:`d2lx.step.Step` for one TensorFlow fit (one device; ``distributed.py`` for several)."""

    host_guard = False

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.model = trainer.model
        self.optim = trainer.optim
        self.check = bool(trainer.check_finite)
        self.variables = list(self.model.trainable_variables)
        optim_vars = optimizer_variables(self.optim, self.variables, trainer.device)
        with tf.device(trainer.device):
            # The latch: (first refused step of the epoch or -1, its cause as an index of CAUSES).
            self.guard = tf.Variable([-1, 0], dtype=tf.int64, trainable=False, name="d2lx_guard")
            self._reset = tf.constant([-1, 0], tf.int64)
            # What get_grads() returns: the gradients of the last applied update, kept on the device.
            self.slots = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name="d2lx_grad")
                          for v in self.variables]
        self._slot_of = {id(v): s for v, s in zip(self.variables, self.slots)}
        self.snapshot = [*state_variables(self.model), *optim_vars]  # what a refused step gets back
        self.first_step = trainer.train_batch_idx
        self.compiled: Compiled | None = None
        self.cache_hit = False
        #: Traces made by this fit's functions ({"train": 1, "val": 1} for a healthy fit; 0 on reuse).
        self.trace_counts = {"train": 0, "val": 0}
        self.functions: dict[str, Any] = {}  # any other loader's functions (one batch per call)
        self._concrete: dict[str, Any] = {}
        self._count = 0  # steps of this epoch through train()
        self._ran = False

    def state(self) -> list[Any]:
        """Every variable a compiled function reads or writes, in a fixed order (see :class:`Compiled`)."""
        return [*self.snapshot, self.guard, *self.slots]

    # -- the Step protocol -----------------------------------------------------------------
    def begin_epoch(self) -> None:
        self._count = 0
        if self.check:
            self.guard.assign(self._reset)

    def set_training(self, mode: bool) -> None:
        self.model.training = mode  # what d2l's TensorFlow models read (dropout...)

    def train(self, batch: Batch) -> tf.Tensor:
        fn = self._concrete.get("train") or self._batch_function("train", batch)
        self._ran = True
        self._count += 1
        return fn(tuple(batch), index(self._count - 1))

    def evaluate(self, batch: Batch) -> tf.Tensor:
        fn = self._concrete.get("val") or self._batch_function("val", batch)
        return fn(tuple(batch))

    def divergence(self, end_of_epoch: bool = False) -> Divergence | None:
        return self._divergence(*self.guard.numpy()) if self.check else None

    def run_epoch(self, train: ArrayLoader, val: ArrayLoader | None, steps_per_execution: int
                  ) -> EpochResult:
        fused = steps_per_execution > 1
        if self.compiled is None:
            self._compile(train, val, fused)
        assert self.compiled is not None
        self.compiled.bind(self.state())  # a no-op unless another fit used these functions since
        self._ran = True
        self.set_training(True)
        losses = self._run(self.compiled.caller("train"), train, steps_per_execution, fused)
        if val is not None:
            self.set_training(False)
            losses += self._run(self.compiled.caller("val"), val, steps_per_execution, fused)
        with tf.device(self.trainer.device):  # one transfer: every loss of the epoch, then the latch
            flat = tf.cast(tf.concat(losses, 0) if fused else tf.stack(losses), tf.float64)
            if self.check:
                flat = tf.concat([flat, tf.cast(self.guard, tf.float64)], 0)
        host = flat.numpy()
        n = len(train)
        bad = self._divergence(*host[-2:].astype(np.int64)) if self.check else None
        return EpochResult(host[:n], host[n:len(host) - 2 * self.check] if val is not None else None, bad)

    @staticmethod
    def _run(fn: Any, loader: ArrayLoader, spe: int, fused: bool) -> list[tf.Tensor]:
        """Every step of one pass over ``loader``; a shuffled one's order goes in as a device vector."""
        order = loader.epoch_order()  # consumes the shuffle stream exactly as iteration does
        data: tuple[Any, ...] = (tuple(loader.tensors),)
        if loader.shuffle:
            assert order is not None
            data += (loader.ops.indices(order),)
        n = len(loader)
        if not fused:
            return [fn(*data, index(i)) for i in range(n)]
        return [fn(*data, index(s), index(min(s + spe, n))) for s in range(0, n, spe)]

    @staticmethod
    def _divergence(bad: int, cause: int) -> Divergence | None:
        return None if bad < 0 else Divergence(int(bad), CAUSES[int(cause)])

    # -- what get_grads() reads -------------------------------------------------------------
    def applied_gradients(self, variables: Sequence[Any]) -> list[np.ndarray] | None:
        """The gradients the last applied update used for ``variables`` (``None`` before any)."""
        if not self._ran or self.trainer.train_batch_idx <= self.first_step:
            return None
        if not all(id(v) in self._slot_of for v in variables):
            return None  # another model's variables (the trainer has fitted another since)
        return [self._slot_of[id(v)].numpy() for v in variables]

    # -- the traced body --------------------------------------------------------------------
    def _step_loss(self, fn: Callable[[Batch], Any], batch: Batch, what: str) -> Any:
        """What the step returned, else the loss it plotted (other plotted keys are symbolic: dropped)."""
        with self.trainer.observing(draw_extras=False) as seen:
            return step_loss(fn(batch), seen, what)

    def _loss_and_grads(self, batch: Batch, weight: tf.Tensor | None = None) -> tuple[Any, list[Any]]:
        """``training_step`` under a ``GradientTape`` (its loss times ``weight``, if given)."""
        with tf.GradientTape() as tape:
            loss = self._step_loss(self.model.training_step, batch, "training_step")
            if weight is not None:
                loss = loss * tf.cast(weight, loss.dtype)
        return loss, list(tape.gradient(loss, self.variables))

    def _gradients(self, batch: Batch) -> tuple[Any, list[Any]]:
        """The batch's loss and one gradient per trainable variable (``None`` where it gets none)."""
        return self._loss_and_grads(batch)

    def _apply(self, pairs: list[tuple[Any, Any]]) -> None:
        self.optim.apply_gradients(pairs)

    def _commit(self, pairs: list[tuple[Any, Any]]) -> tf.Tensor:
        for g, v in pairs:
            self._slot_of[id(v)].assign(tf.convert_to_tensor(g))
        return tf.constant(True)

    def _train_one(self, batch: Batch, i: tf.Tensor) -> tf.Tensor:
        """One optimizer step, traced: tape, gradients, optional clipping, guarded update.

        The guard is one ``tf.cond`` after the update: it is kept if the
        loss and the parameters it produced are finite and nothing was
        refused earlier in the epoch; otherwise every variable of the model
        and the optimizer gets back the value read before the step, and the
        first refused step and its cause are latched. (Updating and undoing
        costs nothing on the common path, unlike a second ``tf.cond``.)
        """
        saved = [tf.identity(tf_variable(v)) for v in self.snapshot] if self.check else []
        loss, grads = self._gradients(batch)
        pairs = [(g, v) for g, v in zip(grads, self.variables) if g is not None]
        clip = self.trainer.gradient_clip_val
        if clip > 0 and pairs:
            clipped = self.trainer.clip_gradients(clip, [g for g, _ in pairs])
            pairs = list(zip(clipped, [v for _, v in pairs]))
        self._apply(pairs)
        if not self.check:
            self._commit(pairs)
            return loss_scalar(loss, "training_step")
        guard, latched = self.guard, self.guard.read_value()

        def refuse() -> tf.Tensor:
            for v, value in zip(self.snapshot, saved):
                v.assign(value)
            codes = tf.constant([_DATA, _LOSS, _PARAMETERS], tf.int64)
            cause = tf.where(all_finite(batch), tf.where(all_finite([loss]), codes[2], codes[1]), codes[0])
            guard.assign(tf.where(latched[0] < 0, tf.stack([i, cause]), latched))
            return tf.constant(False)

        ok = tf.logical_and(all_finite([loss, *self.variables]), latched[0] < 0)
        tf.cond(ok, lambda: self._commit(pairs), refuse)
        return loss_scalar(loss, "training_step")

    def _val_one(self, batch: Batch) -> tf.Tensor:
        return loss_scalar(self._step_loss(self.model.validation_step, batch, "validation_step"),
                           "validation_step")

    # -- building the compiled functions ----------------------------------------------------
    def _batch_function(self, what: str, batch: Batch) -> Any:
        """``train``/``val`` for any other loader: one batch per call, traced from the first batch."""
        counts, train = self.trace_counts, what == "train"

        def one(batch: Batch, *i: tf.Tensor) -> tf.Tensor:
            counts[what] += 1  # a Python side effect: it runs only while tracing
            self.set_training(train)
            return self._train_one(batch, i[0]) if train else self._val_one(batch)

        signature = [batch_spec(batch), *[tf.TensorSpec((), tf.int64)] * train]
        fn = self.functions[what] = tf.function(one, input_signature=signature,
                                                autograph=self.trainer.autograph)
        concrete = self._concrete[what] = fn.get_concrete_function()
        return concrete

    def _epoch_functions(self, train: ArrayLoader, val: ArrayLoader | None, fused: bool) -> dict[str, Any]:
        """An epoch's functions: ``(tensors, i)`` (one step), or fused ``(tensors, start, stop)``.

        They hold this step weakly: the cache outlives the fit, and a strong
        reference would keep its trainer, and so its data set, alive. The
        functions are traced here, once; a traced graph needs no Python.
        """
        counts, step = self.trace_counts, weakref.proxy(self)

        def make(loader: ArrayLoader, what: str) -> Any:
            spec, size, training = batch_spec(loader.tensors), loader.batch_size, what == "train"
            shuffled = loader.shuffle

            def one(tensors: tuple[Any, ...], order: Any, i: tf.Tensor) -> tf.Tensor:
                batch = step.trainer.prepare_batch(batch_at(tensors, order, i, size))
                return step._train_one(batch, i) if training else step._val_one(batch)

            def fn(tensors: tuple[Any, ...], *args: tf.Tensor) -> tf.Tensor:
                counts[what] += 1
                step.set_training(training)
                order, (start, *stop) = (args[0], args[1:]) if shuffled else (None, args)
                if not fused:
                    return one(tensors, order, start)
                out = tf.TensorArray(tf.float32, size=tf.cast(stop[0] - start, tf.int32))

                def body(i: tf.Tensor, out: tf.TensorArray) -> tuple[tf.Tensor, tf.TensorArray]:
                    return i + 1, out.write(tf.cast(i - start, tf.int32), one(tensors, order, i))

                # parallel_iterations=1: each step reads the parameters the previous one wrote.
                _, out = tf.while_loop(lambda i, _: i < stop[0], body, (start, out), parallel_iterations=1)
                return out.stack()

            signature = [spec, *([tf.TensorSpec((None,), tf.int64)] if shuffled else []),
                         *[tf.TensorSpec((), tf.int64)] * (1 + fused)]
            return tf.function(fn, input_signature=signature, autograph=self.trainer.autograph)

        return {"train": make(train, "train"), **({} if val is None else {"val": make(val, "val")})}

    def _compile(self, train: ArrayLoader, val: ArrayLoader | None, fused: bool) -> None:
        key = self.structure_key()
        cached = _CACHE.get(key) if key is not None else None
        if cached is not None:
            _CACHE.move_to_end(key)
            self.compiled, self.cache_hit = cached, True
            return
        self.compiled = Compiled(self._epoch_functions(train, val, fused), self.state(), key is not None)
        if key is not None and self.compiled.rebindable:
            _CACHE[key] = self.compiled
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)

    def structure_key(self) -> Any:
        """What fixes the traced graph: the model's ``compile_key()``, the trainer's ``step_key()``,
        the variables' shapes; ``None`` (no reuse) where either cannot tell, or for several devices."""
        model_key = getattr(self.model, "compile_key", lambda: None)()
        trainer_key = self.trainer.step_key()
        if model_key is None or trainer_key is None or type(self) is not TFStep:
            return None
        shapes = tuple((tuple(v.shape), tf.as_dtype(v.dtype).name) for v in self.state())
        return model_key, trainer_key, shapes
