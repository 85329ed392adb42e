"""``d2l.Module`` for TensorFlow: a ``tf.keras.Model`` with d2l's methods.

Two Keras 3 behaviours would break d2l code written for this class, and this
module neutralises both:

* **Keras shadows ``loss``.** ``keras.Model.__init__`` (through Keras'
  ``Trainer.__init__``) runs ``self.loss = None``, and ``compile(loss=...)``
  writes ``self.loss`` again. An *instance* attribute beats a method defined
  on the class, so d2l's ``loss(self, y_hat, y)`` -- whether written in the
  class body or attached later with ``add_to_class`` -- would be hidden
  behind ``None`` ("'NoneType' object is not callable"). This is why d2l
  1.0.3's own TensorFlow chapter fails on TF 2.16+. :meth:`Module.__setattr__`
  keeps Keras' bookkeeping value in ``_keras_loss`` instead, so the class's
  ``loss`` method always wins. (Keras only ever *writes* ``self.loss``; it
  reads the compiled loss from ``_compile_loss``, so ``compile``/``fit``
  still work.) A callable a user assigns to ``self.loss`` on purpose is kept
  as given.
* **Keras 3 does not track raw ``tf.Variable`` attributes.** d2l's TensorFlow
  scratch model stores ``self.w = tf.Variable(...)`` and its trainer
  differentiates ``model.trainable_variables``; in Keras 3 that list only
  holds Keras variables, so the model would silently not train.
  :class:`Module` records such variables and adds them to
  ``trainable_variables``/``trainable_weights`` (and :func:`state_variables`).

:class:`GraphStep` is what a compiled step traces from a module: its
``training_step`` under a ``GradientTape``, clipping, the guarded update, and
the ``tf.function`` s around them (run by :mod:`d2lx.backends.tensorflow.step`).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from d2lx.backends.tensorflow import compiled
from d2lx.backends.tensorflow.ops import tf_variable
from d2lx.errors import InvalidArgumentError
from d2lx.loader import ArrayLoader, Batch
from d2lx.module import ModuleBase
from d2lx.step import CAUSES, step_loss

#: The latch's cause codes (indices of CAUSES); made into tensors only inside a trace, since an
#: eager tensor at import would start TensorFlow's runtime (see LinearRegressionScratch).
_LOSS, _PARAMETERS, _DATA = (CAUSES.index(c) for c in ("loss", "parameters", "data"))

#: Where Keras' own ``self.loss`` value (``None`` or a ``compile`` spec) is kept.
KERAS_LOSS_ATTR = "_keras_loss"


def state_variables(model: Any) -> list[Any]:
    """Every variable of ``model``'s state, in a fixed order: raw ``tf.Variable`` s, then Keras'.

    Keras' list holds weights (trainable or not: batch statistics) and the
    seed generators' states (dropout); the raw ones are d2l's scratch
    ``self.w = tf.Variable(...)``.
    """
    raw = model._raw_variables() if isinstance(model, Module) else []
    found, seen = [], set()
    for v in [*raw, *model.variables]:
        if id(v) not in seen:
            seen.add(id(v))
            found.append(v)
    return found


class Module(ModuleBase, tf.keras.Model):
    """Base class of models: ``tf.keras.Model`` + d2l's ``training_step``, ``plot``, ``board``...

    As in d2l, ``call`` forwards to :meth:`forward` (whose default runs
    ``self.net``) and ``self.training`` says whether the model trains (the
    trainer sets it; d2l's dropout code reads it).
    """

    def __init__(self, plot_train_per_epoch: int = 2, plot_valid_per_epoch: int = 1) -> None:
        tf.keras.Model.__init__(self)
        self.save_hyperparameters()
        self.training: bool | None = None

    # -- the two Keras 3 traps (see the module docstring) --------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if name == "loss" and (value is None or not callable(value)
                               or self.__dict__.get("_d2lx_in_compile", False)):
            name = KERAS_LOSS_ATTR
        elif isinstance(value, tf.Variable) and not name.startswith("_"):
            self.__dict__.setdefault("_d2lx_tf_variables", {})[name] = value
        super().__setattr__(name, value)

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """Keras' ``compile``; its ``self.loss = ...`` write goes to ``_keras_loss``."""
        self.__dict__["_d2lx_in_compile"] = True
        try:
            super().compile(*args, **kwargs)
        finally:
            self.__dict__["_d2lx_in_compile"] = False

    def _raw_variables(self) -> list[tf.Variable]:
        raw = self.__dict__.get("_d2lx_tf_variables", {})
        # Only those still bound to their attribute (a re-assigned name drops the old one).
        return [v for k, v in raw.items() if self.__dict__.get(k) is v]

    @property
    def trainable_variables(self) -> list[Any]:
        """Keras' trainable variables plus trainable raw ``tf.Variable`` attributes."""
        keras_vars = list(super().trainable_variables)
        seen = {id(v) for v in keras_vars}
        return [v for v in self._raw_variables() if v.trainable and id(v) not in seen] + keras_vars

    @property
    def trainable_weights(self) -> list[Any]:
        return self.trainable_variables

    # -- d2l's surface -----------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Keras' call, told ``training=self.training`` when the caller does not say.

        d2l's TensorFlow code says the mode with ``model.training = True`` (its
        ``fit_epoch``; d2lx's step through ``set_training``); Keras' own layers
        (dropout, batch norm) learn it only from a ``training`` argument.
        """
        if "training" not in kwargs and isinstance(self.__dict__.get("training"), bool):
            kwargs["training"] = self.training
        return super().__call__(*args, **kwargs)

    def call(self, X: Any, *args: Any, training: bool | None = None, **kwargs: Any) -> Any:
        """Keras' entry point (d2l's): a ``training`` value is kept in ``self.training``; then ``forward``."""
        if training is not None:
            self.training = training
        return self.forward(X, *args, **kwargs)

    def materialize(self, example: Sequence[Any], device: str | None) -> None:
        """Build lazy Keras layers on ``device`` from a real batch (its inputs' shapes).

        Keras infers a layer's width at its first call; doing that here,
        eagerly and under ``tf.device``, keeps variable creation out of the
        compiled step and puts the variables on the device. Under a
        ``tf.distribute`` strategy (``Trainer(devices=N)``) the variables must
        be created in its scope to be mirrored; Keras variables cannot be
        re-created, so a model built outside it is refused.
        """
        if any(not layer.built for layer in self._flatten_layers(include_self=False)):
            with tf.device(device), warnings.catch_warnings():
                # Keras warns that a model without build() "may have unbuilt state": d2l's models
                # build their layers in their first call, which is this one.
                warnings.filterwarnings("ignore", message=r".*does not have a `build\(\)` method")
                self(*example[:-1])
        self._check_mirrored()

    def _check_mirrored(self) -> None:
        """Under a ``tf.distribute`` strategy, refuse variables created outside its scope."""
        if not tf.distribute.has_strategy():
            return
        extended = tf.distribute.get_strategy().extended
        outside = [getattr(v, "path", v.name) for v in state_variables(self)
                   if not extended.variable_created_in_scope(tf_variable(v))]
        if outside:
            raise InvalidArgumentError(
                f"{type(self).__name__}'s variables {outside} were created before the data-parallel run, "
                "so they are not mirrored across its devices; build a fresh model and pass it to "
                "Trainer(devices=N).fit unbuilt (restore weights with fit(..., ckpt_path=...))")

    def compile_key(self) -> Any:
        """What fixes this model's traced step, for reuse by later fits; ``None``: no reuse.

        A model's step may read any Python attribute, which d2lx cannot see,
        so by default every ``fit`` traces anew. d2lx's linear models say
        which values matter (see ``models.py``).
        """
        return None

    def predict(self, X: np.ndarray) -> np.ndarray:  # type: ignore[override]
        """The model's output for a NumPy batch, as NumPy float32 (framework-free, works without a fit).

        In evaluation mode (``training=False``: no dropout), whatever mode the last fit ended in.
        """
        out = self(tf.constant(np.asarray(X, dtype=np.float32)), training=False)
        return np.asarray(out.numpy(), dtype=np.float32)


class GraphStep:
    """What a compiled step traces: d2l's step of the model, its update and guard, and the functions.

    :class:`~d2lx.backends.tensorflow.step.TFStep` makes the variables and
    runs the functions built here; the data-parallel step replaces
    :meth:`_gradients` and :meth:`_apply`.
    """

    trainer: Any
    model: Any
    optim: Any
    check: bool
    variables: list[Any]
    snapshot: list[Any]  # every variable a refused step puts back
    guard: tf.Variable  # the latch: (first refused step of the epoch or -1, its cause)
    slot_of: dict[int, tf.Variable]  # a trainable variable's id -> its last applied gradient
    trace_counts: dict[str, int]

    def set_training(self, mode: bool) -> None:
        self.model.training = mode  # what d2l's TensorFlow models read (dropout...)

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
            self.slot_of[id(v)].assign(tf.convert_to_tensor(g))
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
            return compiled.loss_scalar(loss, "training_step")
        guard, latched = self.guard, self.guard.read_value()

        def refuse() -> tf.Tensor:
            for v, value in zip(self.snapshot, saved):
                v.assign(value)
            codes = tf.constant([_DATA, _LOSS, _PARAMETERS], tf.int64)
            finite_loss = tf.where(compiled.all_finite([loss]), codes[2], codes[1])
            cause = tf.where(compiled.all_finite(batch), finite_loss, codes[0])
            guard.assign(tf.where(latched[0] < 0, tf.stack([i, cause]), latched))
            return tf.constant(False)

        ok = tf.logical_and(compiled.all_finite([loss, *self.variables]), latched[0] < 0)
        tf.cond(ok, lambda: self._commit(pairs), refuse)
        return compiled.loss_scalar(loss, "training_step")

    def _val_one(self, batch: Batch) -> tf.Tensor:
        return compiled.loss_scalar(self._step_loss(self.model.validation_step, batch, "validation_step"),
                                    "validation_step")

    # -- the functions ----------------------------------------------------------------------
    def epoch_functions(self, train: ArrayLoader, val: ArrayLoader | None, spe: int,
                        jit: bool) -> dict[str, Any]:
        """An epoch's functions: ``(tensors, [order,] i)`` (one step), or fused ``(..., start, stop)``.

        ``train``/``val`` take full batches, ``train_tail``/``val_tail`` the
        shorter last one (each batch size a static shape, as XLA needs). They
        hold this step weakly: the cache outlives the fit, and a strong
        reference would keep its trainer, and so its data set, alive.
        """
        counts, step = self.trace_counts, weakref.proxy(self)

        def make(loader: ArrayLoader, name: str, size: int, chunk: int) -> Any:
            spec, bs, shuffled = compiled.batch_spec(loader.tensors), loader.batch_size, loader.shuffle
            training = name.startswith("train")

            def one(tensors: tuple[Any, ...], order: Any, i: tf.Tensor) -> tf.Tensor:
                batch = step.trainer.prepare_batch(compiled.batch_at(tensors, order, i, bs, size, jit))
                return step._train_one(batch, i) if training else step._val_one(batch)

            def fn(tensors: tuple[Any, ...], *args: tf.Tensor) -> tf.Tensor:
                counts[name] = counts.get(name, 0) + 1
                step.set_training(training)
                order, (start, *stop) = (args[0], args[1:]) if shuffled else (None, args)
                if not chunk:
                    return one(tensors, order, start)
                return compiled.steps_loop(lambda i: one(tensors, order, i), start, stop[0], chunk)

            signature = [spec, *([tf.TensorSpec((None,), tf.int64)] if shuffled else []),
                         *[tf.TensorSpec((), tf.int64)] * (1 + bool(chunk))]
            return tf.function(fn, input_signature=signature, autograph=self.trainer.autograph,
                               jit_compile=jit)

        fns = {}
        for what, loader in (("train", train), ("val", val)):
            if loader is not None:
                full, tail = divmod(loader.num_examples, loader.batch_size)
                chunk = compiled.chunk_of(full, spe)
                if full:
                    fns[what] = make(loader, what, loader.batch_size, chunk)
                if tail:  # fused: a loop of one step, so that every call returns a vector
                    fns[f"{what}_tail"] = make(loader, f"{what}_tail", tail, min(chunk, 1))
        return fns
