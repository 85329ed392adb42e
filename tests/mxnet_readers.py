"""A reader's Gluon model (d2l 3.5) and hand-written SGD (d2l 3.4), for the MXNet tests.

Import it after MXNet is known to be installed (``pytest.importorskip("mxnet")``).
"""

from __future__ import annotations

from typing import Any

import mxnet as mx
import numpy as onp
from mxnet import gluon, init

from d2lx import registry
from d2lx.hyperparameters import HyperParameters

Module = registry.load("mxnet").Module


class GluonNet(Module):  # type: ignore[misc, valid-type]
    """d2l 3.5's reader model with a chosen ``gluon.Trainer`` (deferred init, a structural name)."""

    def __init__(self, lr: float, optimizer: str = "sgd", **options: Any) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = gluon.nn.Dense(1)
        self.net.initialize(init.Constant(0.1))

    def loss(self, y_hat: Any, y: Any) -> Any:
        return ((y_hat - y) ** 2).mean()

    def configure_optimizers(self) -> Any:
        options = {"learning_rate": self.lr, **self.options}
        self.optim = gluon.Trainer(self.collect_params(), self.optimizer, options)
        return self.optim

    def arrays(self) -> list[onp.ndarray]:
        return [p.data(mx.cpu(0)).asnumpy() for p in self.collect_params().values()]


class ReaderSGD(HyperParameters):
    """d2l 3.4's MXNet SGD, as a reader writes it: it updates the arrays it was given (whatever state
    such an optimizer keeps is its own, so d2lx gives it the eager guard)."""

    def __init__(self, params: list[Any], lr: float) -> None:
        self.save_hyperparameters()

    def step(self, _: Any) -> None:
        for param in self.params:
            param -= self.lr * param.grad
