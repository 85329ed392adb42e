"""Linear regression from scratch (d2l 3.4) and concise (d2l 3.5) in MXNet/Gluon."""

from __future__ import annotations

from collections.abc import Sequence

import mxnet as mx
import numpy as onp
from mxnet import gluon, init, np
from mxnet.gluon import nn

from d2lx.backends.mxnet.module import Module, context_list
from d2lx.hyperparameters import HyperParameters
from d2lx.module import check_linear_args, check_loss_args, check_regression_shapes
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


def huber_loss(loss_fn: gluon.loss.HuberLoss, y_hat: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The batch mean of Gluon's ``HuberLoss``, called on ``mxnet.np`` arrays.

    ``HuberLoss(rho=s)`` is exactly d2l 3.5.6's Huber loss with sigma ``s``
    (``|r| - s/2`` if ``|r| > s`` else ``r**2 / (2 s)``), so no rescaling is
    needed (unlike PyTorch's, which is ``s`` times it). But MXNet 1.9.1 wrote
    it with legacy operators (``F.abs``, ``F.where``): in NumPy mode it
    rejects ``mxnet.np`` arrays, hybridized or not. So it runs in a legacy
    scope on ``as_nd_ndarray()`` views; those are zero-copy views that keep
    the autograd history, and the result is viewed back as ``mxnet.np``.
    """
    with mx.util.np_array(False):
        per_example = loss_fn(y_hat.as_nd_ndarray(), y.as_nd_ndarray())
    return per_example.as_np_ndarray().mean()


class _LinearMixin:
    """``get_w_b``/``set_w_b``/``get_grads`` in d2lx's framework-free layout: w (n, 1), b (1,).

    Reads come from the primary context's copy (all copies are equal after
    every step); writes go to every copy, so a checkpoint restored under data
    parallelism leaves the devices in agreement.
    """

    trainer: object

    def _w_b_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _write_w_b(self, w: onp.ndarray, b: onp.ndarray) -> None:
        raise NotImplementedError

    def get_w_b(self) -> tuple[onp.ndarray, onp.ndarray]:
        w, b = self._w_b_arrays()
        # Dense stores its weight as (1, n); reshape(-1, 1) gives (n, 1) for both layouts.
        return (w.asnumpy().astype(onp.float32).reshape(-1, 1).copy(),
                b.asnumpy().astype(onp.float32).reshape(1).copy())

    def get_grads(self) -> tuple[onp.ndarray, onp.ndarray]:
        """The gradients the last optimizer step applied (after clipping and the all-reduce).

        MXNet allocates gradient buffers (zeros) when a parameter is set up,
        so "no gradient yet" cannot be read off the buffer as in PyTorch; a
        model whose trainer has taken no step is refused instead.
        """
        if getattr(self.trainer, "train_batch_idx", 0) == 0:
            raise RuntimeError(f"{type(self).__name__} has no gradients yet: train it first")
        w, b = self._w_b_arrays()
        return (w.grad.asnumpy().astype(onp.float32).reshape(-1, 1).copy(),
                b.grad.asnumpy().astype(onp.float32).reshape(1).copy())

    def set_w_b(self, w: onp.ndarray, b: onp.ndarray) -> None:
        self._write_w_b(onp.asarray(w, onp.float32), onp.asarray(b, onp.float32))


class LinearRegressionScratch(_LinearMixin, Module):
    """The linear regression model implemented from scratch.

    ``w`` (``num_inputs`` x 1, normal(0, ``sigma``)) and ``b`` (zeros) are
    ``mxnet.np`` arrays with ``attach_grad``, drawn from d2lx's seeded NumPy
    stream (not MXNet's RNG) so every backend starts from the same numbers.

    ``loss="huber", huber_sigma=s`` (d2l 3.5.6, exercise 2) swaps the squared
    loss for Gluon's ``HuberLoss(rho=s)``, batch mean.

    Under data parallelism ``self.w``/``self.b`` stay the primary copy (on the
    first device) and each further device gets its own ``attach_grad`` copy,
    as Gluon keeps one copy of a ``Parameter`` per context; :meth:`forward`
    uses the copy on its input's context. The trainer sums the copies'
    gradients through a ``device`` kvstore and :class:`SGD` updates every
    copy with that sum, so they stay equal.
    """

    def __init__(
        self, num_inputs: int, lr: float, sigma: float = 0.01, *, seed: int | None = None,
        loss: str = "squared", huber_sigma: float = 1.0,
    ) -> None:
        super().__init__()
        num_inputs, lr, sigma = check_linear_args(num_inputs, lr, sigma)
        loss, huber_sigma = check_loss_args(loss, huber_sigma)
        self.save_hyperparameters(ignore=["seed", "loss"])
        self.loss_name = loss
        self.hparams["loss"] = loss  # not an attribute: it would hide the loss() method
        self.huber = gluon.loss.HuberLoss(rho=huber_sigma) if loss == "huber" else None
        w, b = initial_linear_params(generator("params", resolve_seed(seed)), num_inputs, sigma)
        self.w = np.array(w, dtype=onp.float32)
        self.b = np.array(b, dtype=onp.float32)
        self.w.attach_grad()
        self.b.attach_grad()
        self._replicas: list[tuple[np.ndarray, np.ndarray]] = []  # (w, b) on the other devices

    def forward(self, X: np.ndarray) -> np.ndarray:
        w, b = self.param_arrays(X.ctx)
        return np.dot(X, w) + b

    def loss(self, y_hat: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.huber is not None:
            return huber_loss(self.huber, y_hat, y)
        l = (y_hat - y) ** 2 / 2
        return l.mean()

    def configure_optimizers(self) -> SGD:
        """d2l's ``SGD([self.w, self.b], lr)``, plus the copies on further devices if any."""
        return SGD([a for ctx in self.contexts() for a in self.param_arrays(ctx)], self.lr)

    def contexts(self) -> list[mx.Context]:
        return [self.w.ctx] + [w.ctx for w, _ in self._replicas]

    def param_arrays(self, ctx: mx.Context | None = None) -> list[np.ndarray]:
        if ctx is None or ctx == self.w.ctx:
            return [self.w, self.b]
        for w, b in self._replicas:
            if w.ctx == ctx:
                return [w, b]
        raise RuntimeError(f"{type(self).__name__} has no copy of its parameters on {ctx}; "
                           f"they are on {self.contexts()}")

    def materialize(self, num_inputs: int, ctx: mx.Context | Sequence[mx.Context]) -> None:
        ctxs = context_list(ctx)
        if self.w.ctx != ctxs[0]:  # copy to the context and attach fresh gradient buffers there
            self.w = self.w.as_in_ctx(ctxs[0])
            self.b = self.b.as_in_ctx(ctxs[0])
            self.w.attach_grad()
            self.b.attach_grad()
        self._replicas = []
        for other in ctxs[1:]:
            w, b = self.w.copyto(other), self.b.copyto(other)
            w.attach_grad()
            b.attach_grad()
            self._replicas.append((w, b))

    def check_data_shapes(self, X_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> None:
        check_regression_shapes(type(self).__name__, self.num_inputs, X_shape, y_shape)

    def _w_b_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.w, self.b

    def _write_w_b(self, w: onp.ndarray, b: onp.ndarray) -> None:
        # In place: the gradient buffers attach_grad attached stay with the arrays.
        for tw, tb in [(self.w, self.b), *self._replicas]:
            tw[:] = np.array(w.reshape(tw.shape), ctx=tw.ctx)
            tb[:] = np.array(b.reshape(tb.shape), ctx=tb.ctx)


class LinearRegression(_LinearMixin, Module):
    """The concise linear regression model: ``nn.Dense(1)``, ``L2Loss``, ``gluon.Trainer``.

    Differences from d2l 3.5's MXNet code, each for "same seed, same run on
    every backend":

    * The loss is the mean squared error *without* the 1/2 factor, like
      PyTorch's ``MSELoss`` and Keras' ``MeanSquaredError``. Gluon's
      ``L2Loss`` is half the squared error, so it is built with
      ``weight=2.0``. (With the plain ``L2Loss`` d2l's MXNet run takes half
      the step of the other frameworks; that is why its printed errors, about
      0.1 to 0.2, are ten times theirs.) ``loss="huber", huber_sigma=s``
      uses Gluon's ``HuberLoss(rho=s)`` instead (d2l 3.5.6, exercise 2).
    * The weights come from d2lx's seeded NumPy stream (normal(0, ``sigma``),
      bias 0), not ``init.Normal``. The layer's input width is still inferred
      from the data, at the start of the first ``fit`` (or from ``w`` in a
      ``set_w_b`` before any fit); Dense stores the weight as
      ``(1, num_inputs)``, so the core's ``(num_inputs, 1)`` draw is
      transposed.
    * The layer is hybridized (a cached graph instead of per-op Python calls).
    """

    def __init__(
        self, lr: float, *, sigma: float = 0.01, seed: int | None = None,
        loss: str = "squared", huber_sigma: float = 1.0,
    ) -> None:
        super().__init__()
        _, lr, sigma = check_linear_args(None, lr, sigma)
        loss, huber_sigma = check_loss_args(loss, huber_sigma)
        self.save_hyperparameters(ignore=["seed", "loss"])
        self.loss_name = loss
        self.hparams["loss"] = loss  # not an attribute: it would hide the loss() method
        self.net = nn.Dense(1)
        self.net.hybridize()
        self.huber = gluon.loss.HuberLoss(rho=huber_sigma) if loss == "huber" else None
        self.loss_fn = gluon.loss.L2Loss(weight=2.0)  # (y_hat - y)**2 per example, no 1/2
        self._param_rng = generator("params", resolve_seed(seed))

    def forward(self, X: np.ndarray) -> np.ndarray:
        return self.net(X)

    def loss(self, y_hat: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.huber is not None:
            return huber_loss(self.huber, y_hat, y)
        return self.loss_fn(y_hat, y).mean()

    def configure_optimizers(self) -> gluon.Trainer:
        """Gluon's SGD; on several contexts it sums their gradients in a ``device`` kvstore.

        ``update_on_kvstore=False`` (Gluon's default for dense parameters is
        ``True``, via ``$MXNET_UPDATE_ON_KVSTORE``): the kvstore only
        all-reduces the gradients into every context's gradient buffer and
        each context applies the update itself. That lets the trainer call
        ``allreduce_grads()``, clip the *summed* gradient, then ``update()``,
        Gluon's documented recipe for clipping across devices; it is also why
        ``get_grads`` returns the gradient that was applied, not one shard's.
        On one context Gluon makes no kvstore at all.
        """
        return gluon.Trainer(self.collect_params(), "sgd", {"learning_rate": self.lr},
                             kvstore="device", update_on_kvstore=False)

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

    def param_arrays(self, ctx: mx.Context | None = None) -> list[np.ndarray]:
        return list(self._w_b_arrays(ctx))

    def materialize(self, num_inputs: int, ctx: mx.Context | Sequence[mx.Context]) -> None:
        if not self._initialized():
            # Exactly what Gluon's deferred initialization would infer from the first batch.
            self.net.weight.shape = (1, num_inputs)
            self.net.initialize(init.Zero(), ctx=context_list(ctx))
            w, b = initial_linear_params(self._param_rng, num_inputs, self.sigma)
            self.set_w_b(w, b)
        super().materialize(num_inputs, ctx)

    def set_w_b(self, w: onp.ndarray, b: onp.ndarray) -> None:
        """Set the weights on every context; a still-deferred layer is built first with ``w``'s width."""
        if not self._initialized():
            self.materialize(int(onp.asarray(w).reshape(-1, 1).shape[0]), mx.cpu())
        super().set_w_b(w, b)

    def check_data_shapes(self, X_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> None:
        check_regression_shapes(type(self).__name__, self.num_inputs, X_shape, y_shape)

    def _w_b_arrays(self, ctx: mx.Context | None = None) -> tuple[np.ndarray, np.ndarray]:
        if not self._initialized():
            raise RuntimeError("LinearRegression has no weights before its first fit (deferred layer)")
        ctx = self.net.weight.list_ctx()[0] if ctx is None else ctx
        return self.net.weight.data(ctx), self.net.bias.data(ctx)

    def _write_w_b(self, w: onp.ndarray, b: onp.ndarray) -> None:
        # Parameter.set_data writes in place into the copy on every context.
        self.net.weight.set_data(np.array(w.reshape(1, -1)))
        self.net.bias.set_data(np.array(b.reshape(1)))
