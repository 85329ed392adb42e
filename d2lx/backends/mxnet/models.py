"""Linear regression from scratch (d2l 3.4) and concise (d2l 3.5): MXNet/Gluon's lines.

What both models share on every backend (checks, hyperparameters, ``w``/``b``
in d2lx's layout) is :class:`d2lx.linear.LinearModel`; this file only says
where Gluon keeps ``w`` and ``b`` and which layer, loss and optimizer run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mxnet as mx
import numpy as onp
from mxnet import gluon, init, np
from mxnet.gluon import nn

from d2lx.backends.mxnet.module import GraphStepModule, context_list
from d2lx.hyperparameters import HyperParameters
from d2lx.linear import LinearModel
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

    params: Sequence[np.ndarray]
    lr: float

    def __init__(self, params: Sequence[np.ndarray], lr: float) -> None:
        self.save_hyperparameters()

    def step(self, batch_size: int = 1) -> None:
        scale = self.lr / batch_size
        for param in self.params:
            param -= scale * param.grad  # in place: the gradient buffer stays attached

    def zero_grad(self) -> None:
        """For API parity: MXNet's backward overwrites gradients (``grad_req='write'``)."""
        for param in self.params:
            param.grad[:] = 0


def _huber(loss: str, huber_sigma: float | None) -> gluon.loss.HuberLoss | None:
    """Gluon's ``HuberLoss(rho=s)``: exactly d2l 3.5.6's Huber loss with sigma ``s`` (no rescaling)."""
    return gluon.loss.HuberLoss(rho=huber_sigma) if loss == "huber" else None


