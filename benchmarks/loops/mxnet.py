"""The hand-written MXNet/Gluon loop (d2l 3.4/3.5 without d2lx), for ``d2lx bench``.

NumPy mode (``npx.set_np()``) as in d2l's MXNet chapter. The concise model
is a hybridized ``nn.Dense(1)`` (``static_alloc``/``static_shape``, so its
forward and backward are cached graphs) trained by ``gluon.Trainer``
(``'sgd'``) on the mean squared error; the scratch model keeps ``w`` and
``b`` as arrays with ``attach_grad`` and updates them in place. MXNet's
engine is asynchronous: the loop only waits when it reads the epoch's loss.
"""

from __future__ import annotations

from typing import Any

import mxnet as mx
import numpy as onp
from mxnet import autograd, gluon, npx
from mxnet import np as mnp

npx.set_np()

FRAMEWORK = "mxnet"
VARIANTS: tuple[str, ...] = ("hybridized",)


def framework_version() -> str:
    return str(mx.__version__)


class Loop:
    def __init__(self, X: onp.ndarray, y: onp.ndarray, model: str, lr: float, batch_size: int,
                 variant: str = "hybridized") -> None:
        if model not in ("concise", "scratch"):
            raise ValueError(model)
        self.ctx = mx.cpu()
        self.X = mnp.array(onp.asarray(X, onp.float32), ctx=self.ctx)
        self.y = mnp.array(onp.asarray(y, onp.float32), ctx=self.ctx)
        self.n, self.d = X.shape
        self.model, self.lr, self.bs = model, lr, batch_size

    def run(self, epochs: int, w0: onp.ndarray, b0: onp.ndarray, rng: onp.random.Generator) -> dict[str, Any]:
        X, y, n, bs, lr = self.X, self.y, self.n, self.bs, self.lr
        losses: list[float] = []
        if self.model == "concise":
            net = gluon.nn.Dense(1, in_units=self.d)
            net.initialize(ctx=self.ctx)
            net.weight.set_data(mnp.array(w0.reshape(1, -1).astype(onp.float32), ctx=self.ctx))
            net.bias.set_data(mnp.array(b0.reshape(1).astype(onp.float32), ctx=self.ctx))
            net.hybridize(static_alloc=True, static_shape=True)
            trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr})
            for _ in range(epochs):
                idx = mnp.array(rng.permutation(n).astype(onp.int64), ctx=self.ctx, dtype="int64")
                Xe, ye = mnp.take(X, idx, axis=0), mnp.take(y, idx, axis=0)
                step_losses = []
                for s in range(0, n, bs):
                    with autograd.record():
                        loss = ((net(Xe[s:s + bs]) - ye[s:s + bs]) ** 2).mean()
                    loss.backward()
                    trainer.step(1)
                    step_losses.append(loss)
                losses.append(float(mnp.stack(step_losses).mean().item()))
            w = net.weight.data().asnumpy().reshape(-1, 1)
            b = net.bias.data().asnumpy().reshape(1)
        else:
            w = mnp.array(w0.astype(onp.float32), ctx=self.ctx)
            b = mnp.array(b0.astype(onp.float32), ctx=self.ctx)
            w.attach_grad()
            b.attach_grad()
            for _ in range(epochs):
                idx = mnp.array(rng.permutation(n).astype(onp.int64), ctx=self.ctx, dtype="int64")
                Xe, ye = mnp.take(X, idx, axis=0), mnp.take(y, idx, axis=0)
                step_losses = []
                for s in range(0, n, bs):
                    with autograd.record():
                        loss = ((mnp.dot(Xe[s:s + bs], w) + b - ye[s:s + bs]) ** 2 / 2).mean()
                    loss.backward()
                    w -= lr * w.grad
                    b -= lr * b.grad
                    step_losses.append(loss)
                losses.append(float(mnp.stack(step_losses).mean().item()))
            w, b = w.asnumpy(), b.asnumpy()
        return {"w": onp.asarray(w, onp.float32), "b": onp.asarray(b, onp.float32), "losses": losses}
