"""The TensorFlow step: d2l's ``GradientTape`` step, compiled (XLA by default), guarded on the device.

How a step runs (and why):

* **XLA, as in Keras 3.** The compiled functions are ``tf.function(...,
  jit_compile=...)`` (``Trainer(jit_compile="auto")``): a small step runs in
  about half the time of a plain graph on a CPU. Where XLA cannot compile
  the reader's step (an op without an XLA kernel, e.g. ``tf.py_function``),
  ``"auto"`` falls back to the plain graph for the rest of the fit, with one
  warning. XLA compiles before it runs, so the failed call changed nothing:
  it is repeated with the plain function.
* **Static batch sizes for d2lx's own loader**, as XLA needs: full batches
  and the shorter last one (if any) are two functions (``train`` and
  ``train_tail``; ``val`` and ``val_tail``), each traced once. A call gets
  the epoch's device arrays (and shuffled order) and a batch index, and
  gathers its rows itself. Any other loader's batches go to one function
  with a ``None`` batch dimension (XLA compiles it once per batch shape).
* **No host sync per step.** Losses stay device values. For d2lx's own
  loaders, :meth:`TFStep.run_epoch` reads an epoch's losses and the guard's
  latch back in one transfer; for any other loader ``train`` returns a
  device scalar that the core reads once per epoch.
* **Stepwise and fused epochs.** The epoch's order is drawn with the
  loader's ``epoch_order()`` (the random stream is consumed exactly as
  iterating the loader consumes it); one call per batch, or with
  ``steps_per_execution > 1`` a ``tf.while_loop`` over a chunk of full
  batches (the last, shorter batch is its own call).
* **The guard, in the graph** (:class:`~d2lx.backends.tensorflow.module.GraphStep`):
  an update whose loss or resulting parameters are not finite, or that
  follows a refused step of the epoch, is undone by a ``tf.cond``, and the
  first refused step and its cause are latched in a variable.
* **Cheap calls, no retracing.** Calls skip TensorFlow's per-call Python
  (:func:`~d2lx.backends.tensorflow.compiled.flat_call`); compiled functions are
  reused by later fits of same-structure models on any loader
  (:class:`~d2lx.backends.tensorflow.compiled.Compiled`).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from d2lx.backends.tensorflow.compiled import Compiled, batch_spec, cached, chunk_of, index, keep, xla_cause
from d2lx.backends.tensorflow.models import optimizer_variables
from d2lx.backends.tensorflow.module import GraphStep, state_variables
from d2lx.loader import ArrayLoader, Batch
from d2lx.step import CAUSES, Divergence, EpochResult


def _layout(loader: ArrayLoader | None, spe: int) -> Any:
    """What of d2lx's loader shapes its functions: batch and tail sizes, fused chunk, order, arrays."""
    if loader is None:
        return None
    full, tail = divmod(loader.num_examples, loader.batch_size)
    return loader.batch_size, tail, chunk_of(full, spe), loader.shuffle, batch_spec(loader.tensors)


