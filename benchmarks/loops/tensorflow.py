"""TensorFlow: the hand-written loops (d2l 3.4/3.5 and an MLP without d2lx) and the reader's d2lx code.

One ``tf.function`` step per minibatch, called through its concrete function
(fetched once, which skips the per-call signature matching): the epoch's
shuffled tensors stay on the device and the step slices its batch itself
from a tensor start index (one trace serves every full batch; the shorter
last batch is a second trace). Losses are accumulated in variables inside the steps and read once
per epoch. The model's variables are made once per loop and reset from the
initial values before each run, so a run never re-traces (d2lx's reader
model says the same with ``compile_key``). Layers are ``tf.keras.layers.Dense``
with ``tf.keras.optimizers.SGD``, as in d2l's TensorFlow chapter; the scratch
model uses ``tf.Variable`` s and ``assign_sub``.

Variants: ``function`` (graph mode) and ``xla`` (``jit_compile=True``); over
a ``tf.data`` loader, ``function`` (a Python loop calling a compiled step)
and ``graph_epoch`` (the whole epoch, dataset iteration included, in one
``tf.function``). The runner times each and keeps the fastest.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

from benchmarks.loops import result

FRAMEWORK = "tensorflow"


def framework_version() -> str:
    return str(tf.__version__)


def variants(kind: str) -> tuple[str, ...]:
    return ("function", "graph_epoch") if kind == "loader" else ("function", "xla")


def _given(array: np.ndarray) -> Callable[..., tf.Tensor]:
    """A Keras initializer that returns ``array`` (the benchmark's shared initial values)."""
    return lambda shape, dtype=None, **_: tf.constant(np.asarray(array).reshape(shape), dtype or tf.float32)


def build_net(kind: str, init: Any) -> tf.keras.Model:
    """The concise model's ``Dense(1)`` or the MLP's two ``Dense`` layers, from ``init``, built."""
    def dense(units: int, w: str, b: str, **kwargs: Any) -> tf.keras.layers.Dense:
        return tf.keras.layers.Dense(units, kernel_initializer=_given(init[w]),
                                     bias_initializer=_given(init[b]), **kwargs)

    if kind == "mlp":
        d = init["W1"].shape[0]
        layers = [dense(init["W1"].shape[1], "W1", "b1", activation="relu"), dense(1, "W2", "b2")]
    else:
        d = init["w"].shape[0]
        layers = [dense(1, "w", "b")]
    net = tf.keras.Sequential(layers)
    net.build((None, d))
    return net


NAMES = {"mlp": ("W1", "b1", "W2", "b2"), "concise": ("w", "b"), "scratch": ("w", "b")}


class _Model:
    """Variables of ``kind`` made once, reset from ``init`` per run; the loss; the update."""

    def __init__(self, kind: str, init: Any, lr: float) -> None:
        self.kind, self.init, self.lr = kind, init, lr
        with tf.device("/CPU:0"):
            if kind == "scratch":
                self.params = [tf.Variable(init["w"]), tf.Variable(init["b"])]
            else:
                self.net = build_net(kind, init)
                self.params = list(self.net.trainable_variables)
                self.opt = tf.keras.optimizers.SGD(learning_rate=lr)
                self.opt.build(self.params)

    def reset(self) -> None:
        for v, name in zip(self.params, NAMES[self.kind]):
            v.assign(np.asarray(self.init[name]).reshape(v.shape))

    def loss(self, X: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        if self.kind == "scratch":
            return tf.reduce_mean((tf.matmul(X, self.params[0]) + self.params[1] - y) ** 2 / 2)
        return tf.reduce_mean(tf.square(self.net(X) - y))

    def train(self, X: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = self.loss(X, y)
        grads = tape.gradient(loss, self.params)
        if self.kind == "scratch":
            for v, g in zip(self.params, grads):
                v.assign_sub(self.lr * g)
        else:
            self.opt.apply_gradients(zip(grads, self.params))
        return loss

    def values(self) -> dict[str, Any]:
        return {name: v.numpy() for name, v in zip(NAMES[self.kind], self.params)}


class ArrayLoop:
    """Tensors on the device once; per epoch one gather, one compiled step per batch."""

    def __init__(self, kind: str, arrays: tuple[np.ndarray, ...], lr: float, batch_size: int, init: Any,
                 variant: str = "function") -> None:
        if variant not in ("function", "xla"):
            raise ValueError(variant)
        self.bs, self.variant = batch_size, variant
        with tf.device("/CPU:0"):
            self.X, self.y, self.X_val, self.y_val = (tf.constant(np.asarray(a, np.float32)) for a in arrays)
            self.loss_sum = tf.Variable(0.0)
            self.val_sum = tf.Variable(0.0)
        self.n, self.d = arrays[0].shape
        self.n_val = arrays[2].shape[0]
        self.model = _Model(kind, init, lr)
        self._steps = {s: self._make(s, train=True) for s in {batch_size, self.n % batch_size} if s}
        self._val_steps = {s: self._make(s, train=False) for s in {batch_size, self.n_val % batch_size} if s}
        self._starts = [tf.constant(s, tf.int32) for s in range(0, max(self.n, self.n_val), batch_size)]
        self._gather = tf.function(lambda X, y, idx: (tf.gather(X, idx), tf.gather(y, idx)))

    def _make(self, size: int, train: bool) -> Any:
        xla = self.variant == "xla"

        def step(X: tf.Tensor, y: tf.Tensor, start: tf.Tensor) -> None:
            if xla:  # XLA takes tf.slice's start as a compile-time constant: one program per batch
                rows = start + tf.range(size)
                Xb, yb = tf.gather(X, rows), tf.gather(y, rows)
            else:
                Xb = tf.slice(X, [start, 0], [size, self.d])
                yb = tf.slice(y, [start, 0], [size, 1])
            if train:
                self.loss_sum.assign_add(self.model.train(Xb, yb))
            else:
                self.val_sum.assign_add(self.model.loss(Xb, yb) * size)

        spec = (tf.TensorSpec([None, self.d], tf.float32), tf.TensorSpec([None, 1], tf.float32),
                tf.TensorSpec([], tf.int32))
        # The concrete function, fetched once: calling it skips tf.function's per-call signature matching.
        return tf.function(step, jit_compile=xla).get_concrete_function(*spec)

    def run(self, epochs: int, rng: np.random.Generator) -> dict[str, Any]:
        n, n_val, bs = self.n, self.n_val, self.bs
        self.model.reset()
        losses, val_losses = [], []
        for _ in range(epochs):
            Xe, ye = self._gather(self.X, self.y, tf.constant(rng.permutation(n).astype(np.int32)))
            self.loss_sum.assign(0.0)
            self.val_sum.assign(0.0)
            for i, s in enumerate(range(0, n, bs)):
                self._steps[min(bs, n - s)](Xe, ye, self._starts[i])
            for i, s in enumerate(range(0, n_val, bs)):
                self._val_steps[min(bs, n_val - s)](self.X_val, self.y_val, self._starts[i])
            losses.append(float(self.loss_sum.numpy()) / -(-n // bs))
            val_losses.append(float(self.val_sum.numpy()) / n_val)
        return result(self.model.values(), losses, val_losses)


def make_loader(X: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int) -> tf.data.Dataset:
    """``Dataset.from_tensor_slices((X, y)).shuffle(n).batch(batch_size)`` (validation: no shuffle)."""
    dataset = tf.data.Dataset.from_tensor_slices((X, y))
    if shuffle:
        dataset = dataset.shuffle(len(X), seed=seed)
    return dataset.batch(batch_size)


class LoaderLoop:
    """The concise model over ``tf.data`` datasets (the user-loader path)."""

    def __init__(self, train: tf.data.Dataset, val: tf.data.Dataset, lr: float, init: Any,
                 variant: str = "function") -> None:
        self.train, self.val, self.variant = train, val, variant
        self.model = _Model("concise", init, lr)
        d = init["w"].shape[0]
        spec = (tf.TensorSpec([None, d], tf.float32), tf.TensorSpec([None, 1], tf.float32))
        self._train_step = tf.function(self.model.train, input_signature=spec)
        self._val_step = tf.function(lambda X, y: self.model.loss(X, y) * tf.cast(tf.shape(y)[0], tf.float32),
                                     input_signature=spec)
        self._epoch = tf.function(self._graph_epoch)

    def _graph_epoch(self) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        loss_sum, steps, val_sum, n_val = (tf.constant(0.0) for _ in range(4))
        for X, y in self.train:
            loss_sum += self.model.train(X, y)
            steps += 1.0
        for X, y in self.val:
            size = tf.cast(tf.shape(y)[0], tf.float32)
            val_sum += self.model.loss(X, y) * size
            n_val += size
        return loss_sum, steps, val_sum, n_val

    def run(self, epochs: int) -> dict[str, Any]:
        self.model.reset()
        losses, val_losses = [], []
        for _ in range(epochs):
            if self.variant == "graph_epoch":
                loss_sum, steps, val_sum, n_val = (float(t) for t in self._epoch())
            else:
                step_losses = [self._train_step(X, y) for X, y in self.train]
                loss_sum, steps = float(tf.add_n(step_losses)), len(step_losses)
                val = [(self._val_step(X, y), int(y.shape[0])) for X, y in self.val]
                val_sum, n_val = float(tf.add_n([v for v, _ in val])), sum(c for _, c in val)
            losses.append(loss_sum / steps)
            val_losses.append(val_sum / n_val)
        return result(self.model.values(), losses, val_losses)


# -- the d2lx side: what a reader writes --------------------------------------------------------
@functools.cache
def _mlp_class(d2l: Any) -> type:
    """The reader's MLP class, made once per namespace (its ``compile_key`` names the class)."""

    class MLP(d2l.Module):
        def __init__(self, start: Any, lr: float) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = build_net("mlp", start)

        def loss(self, y_hat: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
            return tf.reduce_mean(tf.square(y_hat - y))

        def configure_optimizers(self) -> Any:
            return tf.keras.optimizers.SGD(self.lr)

        def compile_key(self) -> Any:
            """d2lx's TensorFlow hook: equal keys let a fresh model reuse the traced step (as the loop
            reuses its own)."""
            return (type(self), self.start, self.lr)

    return MLP


def d2lx_mlp(d2l: Any, init: Any, lr: float) -> Any:
    """A reader's MLP on ``d2lx.tensorflow``: Keras ``Dense`` layers, the MSE, Keras' SGD."""
    return _mlp_class(d2l)(init, lr)
