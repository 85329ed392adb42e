"""MXNet/Gluon: the hand-written loops (d2l 3.4/3.5 and an MLP without d2lx) and the reader's d2lx code.

NumPy mode (``npx.set_np()``) as in d2l's MXNet chapter. The concise model
and the MLP are hybridized Gluon ``Dense`` layers trained by
``gluon.Trainer`` (``'sgd'``, ``step(1)`` since the loss is already a batch
mean) on the mean squared error; the scratch model keeps ``w`` and ``b`` as
arrays with ``attach_grad`` and updates them in place. The model is made
(and its graph cached) once per loop and its parameters reset before each
run. MXNet's engine is asynchronous: the loop only waits when it reads an
epoch's losses.

Variants: ``hybridized`` (``hybridize()``, as d2l and d2lx's concise model
write it) and ``static`` (``static_alloc``/``static_shape``: fixed buffers).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import mxnet as mx
import numpy as onp
from mxnet import autograd, gluon, npx
from mxnet import init as mx_init
from mxnet import np as mnp
from mxnet.gluon import nn

from benchmarks.loops import result

npx.set_np()

FRAMEWORK = "mxnet"
NAMES = {"mlp": ("W1", "b1", "W2", "b2"), "concise": ("w", "b"), "scratch": ("w", "b")}


def framework_version() -> str:
    return str(mx.__version__)


def variants(kind: str) -> tuple[str, ...]:
    return ("hybridized",) if kind == "scratch" else ("hybridized", "static")


def _dense_params(net: nn.Block) -> list[Any]:
    """The layers' parameters in d2lx's order: weight, bias of each ``Dense``."""
    return list(net.collect_params().values())


def set_params(net: nn.Block, kind: str, init: Any) -> None:
    """Write ``init`` (d2lx's layout) into the Dense layers (Gluon keeps weights as outputs x inputs)."""
    for p, name in zip(_dense_params(net), NAMES[kind]):
        value = onp.asarray(init[name])
        value = value.T if value.ndim == 2 else value.reshape(-1)
        p.set_data(mnp.array(onp.ascontiguousarray(value, onp.float32)))


def build_net(kind: str, init: Any, ctx: mx.Context) -> nn.HybridBlock:
    """The concise model's ``Dense(1)`` or the MLP's ``Sequential``, initialized from ``init``."""
    if kind == "mlp":
        d, h = init["W1"].shape
        net: nn.HybridBlock = nn.HybridSequential()
        net.add(nn.Dense(h, activation="relu", in_units=d), nn.Dense(1, in_units=h))
    else:
        net = nn.Dense(1, in_units=init["w"].shape[0])
    net.initialize(mx_init.Zero(), ctx=ctx)
    set_params(net, kind, init)
    return net


class _Model:
    """The model of ``kind``, made once; ``reset`` puts ``init`` back before a run."""

    def __init__(self, kind: str, init: Any, lr: float, variant: str, ctx: mx.Context) -> None:
        self.kind, self.init, self.lr = kind, init, lr
        if kind == "scratch":
            self.w, self.b = mnp.array(init["w"], ctx=ctx), mnp.array(init["b"], ctx=ctx)
            self.w.attach_grad()
            self.b.attach_grad()
        else:
            self.net = build_net(kind, init, ctx)
            static = variant == "static"
            self.net.hybridize(**({"static_alloc": True, "static_shape": True} if static else {}))
            self.trainer = gluon.Trainer(self.net.collect_params(), "sgd", {"learning_rate": lr})

    def reset(self) -> None:
        if self.kind == "scratch":
            self.w[:] = mnp.array(self.init["w"], ctx=self.w.ctx)
            self.b[:] = mnp.array(self.init["b"], ctx=self.b.ctx)
        else:
            set_params(self.net, self.kind, self.init)

    def loss(self, X: Any, y: Any) -> Any:
        if self.kind == "scratch":
            return ((mnp.dot(X, self.w) + self.b - y) ** 2 / 2).mean()
        return ((self.net(X) - y) ** 2).mean()

    def train(self, X: Any, y: Any) -> Any:
        with autograd.record():
            loss = self.loss(X, y)
        loss.backward()
        if self.kind == "scratch":
            self.w -= self.lr * self.w.grad
            self.b -= self.lr * self.b.grad
        else:
            self.trainer.step(1)
        return loss

    def validate(self, batches: Iterable[tuple[Any, Any]]) -> float:
        sums, count = [], 0
        for X, y in batches:
            sums.append(self.loss(X, y) * len(y))
            count += len(y)
        return float(mnp.stack(sums).sum().item()) / count

    def values(self) -> dict[str, Any]:
        if self.kind == "scratch":
            return {"w": self.w.asnumpy(), "b": self.b.asnumpy()}
        out = {}
        for p, name in zip(_dense_params(self.net), NAMES[self.kind]):
            value = p.data().asnumpy()
            out[name] = value.T if value.ndim == 2 else value
        return out


class ArrayLoop:
    """Arrays on the device once; per epoch one ``take``, slices as batches."""

    def __init__(self, kind: str, arrays: tuple[onp.ndarray, ...], lr: float, batch_size: int, init: Any,
                 variant: str = "hybridized") -> None:
        self.ctx = mx.cpu()
        self.X, self.y, self.X_val, self.y_val = (mnp.array(onp.asarray(a, onp.float32), ctx=self.ctx)
                                                  for a in arrays)
        self.bs = batch_size
        self.model = _Model(kind, init, lr, variant, self.ctx)

    def run(self, epochs: int, rng: onp.random.Generator) -> dict[str, Any]:
        n, n_val, bs, model = self.X.shape[0], self.X_val.shape[0], self.bs, self.model
        model.reset()
        losses, val_losses = [], []
        for _ in range(epochs):
            idx = mnp.array(rng.permutation(n).astype(onp.int64), ctx=self.ctx, dtype="int64")
            Xe, ye = mnp.take(self.X, idx, axis=0), mnp.take(self.y, idx, axis=0)
            step_losses = [model.train(Xe[s:s + bs], ye[s:s + bs]) for s in range(0, n, bs)]
            losses.append(float(mnp.stack(step_losses).mean().item()))
            val_losses.append(model.validate((self.X_val[s:s + bs], self.y_val[s:s + bs])
                                             for s in range(0, n_val, bs)))
        return result(model.values(), losses, val_losses)


def make_loader(X: onp.ndarray, y: onp.ndarray, batch_size: int, shuffle: bool,
                seed: int) -> gluon.data.DataLoader:
    """``gluon.data.DataLoader(ArrayDataset(X, y))`` (it shuffles with NumPy's global generator)."""
    return gluon.data.DataLoader(gluon.data.ArrayDataset(X, y), batch_size, shuffle=shuffle)


class LoaderLoop:
    """The concise model over Gluon ``DataLoader`` s (the user-loader path)."""

    def __init__(self, train: gluon.data.DataLoader, val: gluon.data.DataLoader, lr: float, init: Any,
                 variant: str = "hybridized") -> None:
        self.train, self.val = train, val
        self.model = _Model("concise", init, lr, variant, mx.cpu())

    def run(self, epochs: int) -> dict[str, Any]:
        model = self.model
        model.reset()
        losses, val_losses = [], []
        for _ in range(epochs):
            step_losses = [model.train(X, y) for X, y in self.train]
            losses.append(float(mnp.stack(step_losses).mean().item()))
            val_losses.append(model.validate(self.val))
        return result(model.values(), losses, val_losses)


# -- the d2lx side: what a reader writes --------------------------------------------------------
@functools.cache
def _mlp_class(d2l: Any) -> type:
    """The reader's MLP class, made once per namespace."""

    class MLP(d2l.Module):
        def __init__(self, start: Any, lr: float) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = build_net("mlp", start, mx.cpu())
            self.net.hybridize()

        def forward(self, X: Any) -> Any:
            return self.net(X)

        def loss(self, y_hat: Any, y: Any) -> Any:
            return ((y_hat - y) ** 2).mean()

        def configure_optimizers(self) -> gluon.Trainer:
            return gluon.Trainer(self.collect_params(), "sgd", {"learning_rate": self.lr})

    return MLP


def d2lx_mlp(d2l: Any, init: Any, lr: float) -> Any:
    """A reader's MLP on ``d2lx.mxnet``: hybridized Gluon ``Dense`` layers, the MSE, Gluon's SGD."""
    return _mlp_class(d2l)(init, lr)