class TFStep(GraphStep):
    """:class:`d2lx.step.Step` for one TensorFlow fit (one device; ``distributed.py`` for several)."""

    host_guard = False
    #: Whether jit_compile="auto" means XLA for this step (the data-parallel one says no).
    auto_xla = True

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.model = trainer.model
        self.optim = trainer.optim
        self.check = bool(trainer.check_finite)
        self.variables = list(self.model.trainable_variables)
        optim_vars = optimizer_variables(self.optim, self.variables, trainer.device)
        with tf.device(trainer.device):
            self.guard = tf.Variable([-1, 0], dtype=tf.int64, trainable=False, name="d2lx_guard")
            self._reset = tf.constant([-1, 0], tf.int64)
            # What get_grads() returns: the gradients of the last applied update, kept on the device.
            self.slots = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name="d2lx_grad")
                          for v in self.variables]
        self.slot_of = {id(v): s for v, s in zip(self.variables, self.slots)}
        self.snapshot = [*state_variables(self.model), *optim_vars]
        self.first_step = trainer.train_batch_idx
        self.auto = trainer.jit_compile == "auto" and self.auto_xla  # XLA, or the plain graph if it fails
        self.jit = trainer.jit_compile is True or self.auto
        self.compiled: Compiled | None = None  # the epoch functions (d2lx's own loaders)
        self._epoch: tuple[Any, ArrayLoader, ArrayLoader | None, int] | None = None  # key, and to rebuild
        #: Traces made by this fit's functions, by function (zeros where an earlier fit's were reused).
        self.trace_counts = {"train": 0, "val": 0}
        self.functions: dict[str, Any] = {}  # any other loader's functions (one batch per call)
        self._calls: dict[str, Callable[..., Any]] = {}
        self._batch: dict[str, tuple[Compiled, Any]] = {}  # ... and their Compiled and signature
        self._hits: list[bool] = []
        self._count = 0  # steps of this epoch through train()
        self._ran = False

    @property
    def cache_hit(self) -> bool:
        """Whether every compiled function of this fit came from an earlier fit (nothing traced)."""
        return bool(self._hits) and all(self._hits)

    def state(self) -> list[Any]:
        """Every variable a compiled function reads or writes, in a fixed order (see :class:`Compiled`)."""
        return [*self.snapshot, self.guard, *self.slots]

    # -- the Step protocol -----------------------------------------------------------------
    def begin_epoch(self) -> None:
        self._count = 0
        if self.check:
            self.guard.assign(self._reset)

    def train(self, batch: Batch) -> tf.Tensor:
        call = self._calls.get("train") or self._batch_call("train", batch)
        self._ran = True
        self._count += 1
        i = index(self._count - 1)
        try:
            return call(batch, i)
        except tf.errors.OpError as error:  # XLA could not compile it (nothing ran), or a real error
            return self._batch_fallback("train", error, batch, i)

    def evaluate(self, batch: Batch) -> tf.Tensor:
        call = self._calls.get("val") or self._batch_call("val", batch)
        try:
            return call(batch)
        except tf.errors.OpError as error:
            return self._batch_fallback("val", error, batch)

    def divergence(self, end_of_epoch: bool = False) -> Divergence | None:
        return self._divergence(*self.guard.numpy()) if self.check else None

    def run_epoch(self, train: ArrayLoader, val: ArrayLoader | None, steps_per_execution: int
                  ) -> EpochResult:
        spe = steps_per_execution
        if self.compiled is None:
            key = self.structure_key("epoch", _layout(train, spe), _layout(val, spe))
            self._epoch = (key, train, val, spe)
            self.compiled = self._lookup(key, lambda: Compiled(
                self.epoch_functions(train, val, spe, self.jit), self.state(), key is not None, self.jit))
        self.compiled.bind(self.state())  # a no-op unless another fit used these functions since
        self._ran = True
        self.set_training(True)
        losses, keep_train, width = self._run("train", train, spe)
        if val is not None:
            self.set_training(False)
            val_losses, keep_val, val_width = self._run("val", val, spe)
            losses += val_losses
        with tf.device(self.trainer.device):  # one transfer: every loss of the epoch, then the latch
            flat = tf.cast(tf.concat(losses, 0) if spe > 1 else tf.stack(losses), tf.float64)
            if self.check:
                flat = tf.concat([flat, tf.cast(self.guard, tf.float64)], 0)
        host = flat.numpy()
        bad = self._divergence(*host[-2:].astype(np.int64)) if self.check else None
        # A fused call's vector has room for a whole chunk: keep_* are the positions of the steps.
        train_losses = host[:width] if keep_train is None else host[keep_train]
        if val is None:
            return EpochResult(train_losses, None, bad)
        val_losses = host[width:width + val_width] if keep_val is None else host[width + keep_val]
        return EpochResult(train_losses, val_losses, bad)

    def _run(self, what: str, loader: ArrayLoader, spe: int
             ) -> tuple[list[tf.Tensor], np.ndarray | None, int]:
        """One pass over ``loader``: the calls' outputs, the positions of the steps' losses in their
        concatenation (``None``: all of it, one per step) and its length."""
        order = loader.epoch_order()  # consumes the shuffle stream exactly as iteration does
        data: tuple[Any, ...] = (tuple(loader.tensors),)
        if loader.shuffle:
            assert order is not None
            data += (loader.ops.indices(order),)
        full, tail = divmod(loader.num_examples, loader.batch_size)
        chunk = chunk_of(full, spe)
        if not chunk:
            out = self._call_all(what, data, [(index(i),) for i in range(full)])
            out += self._call_all(f"{what}_tail", data, [(index(full),)] if tail else [])
            return out, None, len(out)
        starts = range(0, full, chunk)
        out = self._call_all(what, data, [(index(s), index(min(s + chunk, full))) for s in starts])
        steps = [k * chunk + j for k, s in enumerate(starts) for j in range(min(chunk, full - s))]
        if tail:  # the last batch's loss comes after the chunks' vectors
            steps.append(len(starts) * chunk)
            out += self._call_all(f"{what}_tail", data, [(index(full), index(full + 1))])
        return out, np.asarray(steps, np.int64), len(starts) * chunk + (1 if tail else 0)

    def _call_all(self, name: str, data: tuple[Any, ...], calls: list[tuple[tf.Tensor, ...]]
                  ) -> list[tf.Tensor]:
        """Function ``name`` on the epoch's ``data``, once per tuple of indices (see :meth:`_fall_back`)."""
        out: list[tf.Tensor] = []
        while calls:
            assert self.compiled is not None
            fn = self.compiled.caller(name, *data)
            try:
                for indices in calls[len(out):]:
                    out.append(fn(*indices))
                return out
            except tf.errors.OpError as error:
                self.compiled = self._epoch_fallback(error, name, data, calls[len(out)], out)
        return out

    def _epoch_fallback(self, error: Exception, name: str, data: tuple[Any, ...], failed: tuple[Any, ...],
                        out: list[tf.Tensor]) -> Compiled:
        assert self.compiled is not None and self._epoch is not None
        key, train, val, spe = self._epoch
        return self._fall_back(self.compiled, error, key, lambda: Compiled(
            self.epoch_functions(train, val, spe, False), self.state(), key is not None),
            lambda plain: out.append(plain.caller(name, *data)(*failed)))

    @staticmethod
    def _divergence(bad: int, cause: int) -> Divergence | None:
        return None if bad < 0 else Divergence(int(bad), CAUSES[int(cause)])

    # -- compiled functions: reused, or built; XLA, or the plain graph -------------------------
    def _lookup(self, key: Any, build: Callable[[], Compiled]) -> Compiled:
        compiled, hit = cached(key, build)
        self._hits.append(hit)
        for name in compiled.fns:
            self.trace_counts.setdefault(name, 0)
        if hit and compiled.fallback is not None:
            self._warn(compiled.fallback)  # this fit, too, runs without XLA
        return compiled

    def _batch_call(self, what: str, batch: Batch) -> Callable[..., Any]:
        """``train``/``val`` for any other loader, its signature the first batch's (reused by structure)."""
        spec = batch_spec(batch)
        key = self.structure_key(what, spec)
        return self._use(what, spec, self._lookup(key, lambda: Compiled(
            {what: self.batch_function(what, spec, self.jit)}, self.state(), key is not None, self.jit)))

    def batch_function(self, what: str, spec: Any, jit: bool) -> Any:
        """``train`` ``(batch, i)`` or ``val`` ``(batch)`` for any other loader (held weakly, see
        :meth:`GraphStep.epoch_functions`)."""
        counts, step, train = self.trace_counts, weakref.proxy(self), what == "train"

        def one(batch: Batch, *i: tf.Tensor) -> tf.Tensor:
            counts[what] = counts.get(what, 0) + 1  # a Python side effect: it runs only while tracing
            step.set_training(train)
            return step._train_one(batch, i[0]) if train else step._val_one(batch)

        signature = [spec, *[tf.TensorSpec((), tf.int64)] * train]
        return tf.function(one, input_signature=signature, autograph=self.trainer.autograph, jit_compile=jit)

    def _use(self, what: str, spec: Any, compiled: Compiled) -> Callable[..., Any]:
        compiled.bind(self.state())
        self.functions[what], self._batch[what] = compiled.fns[what], (compiled, spec)
        call = self._calls[what] = compiled.batch_caller(what, spec, self.state())
        return call

    def _batch_fallback(self, what: str, error: Exception, *args: Any) -> tf.Tensor:
        compiled, spec = self._batch[what]
        key, out = self.structure_key(what, spec), []
        plain = self._fall_back(compiled, error, key, lambda: Compiled(
            {what: self.batch_function(what, spec, False)}, self.state(), key is not None),
            lambda plain: out.append(plain.batch_caller(what, spec, self.state())(*args)))
        self._use(what, spec, plain)
        return out[0]

    def _fall_back(self, compiled: Compiled, error: Exception, key: Any, build: Callable[[], Compiled],
                   retry: Callable[[Compiled], None]) -> Compiled:
        """The plain-graph functions to use after ``error`` from ``compiled`` (else ``error`` is raised).

        Only under ``jit_compile="auto"`` and only from XLA functions: XLA
        compiles before it runs, so the failed call changed no variable and
        is repeated (``retry``) with the plain graph, whose own error, if
        any, is the one raised. Then the plain functions serve the rest of
        this fit and later fits of the structure; one warning says why.
        """
        if not compiled.jit:
            raise error
        if not self.auto:
            error.add_note("d2lx: this step is compiled with XLA (Trainer(jit_compile=True)); if XLA cannot "
                           "compile an op of your step, use jit_compile='auto' or False")
            raise error
        plain = build()
        retry(plain)
        plain.fallback, self.jit = xla_cause(error), False
        keep(key, plain)
        self._warn(plain.fallback)
        return plain

    @staticmethod
    def _warn(cause: str) -> None:
        warnings.warn(f"XLA cannot compile this training step ({cause}); d2lx runs it as a plain TensorFlow "
                      "graph for the rest of the fit (same results, slower). Trainer(jit_compile=False) "
                      "skips XLA and silences this warning", UserWarning, stacklevel=2)

    def structure_key(self, *parts: Any) -> Any:
        """What fixes a traced graph: the model's ``compile_key()``, the trainer's ``step_key()``, the
        variables' shapes and ``parts`` (which functions, for what data); ``None`` (no reuse) where
        the model or the trainer cannot tell, or for several devices."""
        model_key = getattr(self.model, "compile_key", lambda: None)()
        trainer_key = self.trainer.step_key()
        if model_key is None or trainer_key is None or type(self) is not TFStep:
            return None
        shapes = tuple((tuple(v.shape), tf.as_dtype(v.dtype).name) for v in self.state())
        return model_key, trainer_key, shapes, parts

    # -- what get_grads() reads -------------------------------------------------------------
    def applied_gradients(self, variables: Sequence[Any]) -> list[np.ndarray] | None:
        """The gradients the last applied update used for ``variables`` (``None`` before any)."""
        if not self._ran or self.trainer.train_batch_idx <= self.first_step:
            return None
        if not all(id(v) in self.slot_of for v in variables):
            return None  # another model's variables (the trainer has fitted another since)
        return [self.slot_of[id(v)].numpy() for v in variables]