def huber_loss(loss_fn: gluon.loss.HuberLoss, y_hat: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The batch mean of Gluon's ``HuberLoss``, called on ``mxnet.np`` arrays.

    MXNet 1.9.1 wrote ``HuberLoss`` with legacy operators (``F.abs``,
    ``F.where``): in NumPy mode it rejects ``mxnet.np`` arrays, hybridized or
    not. So it runs in a legacy scope on ``as_nd_ndarray()`` views; those are
    zero-copy views that keep the autograd history, and the result is viewed
    back as ``mxnet.np``.
    """
    with mx.util.np_array(False):
        per_example = loss_fn(y_hat.as_nd_ndarray(), y.as_nd_ndarray())
    return per_example.as_np_ndarray().mean()


class _SquaredError(nn.HybridBlock):
    """The concise step: ``L2Loss(weight=2.0)(net(X), y).mean()`` as one graph, bit for bit.

    Gluon's operators in Gluon's order (``y`` reshaped like the prediction,
    ``square(y - y_hat)``); the weight ``2.0 / 2`` and the mean over the
    single output column are exact and left out. Six operator calls after
    the layer's own graph become nodes of one graph.
    """

    def __init__(self, net: nn.Dense) -> None:
        super().__init__()
        self.net = net

    def hybrid_forward(self, F: Any, X: Any, y: Any) -> Any:
        y_hat = self.net(X)
        return F.np.mean(F.np.square(F.npx.reshape_like(y, y_hat) - y_hat))


class _HalfSquaredError(nn.HybridBlock):
    """The scratch step: ``((X @ w + b - y) ** 2 / 2).mean()``, d2l 3.4's operators as one graph.

    ``w`` and ``b`` are inputs, not parameters: the model's ``attach_grad``
    arrays (on a shard's context, its copies there), which a recorded call
    gives their gradients, as the operators one by one do.
    """

    def hybrid_forward(self, F: Any, X: Any, y: Any, w: Any, b: Any) -> Any:
        return ((F.np.dot(X, w) + b - y) ** 2 / 2).mean()


def _no_hooks(*blocks: Any) -> bool:
    return not any(b._forward_hooks or b._forward_pre_hooks for b in blocks)


def _stepped(model: Any) -> bool:
    """Whether a training step has run: MXNet allocates gradient buffers (zeros) up front.

    So "no gradient yet" cannot be read off the buffer as in PyTorch; the
    trainer's step counter (d2lx's loop and a reader's ``fit_epoch`` both
    advance it) says instead.
    """
    return getattr(getattr(model, "trainer", None), "train_batch_idx", 0) > 0


class LinearRegressionScratch(LinearModel, GraphStepModule):
    """The linear regression model implemented from scratch (d2l 3.4).

    ``w`` (``num_inputs`` x 1, normal(0, ``sigma``)) and ``b`` (zeros) are
    ``mxnet.np`` arrays with ``attach_grad``, as in d2l, drawn from d2lx's
    seeded NumPy stream (not MXNet's RNG) so every backend starts from the
    same numbers. Under data parallelism each further context gets its own
    copy (see :meth:`Module.on_context`).
    """

    def __init__(self, num_inputs: int, lr: float, sigma: float = 0.01, *, seed: int | None = None,
                 loss: str = "squared", huber_sigma: float | None = None) -> None:
        super().__init__()
        self.init_linear(num_inputs=num_inputs, lr=lr, sigma=sigma, loss=loss, huber_sigma=huber_sigma)
        self.huber = _huber(self.loss_name, self.huber_sigma)
        w, b = initial_linear_params(generator("params", resolve_seed(seed)), int(num_inputs), self.sigma)
        self.w = np.array(w, dtype=onp.float32)
        self.b = np.array(b, dtype=onp.float32)
        self.w.attach_grad()
        self.b.attach_grad()

    def forward(self, X: np.ndarray) -> np.ndarray:
        return np.dot(X, self.w) + self.b

    def loss(self, y_hat: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.huber is not None:
            return huber_loss(self.huber, y_hat, y)
        l = (y_hat - y) ** 2 / 2
        return l.mean()

    def graph_loss(self, batch: Any) -> np.ndarray | None:
        """``loss(self(X), y)`` through one graph (see :class:`GraphStepModule`); the squared loss only."""
        w, b = self.w, self.b
        if self.huber is not None or not isinstance(w, np.ndarray) or not isinstance(b, np.ndarray) \
                or not self.runs_own_step(LinearRegressionScratch, batch):
            return None
        kept = self.kept()
        if kept.graph is None:
            kept.graph = self.hybridized(_HalfSquaredError())
        return kept.graph(*batch, w, b)  # type: ignore[no-any-return]

    def configure_optimizers(self) -> SGD:
        return SGD([self.w, self.b], self.lr)

    def _w_b(self) -> tuple[np.ndarray, np.ndarray]:
        return self.w, self.b

    def _w_b_grads(self) -> tuple[np.ndarray, np.ndarray] | None:
        return (self.w.grad, self.b.grad) if _stepped(self) else None

    def _assign_w_b(self, w: onp.ndarray, b: onp.ndarray) -> None:
        # In place: the gradient buffers attach_grad attached stay with the arrays.
        self.w[:] = np.array(w.reshape(self.w.shape), ctx=self.w.ctx)
        self.b[:] = np.array(b.reshape(self.b.shape), ctx=self.b.ctx)
        self.sync_replicas()


class LinearRegression(LinearModel, GraphStepModule):
    """The concise model (d2l 3.5): a hybridized ``nn.Dense(1)`` at ``self.net``, ``gluon.Trainer``.

    Differences from d2l 3.5's MXNet code, each for "same seed, same run on
    every backend":

    * The loss is the mean squared error *without* the 1/2 factor, like
      PyTorch's ``MSELoss``. Gluon's ``L2Loss`` is half the squared error, so
      it is built with ``weight=2.0``. (With the plain ``L2Loss`` d2l's MXNet
      run takes half the step of the other frameworks.) ``loss="huber"``
      uses Gluon's ``HuberLoss(rho=huber_sigma)`` instead.
    * The weights come from d2lx's seeded NumPy stream (normal(0, ``sigma``),
      bias 0), not ``init.Normal``. The layer's input width is still inferred
      from the data by Gluon's deferred initialization, at the start of the
      first ``fit`` (or from ``w`` in a ``set_w_b`` before any fit); Dense
      stores the weight as ``(1, num_inputs)``, so the core's draw is transposed.
    * The layer is hybridized (a cached graph instead of per-op Python calls),
      and a step runs the layer and the loss as one cached graph, with
      exactly the numbers of ``loss(self(X), y)`` (see :meth:`graph_loss`).
    """

    def __init__(self, lr: float, *, sigma: float = 0.01, seed: int | None = None, loss: str = "squared",
                 huber_sigma: float | None = None) -> None:
        super().__init__()
        self.init_linear(num_inputs=None, lr=lr, sigma=sigma, loss=loss, huber_sigma=huber_sigma)
        self.net = nn.Dense(1)
        self.net.hybridize()
        self.huber = _huber(self.loss_name, self.huber_sigma)
        self.loss_fn = gluon.loss.L2Loss(weight=2.0)  # (y_hat - y)**2 per example, no 1/2
        self.kept().loss_fn = self.loss_fn  # the loss the step's graph computes
        self._param_rng = generator("params", resolve_seed(seed))

    def forward(self, X: np.ndarray) -> np.ndarray:
        return self.net(X)

    def loss(self, y_hat: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.huber is not None:
            return huber_loss(self.huber, y_hat, y)
        return self.loss_fn(y_hat, y).mean()

    def graph_loss(self, batch: Any) -> np.ndarray | None:
        """``loss(self(X), y)`` through one graph (see :class:`GraphStepModule`).

        Only the squared loss (Huber runs legacy operators, outside any
        graph), with ``self.net`` a ``Dense`` and ``self.loss_fn`` the one
        made here (a reader may set others). The graph holds ``self.net``:
        it is remade when that is replaced, so it never runs a layer the
        model no longer has.
        """
        net, loss_fn = self.net, self.loss_fn
        if self.huber is not None or type(net) is not nn.Dense \
                or not self.runs_own_step(LinearRegression, batch):
            return None
        kept = self.kept()
        if loss_fn is not kept.loss_fn or not _no_hooks(net, loss_fn):
            return None
        if kept.graph is None or kept.graph.net is not net:
            kept.graph = self.hybridized(_SquaredError(net))
        return kept.graph(*batch)  # type: ignore[no-any-return]

    def configure_optimizers(self) -> gluon.Trainer:
        """Gluon's SGD; on several contexts it sums their gradients in a ``device`` kvstore.

        ``update_on_kvstore=False`` (Gluon's default for dense parameters is
        ``True``): the kvstore only all-reduces the gradients into every
        context's gradient buffer and each context applies the update. That
        lets the trainer call ``allreduce_grads()``, clip the *summed*
        gradient, then ``update()``, Gluon's recipe for clipping across
        devices; it is also why ``get_grads`` returns the gradient that was
        applied, not one shard's. On one context Gluon makes no kvstore.
        """
        return gluon.Trainer(self.collect_params(), "sgd", {"learning_rate": self.lr},
                             kvstore="device", update_on_kvstore=False)

    @property
    def num_inputs(self) -> int | None:  # type: ignore[override]
        n = int(self.net.weight.shape[1])  # -1 (NumPy mode) or 0 while deferred
        return n if n > 0 else None

    def _initialized(self) -> bool:
        """``initialize()`` has been called (the arrays may still wait for the data's width)."""
        try:
            self.net.weight.list_ctx()
        except RuntimeError:
            return False
        return True

    def _built(self) -> bool:
        """The weights exist (deferred initialization is complete)."""
        try:
            self.net.weight.list_data()
        except RuntimeError:  # never initialized, or DeferredInitializationError
            return False
        return True

    def materialize(self, example: Sequence[Any], ctx: mx.Context | Sequence[mx.Context]) -> None:
        fresh = not self._initialized()
        if fresh:  # zeros now, overwritten below by the core's seeded draw
            self.net.initialize(init.Zero(), ctx=context_list(ctx))
        super().materialize(example, ctx)
        if fresh:
            w, b = initial_linear_params(self._param_rng, self.num_inputs or 0, self.sigma)
            self._assign_w_b(w, b)

    def _build(self, num_inputs: int) -> None:
        self.materialize((np.zeros((1, num_inputs)), np.zeros((1, 1))), mx.cpu())

    def predict(self, X: onp.ndarray) -> onp.ndarray:
        if not self._built():
            raise self.not_built()
        return super().predict(X)

    def _w_b(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._built():
            raise self.not_built()
        ctx = self.net.weight.list_ctx()[0]
        return self.net.weight.data(ctx), self.net.bias.data(ctx)

    def _w_b_grads(self) -> tuple[np.ndarray, np.ndarray] | None:
        if not self._built() or not _stepped(self):
            return None
        ctx = self.net.weight.list_ctx()[0]
        return self.net.weight.grad(ctx), self.net.bias.grad(ctx)

    def _assign_w_b(self, w: onp.ndarray, b: onp.ndarray) -> None:
        if not self._built():  # set_w_b on a fresh model fixes its width
            self._build(w.shape[0])
        # Parameter.set_data writes in place into the copy on every context.
        self.net.weight.set_data(np.array(w.reshape(1, -1)))
        self.net.bias.set_data(np.array(b.reshape(1)))
