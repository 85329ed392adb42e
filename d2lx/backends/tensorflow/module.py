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
  ``trainable_variables``/``trainable_weights``.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from d2lx.module import ModuleBase

#: Where Keras' own ``self.loss`` value (``None`` or a ``compile`` spec) is kept.
KERAS_LOSS_ATTR = "_keras_loss"


def batch_len(batch: Any) -> Any:
    """Number of examples in ``batch``: a Python int when static, else a scalar tensor.

    Inside the trainer's ``tf.function`` the batch dimension is ``None`` (one
    trace serves full and short batches), so it cannot be read as an ``int``.
    """
    y = batch[-1]
    shape = getattr(y, "shape", None)
    if not shape:
        return 1
    if shape[0] is not None:
        return int(shape[0])
    return tf.shape(y)[0]


def same_device(current: str, target: str) -> bool:
    """Whether TensorFlow device names ``current`` and ``target`` name the same device."""
    if not current:
        return False
    a, b = tf.DeviceSpec.from_string(current), tf.DeviceSpec.from_string(target)
    return (a.device_type or "CPU").upper() == (b.device_type or "CPU").upper() and (
        (a.device_index or 0) == (b.device_index or 0)
    )


class Module(ModuleBase, tf.keras.Model):
    """Base class of models: ``tf.keras.Model`` + ``training_step``/``validation_step``...

    As in d2l, ``call`` forwards to :meth:`forward`, whose default runs
    ``self.net``. Hooks the trainer uses: ``trainable_variables`` (Keras'
    list plus raw ``tf.Variable`` attributes) and :meth:`materialize` (build
    lazy layers on the training device).
    """

    def __init__(self, plot_train_per_epoch: int = 2, plot_valid_per_epoch: int = 1) -> None:
        tf.keras.Model.__init__(self)
        self.save_hyperparameters()

    # -- the two Keras 3 traps (see the module docstring) --------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if name == "loss" and (value is None or not callable(value)
                               or self.__dict__.get("_d2lx_in_compile", False)):
            name = KERAS_LOSS_ATTR
        elif isinstance(value, tf.Variable) and not name.startswith("_"):
            raw = self.__dict__.setdefault("_d2lx_tf_variables", {})
            raw[name] = value
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
    def call(self, X: Any, *args: Any, **kwargs: Any) -> Any:
        """Keras' entry point; d2l code overrides :meth:`forward` instead."""
        return self.forward(X, *args, **kwargs)

    def forward(self, X: Any) -> Any:
        """d2l's default: run ``self.net``."""
        net = getattr(self, "net", None)
        if net is None:
            return super().forward(X)
        return net(X)

    def training_step(self, batch: Any) -> Any:
        loss = self.loss(self(*batch[:-1]), batch[-1])
        self.log("loss", loss, train=True, count=batch_len(batch))
        return loss

    def validation_step(self, batch: Any) -> Any:
        loss = self.loss(self(*batch[:-1]), batch[-1])
        self.log("loss", loss, train=False, count=batch_len(batch))
        return loss

    def materialize(self, num_inputs: int, device: str) -> None:
        """Build lazy Keras layers on ``device`` by calling the model once on zeros.

        Keras infers a ``Dense`` layer's width at its first call; doing that
        here, eagerly and under ``tf.device``, keeps variable creation out of
        the compiled training step and puts the variables on the device.
        """
        unbuilt = not self.built or any(not layer.built for layer in self._flatten_layers())
        if unbuilt:
            with tf.device(device):
                self(tf.zeros((1, num_inputs), tf.float32))
