"""What a reader writes on each framework, for the conformance tests (test helper).

The conformance tests are written once; what differs per framework is the
reader's own code: an MLP built from the framework's layers and optimizer,
and the framework's own data loader. Each is written here as a reader of
d2l would write it for that framework, on the d2lx namespace ``d2l``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

HIDDEN = 32


def mlp(d2l: Any, lr: float) -> Any:
    """A two-layer MLP (ReLU, MSE loss, Adam), the framework's own layers and optimizer."""
    build = {"torch": _torch_mlp, "jax": _jax_mlp, "tensorflow": _tf_mlp, "mxnet": _mx_mlp}[d2l.BACKEND]
    return build(d2l, lr)


def own_loader(backend: str, X: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool) -> Any:
    """The framework's own loader over ``(X, y)`` (JAX has none: a list of NumPy batches)."""
    if backend == "torch":
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        dataset = TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
        return DataLoader(dataset, batch_size, shuffle=shuffle)
    if backend == "tensorflow":
        import tensorflow as tf

        dataset = tf.data.Dataset.from_tensor_slices((X, y))
        if shuffle:
            dataset = dataset.shuffle(len(X), seed=0)
        return dataset.batch(batch_size)
    if backend == "mxnet":
        from mxnet import gluon

        return gluon.data.DataLoader(gluon.data.ArrayDataset(X, y), batch_size, shuffle=shuffle)
    order = np.random.default_rng(0).permutation(len(X)) if shuffle else np.arange(len(X))
    return [(X[order[i:i + batch_size]], y[order[i:i + batch_size]]) for i in range(0, len(X), batch_size)]


def _torch_mlp(d2l: Any, lr: float) -> Any:
    import torch
    from torch import nn

    class MLP(d2l.Module):
        def __init__(self, lr: float) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.LazyLinear(HIDDEN), nn.ReLU(), nn.LazyLinear(1))

        def loss(self, y_hat: Any, y: Any) -> Any:
            return nn.functional.mse_loss(y_hat, y)

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=self.lr)

    return MLP(lr)


def _jax_mlp(d2l: Any, lr: float) -> Any:
    import optax
    from flax import linen as nn

    class MLP(d2l.Module):
        lr: float

        def setup(self) -> None:
            self.hidden = nn.Dense(HIDDEN)
            self.out = nn.Dense(1)

        def forward(self, X: Any) -> Any:
            return self.out(nn.relu(self.hidden(X)))

        def loss(self, params: Any, X: Any, y: Any, state: Any) -> Any:
            y_hat = state.apply_fn({"params": params}, *X)
            return ((y_hat - y.reshape(y_hat.shape)) ** 2).mean()

        def configure_optimizers(self) -> Any:
            return optax.adam(self.lr)

    return MLP(lr=lr)


def _tf_mlp(d2l: Any, lr: float) -> Any:
    import tensorflow as tf

    class MLP(d2l.Module):
        def __init__(self, lr: float) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = tf.keras.Sequential([tf.keras.layers.Dense(HIDDEN, activation="relu"),
                                            tf.keras.layers.Dense(1)])

        def loss(self, y_hat: Any, y: Any) -> Any:
            return tf.reduce_mean(tf.square(y_hat - y))

        def configure_optimizers(self) -> Any:
            return tf.keras.optimizers.Adam(self.lr)

    return MLP(lr)


def _mx_mlp(d2l: Any, lr: float) -> Any:
    from mxnet import gluon, init
    from mxnet.gluon import nn

    class MLP(d2l.Module):
        def __init__(self, lr: float) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential()
            self.net.add(nn.Dense(HIDDEN, activation="relu"), nn.Dense(1))
            self.net.initialize(init.Xavier())

        def forward(self, X: Any) -> Any:
            return self.net(X)

        def loss(self, y_hat: Any, y: Any) -> Any:
            return ((y_hat - y) ** 2).mean()

        def configure_optimizers(self) -> Any:
            return gluon.Trainer(self.collect_params(), "adam", {"learning_rate": self.lr})

    return MLP(lr)


def regression_task(n: int = 512, num_val: int = 256, features: int = 4, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A nonlinear target an MLP learns and a linear model cannot: float32 (X, y, X_val, y_val)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n + num_val, features)).astype(np.float32)
    y = (np.abs(X[:, :1]) + 0.5 * X[:, 1:2] * X[:, 2:3] + 0.05 * rng.standard_normal((n + num_val, 1)))
    y = y.astype(np.float32)
    return X[:n], y[:n], X[n:], y[n:]


def seed_framework(backend: str, seed: int) -> None:
    """Seed the framework's own generators (layer initializers, loaders' shuffles), as a reader would."""
    np.random.seed(seed)
    if backend == "torch":
        import torch

        torch.manual_seed(seed)
    elif backend == "tensorflow":
        import keras

        keras.utils.set_random_seed(seed)
    elif backend == "mxnet":
        import mxnet as mx

        mx.random.seed(seed)
