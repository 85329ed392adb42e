"""Linear regression from scratch (d2l 3.4) and concise (d2l 3.5) in TensorFlow/Keras."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import tensorflow as tf

from d2lx.backends.tensorflow.module import Module, same_device
from d2lx.hyperparameters import HyperParameters
from d2lx.module import check_linear_args, check_loss_args, check_regression_shapes
from d2lx.seeding import generator, initial_linear_params, resolve_seed


class SGD(HyperParameters):
    """Minibatch stochastic gradient descent, hand-written (d2l 3.4.3, TensorFlow flavour).

    Same interface as d2l's TensorFlow ``SGD(lr)``: the trainer hands it
    ``(gradient, variable)`` pairs and it updates each variable in place with
    ``assign_sub(lr * grad)``. Works eagerly and inside ``tf.function``.
    """

    def __init__(self, lr: float) -> None:
        self.save_hyperparameters()

    def apply_gradients(self, grads_and_vars: Iterable[tuple[Any, tf.Variable]]) -> None:
        for grad, param in grads_and_vars:
            param.assign_sub(self.lr * grad)


def huber_loss(loss_fn: tf.keras.losses.Huber, sigma: float, y_hat: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """The batch mean of d2l 3.5.6's Huber loss, through Keras' ``Huber(delta=sigma)``.

    Keras' Huber is ``r**2 / 2`` if ``|r| <= delta`` else ``delta * |r| - delta**2 / 2``,
    which is ``delta`` times the seed's ``r**2 / (2 sigma)`` / ``|r| - sigma / 2``
    (same ``|r| > sigma`` boundary), so it is divided by ``delta``.
    ``loss_fn`` has ``reduction=None`` (see :func:`batch_mean`).
    """
    return batch_mean(loss_fn, y_hat, y) / sigma


def batch_mean(loss_fn: tf.keras.losses.Loss, y_hat: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """The batch mean of a Keras loss built with ``reduction=None`` (per-example values).

    Why not Keras' default reduction: under a ``tf.distribute`` strategy it
    divides the mean by the number of replicas (Keras' own ``fit`` sums
    equal-sized replicas' gradients). d2l's ``loss`` returns the mean over the
    batch it is given, and d2lx's data-parallel step weights each replica's
    (possibly unequal) shard itself, so the plain mean is taken here.
    """
    return tf.reduce_mean(loss_fn(y, y_hat))  # Keras losses take (y_true, y_pred)


#: The methods a traced training/validation step calls on a model.
_STEP_METHODS = ("__call__", "call", "forward", "loss", "training_step", "validation_step", "log")


class _LinearMixin:
    """``get_w_b``/``set_w_b``/``get_grads`` in d2lx's layout: w (n, 1), b (1,), NumPy float32."""

    trainer: Any

    def _w_b_variables(self) -> tuple[Any, Any]:
        raise NotImplementedError

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
        return (cls, tuple(getattr(cls, name) for name in _STEP_METHODS),
                repr(sorted(self.hparams.items())))

    def _init_loss(self, loss: str, huber_sigma: float) -> None:
        """Keep the loss choice without hiding the ``loss()`` method (``self.loss`` stays unset)."""
        self.loss_name = loss
        self.hparams["loss"] = loss  # not an attribute: it would hide the loss() method
        self.huber = tf.keras.losses.Huber(delta=huber_sigma, reduction=None) if loss == "huber" else None

    def get_grads(self) -> tuple[np.ndarray, np.ndarray]:
        """The gradients of ``w`` and ``b`` the last applied optimizer step used.

        The compiled step writes them into device variables as it applies them
        (after clipping and, with ``devices=N``, after the cross-device sum),
        so reading them costs nothing per step; this reads them once.
        """
        applied = getattr(self.trainer, "applied_gradients", None)
        grads = None if applied is None else applied(self._w_b_variables())
        if grads is None:
            raise RuntimeError(f"{type(self).__name__} has no gradients yet: train it first")
        gw, gb = grads
        return (np.array(gw, dtype=np.float32).reshape(-1, 1),
                np.array(gb, dtype=np.float32).reshape(1))

    def get_w_b(self) -> tuple[np.ndarray, np.ndarray]:
        w, b = self._w_b_variables()
        return (np.array(w.numpy(), dtype=np.float32).reshape(-1, 1),
                np.array(b.numpy(), dtype=np.float32).reshape(1))

    def set_w_b(self, w: np.ndarray, b: np.ndarray) -> None:
        vw, vb = self._w_b_variables()
        vw.assign(np.asarray(w, np.float32).reshape(tuple(vw.shape)))
        vb.assign(np.asarray(b, np.float32).reshape(tuple(vb.shape)))


class LinearRegressionScratch(_LinearMixin, Module):
    """The linear regression model implemented from scratch.

    ``w`` (``num_inputs`` x 1, normal(0, ``sigma``)) and ``b`` (zeros) are
    ``tf.Variable`` s whose values come from d2lx's seeded NumPy stream (not
    ``tf.random``), so every backend starts from the same numbers.

    The variables are created at first use (reading ``model.w``, or the
    trainer placing the model), not in ``__init__``: creating a variable
    starts TensorFlow's runtime, after which its CPU can no longer be split
    into the logical devices that ``Trainer(devices=N)`` needs. d2l's order
    (model, data, then trainer) thus still allows data parallelism, and under
    it the variables are created once, directly as mirrored variables.

    ``loss="huber", huber_sigma=s`` (d2l 3.5.6, exercise 2) replaces the
    squared loss by Keras' ``Huber`` scaled to the seed's formula.
    """

    def __init__(
        self, num_inputs: int, lr: float, sigma: float = 0.01, *, seed: int | None = None,
        loss: str = "squared", huber_sigma: float = 1.0,
    ) -> None:
        super().__init__()
        num_inputs, lr, sigma = check_linear_args(num_inputs, lr, sigma)
        loss, huber_sigma = check_loss_args(loss, huber_sigma)
        self.save_hyperparameters(ignore=["seed", "loss"])
        self._init_loss(loss, huber_sigma)
        self._initial = initial_linear_params(generator("params", resolve_seed(seed)), num_inputs, sigma)

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: w and b before their first use.
        if name in ("w", "b") and "_initial" in self.__dict__:
            self._create_variables(self._initial[0], self._initial[1])
            return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _create_variables(self, w: Any, b: Any) -> None:
        self.__dict__.pop("_initial", None)
        self.w = tf.Variable(w, trainable=True, name="w")
        self.b = tf.Variable(b, trainable=True, name="b")

    @property
    def trainable_variables(self) -> list[Any]:
        self._w_b_variables()  # create them if still pending
        return super().trainable_variables

    def forward(self, X: tf.Tensor) -> tf.Tensor:
        return tf.matmul(X, self.w) + self.b

    def loss(self, y_hat: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        if self.huber is not None:
            return huber_loss(self.huber, self.huber_sigma, y_hat, y)
        l = (y_hat - y) ** 2 / 2
        return tf.reduce_mean(l)

    def configure_optimizers(self) -> SGD:
        return SGD(self.lr)

    def materialize(self, num_inputs: int, device: str) -> None:
        """Create ``w``/``b`` on ``device`` (under a data-parallel strategy: mirrored).

        Variables cannot move, so ones that live elsewhere (or were created
        outside the active ``tf.distribute`` strategy) are re-created there
        from their current values.
        """
        if "_initial" in self.__dict__:
            with tf.device(device):
                self._create_variables(*self._initial)
            return
        strategy = tf.distribute.get_strategy() if tf.distribute.has_strategy() else None
        if strategy is not None:
            fits = all(strategy.extended.variable_created_in_scope(v) for v in (self.w, self.b))
        else:
            fits = (same_device(self.w.device, device) and same_device(self.b.device, device)
                    and not isinstance(self.w, tf.distribute.DistributedValues))
        if not fits:
            with tf.device(device):
                self._create_variables(self.w.read_value(), self.b.read_value())

    def check_data_shapes(self, X_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> None:
        check_regression_shapes(type(self).__name__, self.num_inputs, X_shape, y_shape)

    def _w_b_variables(self) -> tuple[tf.Variable, tf.Variable]:
        return self.w, self.b


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


class LinearRegression(_LinearMixin, Module):
    """The concise linear regression model: ``Dense(1)``, ``MeanSquaredError``, Keras ``SGD``.

    The loss is the mean squared error *without* d2l 3.4's 1/2 factor, the
    same on every d2lx backend. The layer is lazy as in d2l; its kernel is
    drawn from d2lx's seeded stream once its width is known, the bias is 0.
    ``loss="huber", huber_sigma=s`` uses Keras' ``Huber`` scaled to d2l
    3.5.6's formula instead.
    """

    def __init__(
        self, lr: float, *, sigma: float = 0.01, seed: int | None = None,
        loss: str = "squared", huber_sigma: float = 1.0,
    ) -> None:
        super().__init__()
        _, lr, sigma = check_linear_args(None, lr, sigma)
        loss, huber_sigma = check_loss_args(loss, huber_sigma)
        self.save_hyperparameters(ignore=["seed", "loss"])
        self._init_loss(loss, huber_sigma)
        initializer = SeededNormal(generator("params", resolve_seed(seed)), sigma)
        self.net = tf.keras.layers.Dense(1, kernel_initializer=initializer, bias_initializer="zeros")
        self.loss_fn = tf.keras.losses.MeanSquaredError(reduction=None)

    def forward(self, X: tf.Tensor) -> tf.Tensor:
        return self.net(X)

    def loss(self, y_hat: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        if self.huber is not None:
            return huber_loss(self.huber, self.huber_sigma, y_hat, y)
        return batch_mean(self.loss_fn, y_hat, y)

    def configure_optimizers(self) -> tf.keras.optimizers.Optimizer:
        return tf.keras.optimizers.SGD(self.lr)

    @property
    def num_inputs(self) -> int | None:
        return int(self.net.kernel.shape[0]) if self.net.built else None

    def materialize(self, num_inputs: int, device: str | None) -> None:
        """Build the lazy layer on ``device`` (``None``: TensorFlow's default placement).

        ``Dense.build`` creates the variables without an eager forward pass
        (``Module.materialize``'s generic way), which would cost a Keras call per fit.
        """
        if not self.net.built:
            with tf.device(device):
                self.net.build((None, num_inputs))
        self._check_mirrored()  # refuses variables created outside a strategy's scope

    def set_w_b(self, w: np.ndarray, b: np.ndarray) -> None:
        """Set the weights; a still-lazy layer is built first with ``w``'s width."""
        if not self.net.built:
            self.materialize(int(np.asarray(w).reshape(-1, 1).shape[0]), None)
        super().set_w_b(w, b)

    def get_w_b(self) -> tuple[np.ndarray, np.ndarray]:
        """``(w, b)`` as in the seed (``self.get_weights()``), in d2lx's NumPy layout."""
        if not self.net.built:
            raise RuntimeError("LinearRegression has no weights before its first fit (lazy layer)")
        w, b = self.get_weights()[0], self.get_weights()[1]
        return np.array(w, dtype=np.float32).reshape(-1, 1), np.array(b, dtype=np.float32).reshape(1)

    def check_data_shapes(self, X_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> None:
        check_regression_shapes(type(self).__name__, self.num_inputs, X_shape, y_shape)

    def _w_b_variables(self) -> tuple[Any, Any]:
        if not self.net.built:
            raise RuntimeError("LinearRegression has no weights before its first fit (lazy layer)")
        return self.net.kernel, self.net.bias
