"""Linear regression from scratch (d2l 3.4) and concise (d2l 3.5) in MXNet/Gluon."""

from __future__ import annotations

from collections.abc import Sequence

import mxnet as mx
import numpy as onp
from mxnet import gluon, init, np
from mxnet.gluon import nn

from d2lx.backends.mxnet.module import Module
from d2lx.hyperparameters import HyperParameters
from d2lx.module import check_linear_args, check_regression_shapes
from d2lx.seeding import generator, initial_linear_params, resolve_seed


class SGD(HyperParameters):
    """Minibatch stochastic gradient descent, hand-written (d2l 3.4.3, MXNet flavour).

    ``step(batch_size)`` takes the same argument as ``gluon.Trainer.step`` and
    means the same thing: gradients are divided by it. d2lx's ``Trainer``
    passes 1 because the models' losses are already minibatch *means*, so the
    update is exactly ``lr * grad(mean loss)`` for both optimizers, the last
    (shorter) batch included. (d2l's own MXNet ``SGD.step`` ignores its
    argument; with the 1 d2l passes, the result is the same.)
    """

    def __init__(self, params: Sequence[np.ndarray], lr: float) -> None:
        self.save_hyperparameters()

    def step(self, batch_size: int = 1) -> None:
        scale = self.lr / batch_size
        for param in self.params:
            param -= scale * param.grad  # in place: the grad buffer stays attached

    def zero_grad(self) -> None:
        """For API parity: MXNet's backward overwrites gradients (``grad_req='write'``)."""
        for param in self.params:
            param.grad[:] = 0


class _LinearMixin:
    """``get_w_b``/``set_w_b`` in d2lx's framework-free layout: w (n, 1), b (1,)."""

    def _w_b_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def get_w_b(self) -> tuple[onp.ndarray, onp.ndarray]:
        w, b = self._w_b_arrays()
        # Dense stores its weight as (1, n); reshape(-1, 1) gives (n, 1) for both layouts.
        return (w.asnumpy().astype(onp.float32).reshape(-1, 1).copy(),
                b.asnumpy().astype(onp.float32).reshape(1).copy())

    def set_w_b(self, w: onp.ndarray, b: onp.ndarray) -> None:
        tw, tb = self._w_b_arrays()
        # In-place writes keep the gradient buffers that attach_grad / Gluon attached.
        tw[:] = np.array(onp.asarray(w, onp.float32).reshape(tw.shape), ctx=tw.ctx)
        tb[:] = np.array(onp.asarray(b, onp.float32).reshape(tb.shape), ctx=tb.ctx)


class LinearRegressionScratch(_LinearMixin, Module):
    """The linear regression model implemented from scratch.

    ``w`` (``num_inputs`` x 1, normal(0, ``sigma``)) and ``b`` (zeros) are
    ``mxnet.np`` arrays with ``attach_grad``, drawn from d2lx's seeded NumPy
    stream (not MXNet's RNG) so every backend starts from the same numbers.
    """

    def __init__(self, num_inputs: int, lr: float, sigma: float = 0.01, *, seed: int | None = None) -> None:
        super().__init__()
        num_inputs, lr, sigma = check_linear_args(num_inputs, lr, sigma)
        self.save_hyperparameters(ignore=["seed"])
        w, b = initial_linear_params(generator("params", resolve_seed(seed)), num_inputs, sigma)
        self.w = np.array(w, dtype=onp.float32)
        self.b = np.array(b, dtype=onp.float32)
        self.w.attach_grad()
        self.b.attach_grad()

    def forward(self, X: np.ndarray) -> np.ndarray:
        return np.dot(X, self.w) + self.b

    def loss(self, y_hat: np.ndarray, y: np.ndarray) -> np.ndarray:
        l = (y_hat - y) ** 2 / 2
        return l.mean()

    def configure_optimizers(self) -> SGD:
        return SGD([self.w, self.b], self.lr)

    def param_arrays(self) -> list[np.ndarray]:
        return [self.w, self.b]

    def materialize(self, num_inputs: int, ctx: mx.Context) -> None:
        if self.w.ctx != ctx:  # copy to the context and attach fresh gradient buffers there
            self.w = self.w.as_in_ctx(ctx)
            self.b = self.b.as_in_ctx(ctx)
            self.w.attach_grad()
            self.b.attach_grad()

    def check_data_shapes(self, X_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> None:
        check_regression_shapes(type(self).__name__, self.num_inputs, X_shape, y_shape)

    def _w_b_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.w, self.b


class LinearRegression(_LinearMixin, Module):
    """The concise linear regression model: ``nn.Dense(1)``, ``L2Loss``, ``gluon.Trainer``.

    Differences from d2l 3.5's MXNet code, each for "same seed, same run on
    every backend":

    * The loss is the mean squared error *without* the 1/2 factor, like
      PyTorch's ``MSELoss`` and Keras' ``MeanSquaredError``. Gluon's
      ``L2Loss`` is half the squared error, so it is built with
      ``weight=2.0``. (With the plain ``L2Loss`` d2l's MXNet run takes half
      the step of the other frameworks; that is why its printed errors, about
      0.1 to 0.2, are ten times theirs.)
    * The weights come from d2lx's seeded NumPy stream (normal(0, ``sigma``),
      bias 0), not ``init.Normal``. The layer's input width is still inferred
      from the data, at the start of the first ``fit``; Dense stores the
      weight as ``(1, num_inputs)``, so the core's ``(num_inputs, 1)`` draw is
      transposed.
    * The layer is hybridized (a cached graph instead of per-op Python calls).
    """

    def __init__(self, lr: float, *, sigma: float = 0.01, seed: int | None = None) -> None:
        super().__init__()
        _, lr, sigma = check_linear_args(None, lr, sigma)
        self.save_hyperparameters(ignore=["seed"])
        self.net = nn.Dense(1)
        self.net.hybridize()
        self.loss_fn = gluon.loss.L2Loss(weight=2.0)  # (y_hat - y)**2 per example, no 1/2
        self._param_rng = generator("params", resolve_seed(seed))

    def forward(self, X: np.ndarray) -> np.ndarray:
        return self.net(X)

    def loss(self, y_hat: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.loss_fn(y_hat, y).mean()

    def configure_optimizers(self) -> gluon.Trainer:
        return gluon.Trainer(self.collect_params(), "sgd", {"learning_rate": self.lr})

    @property
    def num_inputs(self) -> int | None:
        n = int(self.net.weight.shape[1])  # -1 (NumPy mode) or 0 while deferred
        return n if n > 0 else None

    def _initialized(self) -> bool:
        try:
            self.net.weight.list_ctx()
        except RuntimeError:
            return False
        return True

    def materialize(self, num_inputs: int, ctx: mx.Context) -> None:
        if not self._initialized():
            # Exactly what Gluon's deferred initialization would infer from the first batch.
            self.net.weight.shape = (1, num_inputs)
            self.net.initialize(init.Zero(), ctx=ctx)
            w, b = initial_linear_params(self._param_rng, num_inputs, self.sigma)
            self.set_w_b(w, b)
        super().materialize(num_inputs, ctx)

    def check_data_shapes(self, X_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> None:
        check_regression_shapes(type(self).__name__, self.num_inputs, X_shape, y_shape)

    def _w_b_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._initialized():
            raise RuntimeError("LinearRegression has no weights before its first fit (deferred layer)")
        return self.net.weight.data(), self.net.bias.data()
