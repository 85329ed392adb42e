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
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from d2lx.backends.tensorflow.ops import tf_variable
from d2lx.errors import InvalidArgumentError
from d2lx.module import ModuleBase

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
