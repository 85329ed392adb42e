"""Linear regression from scratch (d2l 3.4) and concise (d2l 3.5): TensorFlow/Keras' lines.

What both models share on every backend (checks, hyperparameters, ``w``/``b``
in d2lx's layout) is :class:`d2lx.linear.LinearModel`; this file only says
where TensorFlow keeps ``w`` and ``b``, which layer, loss and optimizer run,
and how the gradients the step applied are found (the compiled step keeps
them in device variables, see :meth:`d2lx.backends.tensorflow.step.TFStep.applied_gradients`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from d2lx.backends.tensorflow.module import Module
from d2lx.backends.tensorflow.ops import same_device
from d2lx.hyperparameters import HyperParameters
from d2lx.linear import LinearModel
from d2lx.seeding import generator, initial_linear_params, resolve_seed


class SGD(HyperParameters):
    """Minibatch stochastic gradient descent, hand-written (d2l 3.4.3, TensorFlow flavour).

    d2l's TensorFlow interface: the trainer hands it ``(gradient, variable)``
    pairs and it updates each variable in place with ``assign_sub(lr * grad)``.
    Works eagerly and inside ``tf.function``.
    """

    lr: float  # set by save_hyperparameters

    def __init__(self, lr: float) -> None:
        self.save_hyperparameters()

    def apply_gradients(self, grads_and_vars: Iterable[tuple[Any, tf.Variable]]) -> None:
        for grad, param in grads_and_vars:
            param.assign_sub(self.lr * grad)


def optimizer_variables(optim: Any, variables: Sequence[Any], device: str) -> list[Any]:
    """A Keras optimizer's variables, built now, eagerly, on ``device`` ([] for d2l's ``SGD``).

    Inside ``tf.function`` Keras would create them during the first trace;
    building first keeps variable creation out of the compiled step.
    """
    if not isinstance(optim, tf.keras.optimizers.Optimizer):
        return []
    if not optim.built:
        with tf.device(device):
            optim.build(list(variables))
    return list(optim.variables)


def batch_mean(loss_fn: tf.keras.losses.Loss, y_hat: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """The batch mean of a Keras loss built with ``reduction=None`` (per-example values).

    Why not Keras' default reduction: under a ``tf.distribute`` strategy it
    divides the mean by the number of replicas (Keras' own ``fit`` sums
    equal-sized replicas' gradients). d2l's ``loss`` returns the mean over the
    batch it is given, and d2lx's data-parallel step weights each replica's
    (possibly unequal) shard itself, so the plain mean is taken here.
    """
    return tf.reduce_mean(loss_fn(y, y_hat))  # Keras losses take (y_true, y_pred)


def _huber(loss: str, huber_sigma: float | None) -> tf.keras.losses.Huber | None:
    """Keras' ``Huber(delta=s)`` is ``s`` times d2l 3.5.6's Huber loss with sigma ``s``.

    Keras: ``r**2 / 2`` if ``|r| <= delta`` else ``delta * |r| - delta**2 / 2``;
    d2l: ``r**2 / (2 sigma)`` / ``|r| - sigma / 2`` (same boundary), so the
    models divide it by ``huber_sigma``.
    """
    return tf.keras.losses.Huber(delta=huber_sigma, reduction=None) if loss == "huber" else None


#: The methods a traced training/validation step calls on a model.
_STEP_METHODS = ("__call__", "call", "forward", "loss", "training_step", "validation_step", "plot")


class _TFLinear(LinearModel, Module):
    """What both TensorFlow linear models add to the core mixin: step reuse and applied gradients."""

    huber: tf.keras.losses.Huber | None

    def compile_key(self) -> Any:
        """What fixes this model's traced step, so a fresh model can reuse a compiled one.

        Only d2lx's own two classes (not subclasses, which may keep Python
        state the trace reads): the class, the methods the step calls (a
        method replaced with ``add_to_class`` changes the key) and the
        hyperparameters, which determine every Python value the step reads.
        ``None`` (no reuse) if a method was overridden on the instance.
        """
        cls = type(self)
        if cls not in (LinearRegression, LinearRegressionScratch):
            return None
        if any(name in self.__dict__ for name in _STEP_METHODS):
            return None
        return (cls, tuple(getattr(cls, name) for name in _STEP_METHODS), repr(sorted(self.hparams.items())))

    def _w_b_grads(self) -> tuple[Any, Any] | None:
        applied = getattr(self.trainer, "applied_gradients", None)
        grads = None if applied is None else applied(self._w_b())
        return None if grads is None else (grads[0], grads[1])

    def _huber_loss(self, y_hat: tf.Tensor, y: tf.Tensor) -> tf.Tensor | None:
        """The Huber loss if chosen (``None`` otherwise: the model's own loss)."""
        if self.huber is None:
            return None
        return batch_mean(self.huber, y_hat, y) / self.huber_sigma


class LinearRegressionScratch(_TFLinear):
    """The linear regression model implemented from scratch (d2l 3.4).

    ``w`` (``num_inputs`` x 1, normal(0, ``sigma``)) and ``b`` (zeros) are
    ``tf.Variable`` s whose values come from d2lx's seeded NumPy stream (not
    ``tf.random``), so every backend starts from the same numbers.

    The variables are created at first use (reading ``model.w``, or the
    trainer placing the model), not in ``__init__``: creating a variable
    starts TensorFlow's runtime, after which its CPU can no longer be split
    into the logical devices that ``Trainer(devices=N)`` needs. d2l's order
    (model, data, then trainer) thus still allows data parallelism, and under
    it the variables are created once, directly as mirrored variables.
    """

    def __init__(self, num_inputs: int, lr: float, sigma: float = 0.01, *, seed: int | None = None,
                 loss: str = "squared", huber_sigma: float | None = None) -> None:
        super().__init__()
        self.init_linear(num_inputs=num_inputs, lr=lr, sigma=sigma, loss=loss, huber_sigma=huber_sigma)
        self.huber = _huber(self.loss_name, self.huber_sigma)
        self._initial = initial_linear_params(generator("params", resolve_seed(seed)), self.num_inputs or 0,
                                              self.sigma)

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: w and b before their first use.
        if name in ("w", "b") and "_initial" in self.__dict__:
            self._create_variables(*self.__dict__["_initial"])
            return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _create_variables(self, w: Any, b: Any) -> None:
        self.__dict__.pop("_initial", None)
        self.w = tf.Variable(w, trainable=True, name="w")
        self.b = tf.Variable(b, trainable=True, name="b")

    @property
    def trainable_variables(self) -> list[Any]:
        self._w_b()  # create them if still pending
        return super().trainable_variables

    def forward(self, X: tf.Tensor) -> tf.Tensor:
        return tf.matmul(X, self.w) + self.b

    def loss(self, y_hat: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        huber = self._huber_loss(y_hat, y)
        if huber is not None:
            return huber
        l = (y_hat - y) ** 2 / 2
        return tf.reduce_mean(l)

    def configure_optimizers(self) -> SGD:
        return SGD(self.lr)

    def materialize(self, example: Sequence[Any], device: str | None) -> None:
        """Create ``w``/``b`` on ``device`` (under a data-parallel strategy: mirrored).

        Variables cannot move, so ones that live elsewhere (or were created
        outside the active ``tf.distribute`` strategy) are re-created there
        from their current values.
        """
        if "_initial" in self.__dict__:
            with tf.device(device):
                self._create_variables(*self.__dict__["_initial"])
            return
        if tf.distribute.has_strategy():
            extended = tf.distribute.get_strategy().extended
            fits = all(extended.variable_created_in_scope(v) for v in (self.w, self.b))
        else:
            fits = (device is None or all(same_device(v.device, device) for v in (self.w, self.b))) and \
                not isinstance(self.w, tf.distribute.DistributedValues)
        if not fits:
            with tf.device(device):
                self._create_variables(self.w.read_value(), self.b.read_value())

    def _w_b(self) -> tuple[Any, Any]:
        pending = self.__dict__.get("_initial")
        return pending if pending is not None else (self.w, self.b)

    def _assign_w_b(self, w: np.ndarray, b: np.ndarray) -> None:
        if "_initial" in self.__dict__:  # still lazy: keep it so (the runtime stays unstarted)
            self.__dict__["_initial"] = (w.astype(np.float32), b.astype(np.float32))
            return
        self.w.assign(w)
        self.b.assign(b)


class SeededNormal(tf.keras.initializers.Initializer):
    """Keras initializer drawing normal(0, ``sigma``) from d2lx's seeded ``"params"`` stream.

    Why not ``tf.keras.initializers.RandomNormal``: TensorFlow's generator gives
    other numbers than NumPy's for the same seed, and the concise model must
    start where the scratch model and every other backend start. The layer
    stays lazy (its width is known at the first call) and whenever it is
    built, its kernel is the core's draw ``initial_linear_params(...)[0]``.
    """

    def __init__(self, rng: np.random.Generator, sigma: float) -> None:
        self.rng = rng
        self.sigma = sigma

    def __call__(self, shape: Any, dtype: Any = None) -> tf.Tensor:
        shape = tuple(int(d) for d in shape)
        if len(shape) != 2 or shape[1] != 1:
            raise ValueError(f"SeededNormal draws a one-output kernel (n, 1), got shape {shape}")
        w, _ = initial_linear_params(self.rng, shape[0], self.sigma)
        return tf.constant(w, dtype=dtype or tf.float32)

    def get_config(self) -> dict[str, Any]:
        return {"sigma": self.sigma}


class LinearRegression(_TFLinear):
    """The concise model (d2l 3.5): ``Dense(1)`` at ``self.net``, ``MeanSquaredError``, Keras ``SGD``.

    The loss is the mean squared error *without* d2l 3.4's 1/2 factor, the
    same on every d2lx backend. The layer is lazy as in d2l; its kernel is
    drawn from d2lx's seeded stream once its width is known, the bias is 0.
    """

    def __init__(self, lr: float, *, sigma: float = 0.01, seed: int | None = None, loss: str = "squared",
                 huber_sigma: float | None = None) -> None:
        super().__init__()
        self.init_linear(num_inputs=None, lr=lr, sigma=sigma, loss=loss, huber_sigma=huber_sigma)
        self.huber = _huber(self.loss_name, self.huber_sigma)
        initializer = SeededNormal(generator("params", resolve_seed(seed)), self.sigma)
        self.net = tf.keras.layers.Dense(1, kernel_initializer=initializer, bias_initializer="zeros")
        self.loss_fn = tf.keras.losses.MeanSquaredError(reduction=None)

    def forward(self, X: tf.Tensor) -> tf.Tensor:
        return self.net(X)

    def loss(self, y_hat: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        huber = self._huber_loss(y_hat, y)
        return batch_mean(self.loss_fn, y_hat, y) if huber is None else huber

    def configure_optimizers(self) -> tf.keras.optimizers.Optimizer:
        return tf.keras.optimizers.SGD(self.lr)

    @property
    def num_inputs(self) -> int | None:  # type: ignore[override]
        return int(self.net.kernel.shape[0]) if self.net.built else None

    def materialize(self, example: Sequence[Any], device: str | None) -> None:
        """Build the lazy ``Dense`` from the batch's width, without an eager forward pass.

        ``Dense.build`` creates the variables directly (a Keras call would
        cost milliseconds per fit); anything else still lazy is built by
        :meth:`Module.materialize`, which also refuses variables created
        outside a data-parallel strategy's scope.
        """
        if isinstance(self.net, tf.keras.layers.Dense) and not self.net.built:
            with tf.device(device):
                self.net.build((None, int(example[0].shape[-1])))
        super().materialize(example, device)

    def _w_b(self) -> tuple[Any, Any]:
        if not self.net.built:
            raise self.not_built()
        return self.net.kernel, self.net.bias

    def _assign_w_b(self, w: np.ndarray, b: np.ndarray) -> None:
        if not self.net.built:  # set_w_b on a fresh model fixes its width
            self.net.build((None, w.shape[0]))
        self.net.kernel.assign(w.reshape(tuple(self.net.kernel.shape)))
        self.net.bias.assign(b.reshape(tuple(self.net.bias.shape)))
