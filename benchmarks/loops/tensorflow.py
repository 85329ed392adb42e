"""The hand-written TensorFlow loop (d2l 3.4/3.5 without d2lx), for ``d2lx bench``.

One ``tf.function`` step per minibatch: the epoch's shuffled tensors stay on
the device and the step slices its batch itself from a tensor start index
(so one traced graph serves every step; the shorter last batch is a second
trace). The loss is accumulated in a variable inside the step and read once
per epoch. The concise model is ``tf.keras.layers.Dense`` with
``tf.keras.optimizers.SGD`` (as d2l's TensorFlow chapter); the scratch one
uses ``tf.Variable``s and ``assign_sub``.

Variants: ``function`` (graph mode) and ``xla`` (``jit_compile=True``); the
runner times both and keeps the faster.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

FRAMEWORK = "tensorflow"
VARIANTS: tuple[str, ...] = ("function", "xla")


def framework_version() -> str:
    return str(tf.__version__)


def _gather(X: tf.Tensor, y: tf.Tensor, idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.gather(X, idx), tf.gather(y, idx)


class Loop:
    def __init__(self, X: np.ndarray, y: np.ndarray, model: str, lr: float, batch_size: int,
                 variant: str = "function") -> None:
        if model not in ("concise", "scratch"):
            raise ValueError(model)
        if variant not in VARIANTS:
            raise ValueError(variant)
        self.n, self.d = X.shape
        self.model, self.lr, self.bs, self.variant = model, lr, batch_size, variant
        with tf.device("/CPU:0"):
            self.X = tf.constant(np.asarray(X, np.float32))
            self.y = tf.constant(np.asarray(y, np.float32))
            self.loss_sum = tf.Variable(0.0, dtype=tf.float32)
            if model == "concise":
                self.net = tf.keras.layers.Dense(1)
                self.net.build((None, self.d))
                self.opt = tf.keras.optimizers.SGD(learning_rate=lr)
                self.params = self.net.trainable_variables
                self.opt.build(self.params)
            else:
                self.w = tf.Variable(tf.zeros((self.d, 1)))
                self.b = tf.Variable(tf.zeros((1,)))
                self.params = [self.w, self.b]
        self._step = self._make_step(batch_size)
        tail = self.n % batch_size
        self._tail_step = self._make_step(tail) if tail else None
        self._starts = [tf.constant(i * batch_size, tf.int32) for i in range(self.n // batch_size + 1)]
        self._gather = tf.function(_gather)

    def _make_step(self, size: int) -> Any:
        mse = tf.keras.losses.MeanSquaredError()

        def step(Xe: tf.Tensor, ye: tf.Tensor, start: tf.Tensor) -> None:
            Xb = tf.slice(Xe, [start, 0], [size, self.d])
            yb = tf.slice(ye, [start, 0], [size, 1])
            with tf.GradientTape() as tape:
                if self.model == "concise":
                    loss = mse(yb, self.net(Xb))
                else:
                    loss = tf.reduce_mean((tf.matmul(Xb, self.w) + self.b - yb) ** 2 / 2)
            grads = tape.gradient(loss, self.params)
            if self.model == "concise":
                self.opt.apply_gradients(zip(grads, self.params))
            else:
                self.w.assign_sub(self.lr * grads[0])
                self.b.assign_sub(self.lr * grads[1])
            self.loss_sum.assign_add(loss)

        return tf.function(step, jit_compile=self.variant == "xla")

    def run(self, epochs: int, w0: np.ndarray, b0: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        n, bs = self.n, self.bs
        self.params[0].assign(w0.reshape(self.d, 1).astype(np.float32))
        self.params[1].assign(b0.reshape(1).astype(np.float32))
        full, tail = divmod(n, bs)
        starts = self._starts
        losses: list[float] = []
        for _ in range(epochs):
            idx = tf.constant(rng.permutation(n).astype(np.int32))
            Xe, ye = self._gather(self.X, self.y, idx)
            self.loss_sum.assign(0.0)
            for i in range(full):
                self._step(Xe, ye, starts[i])
            if tail:
                self._tail_step(Xe, ye, starts[full])
            losses.append(float(self.loss_sum.numpy()) / (full + (1 if tail else 0)))
        return {"w": self.params[0].numpy().reshape(-1, 1).astype(np.float32),
                "b": self.params[1].numpy().reshape(1).astype(np.float32), "losses": losses}
