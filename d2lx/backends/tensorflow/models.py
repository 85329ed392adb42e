"""Linear regression from scratch (d2l 3.4) and concise (d2l 3.5) in TensorFlow/Keras."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import tensorflow as tf

from d2lx.backends.tensorflow.module import Module, same_device
from d2lx.hyperparameters import HyperParameters
from d2lx.module import check_linear_args, check_regression_shapes
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


class _LinearMixin:
    """``get_w_b``/``set_w_b`` in d2lx's framework-free layout: w (n, 1), b (1,) NumPy float32."""

    def _w_b_variables(self) -> tuple[Any, Any]:
        raise NotImplementedError

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
    """

    def __init__(self, num_inputs: int, lr: float, sigma: float = 0.01, *, seed: int | None = None) -> None:
        super().__init__()
        num_inputs, lr, sigma = check_linear_args(num_inputs, lr, sigma)
        self.save_hyperparameters(ignore=["seed"])
        w, b = initial_linear_params(generator("params", resolve_seed(seed)), num_inputs, sigma)
        self.w = tf.Variable(w, trainable=True, name="w")
        self.b = tf.Variable(b, trainable=True, name="b")

    def forward(self, X: tf.Tensor) -> tf.Tensor:
        return tf.matmul(X, self.w) + self.b

    def loss(self, y_hat: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        l = (y_hat - y) ** 2 / 2
        return tf.reduce_mean(l)

    def configure_optimizers(self) -> SGD:
        return SGD(self.lr)

    def materialize(self, num_inputs: int, device: str) -> None:
        """Re-create ``w``/``b`` on ``device`` if they live elsewhere (variables cannot move)."""
        if not (same_device(self.w.device, device) and same_device(self.b.device, device)):
            with tf.device(device):
                self.w = tf.Variable(self.w.read_value(), trainable=True, name="w")
                self.b = tf.Variable(self.b.read_value(), trainable=True, name="b")

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
    """

    def __init__(self, lr: float, *, sigma: float = 0.01, seed: int | None = None) -> None:
        super().__init__()
        _, lr, sigma = check_linear_args(None, lr, sigma)
        self.save_hyperparameters(ignore=["seed"])
        initializer = SeededNormal(generator("params", resolve_seed(seed)), sigma)
        self.net = tf.keras.layers.Dense(1, kernel_initializer=initializer, bias_initializer="zeros")
        self.loss_fn = tf.keras.losses.MeanSquaredError()

    def forward(self, X: tf.Tensor) -> tf.Tensor:
        return self.net(X)

    def loss(self, y_hat: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return self.loss_fn(y, y_hat)  # Keras losses take (y_true, y_pred)

    def configure_optimizers(self) -> tf.keras.optimizers.Optimizer:
        return tf.keras.optimizers.SGD(self.lr)

    @property
    def num_inputs(self) -> int | None:
        return int(self.net.kernel.shape[0]) if self.net.built else None

    def materialize(self, num_inputs: int, device: str) -> None:
        if not self.net.built:
            with tf.device(device):
                self.net.build((None, num_inputs))

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
