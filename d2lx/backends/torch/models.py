"""Linear regression from scratch (d2l 3.4) and concise (d2l 3.5): PyTorch's lines.

What both models share on every backend (checks, hyperparameters, ``w``/``b``
in d2lx's layout) is :class:`d2lx.linear.LinearModel`; this file only says
where PyTorch keeps ``w`` and ``b`` and which layer, loss and optimizer run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from d2lx.backends.torch.module import Module
from d2lx.hyperparameters import HyperParameters
from d2lx.linear import LinearModel
from d2lx.seeding import generator, initial_linear_params, resolve_seed


class SGD(HyperParameters):
    """Minibatch stochastic gradient descent, hand-written (d2l 3.4.3).

    Two details differ from the book's lines, not its numbers: the update is
    one in-place ``add_`` per parameter (``param -= lr * grad`` launches two
    kernels), and ``zero_grad`` drops the gradients (``grad = None``, as
    ``torch.optim`` does by default) so that ``backward`` writes them afresh
    instead of adding to zeros. On a small model each kernel saved is a few
    microseconds of a step of about a hundred.
    """

    params: Sequence[torch.Tensor]
    lr: float

    def __init__(self, params: Sequence[torch.Tensor], lr: float) -> None:
        self.save_hyperparameters()

    def step(self) -> None:
        with torch.no_grad():
            for param in self.params:
                if param.grad is not None:
                    param.add_(param.grad, alpha=-self.lr)

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None


def _huber(loss: str, huber_sigma: float | None) -> nn.Module | None:
    """``nn.HuberLoss(delta=s)``: ``s`` times d2l's Huber loss with sigma ``s`` (``loss`` divides it out)."""
    return nn.HuberLoss(delta=huber_sigma) if loss == "huber" else None


class LinearRegressionScratch(LinearModel, Module):
    """The linear regression model implemented from scratch (d2l 3.4).

    ``w`` (``num_inputs`` x 1, normal(0, ``sigma``)) and ``b`` (zeros) come
    from d2lx's seeded NumPy stream, so every backend starts from the same
    numbers. They are ``nn.Parameter`` s (tensors with ``requires_grad``), so
    ``.to(device)``, ``state_dict`` and DDP see them; ``model.w`` reads as in d2l.
    """

    def __init__(self, num_inputs: int, lr: float, sigma: float = 0.01, *, seed: int | None = None,
                 loss: str = "squared", huber_sigma: float | None = None) -> None:
        super().__init__()
        self.init_linear(num_inputs=num_inputs, lr=lr, sigma=sigma, loss=loss, huber_sigma=huber_sigma)
        self.huber = _huber(self.loss_name, self.huber_sigma)
        w, b = initial_linear_params(generator("params", resolve_seed(seed)), int(num_inputs), self.sigma)
        self.w = nn.Parameter(torch.from_numpy(w))
        self.b = nn.Parameter(torch.from_numpy(b))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        # d2l's X @ w + b; for a batch of rows as one fused kernel (and one backward node)
        return torch.addmm(self.b, X, self.w) if X.dim() == 2 else torch.matmul(X, self.w) + self.b

    def loss(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.huber is not None:
            return self.huber(y_hat, y) / self.huber_sigma
        # d2l's mean of (y_hat - y)**2 / 2: mse_loss is one kernel where the book's lines launch four
        # (halving is exact in floating point, so it may come after the mean)
        return nn.functional.mse_loss(y_hat, y) / 2

    def configure_optimizers(self) -> SGD:
        return SGD([self.w, self.b], self.lr)

    def _w_b(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.w, self.b

    def _w_b_grads(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None if self.w.grad is None or self.b.grad is None else (self.w.grad, self.b.grad)

    def _assign_w_b(self, w: np.ndarray, b: np.ndarray) -> None:
        with torch.no_grad():
            self.w.copy_(torch.from_numpy(w))
            self.b.copy_(torch.from_numpy(b))


class LinearRegression(LinearModel, Module):
    """The concise model (d2l 3.5): ``nn.LazyLinear(1)`` at ``self.net``, ``nn.MSELoss``, ``optim.SGD``.

    The loss is the mean squared error *without* d2l 3.4's 1/2 factor, the
    same on every d2lx backend. The lazy layer learns its width from the
    first batch; its weight is then drawn from d2lx's seeded stream
    (normal(0, ``sigma``)), its bias is 0.
    """

    def __init__(self, lr: float, *, sigma: float = 0.01, seed: int | None = None, loss: str = "squared",
                 huber_sigma: float | None = None) -> None:
        super().__init__()
        self.init_linear(num_inputs=None, lr=lr, sigma=sigma, loss=loss, huber_sigma=huber_sigma)
        self.net = nn.LazyLinear(1)
        self.loss_fn = _huber(self.loss_name, self.huber_sigma) or nn.MSELoss()
        self._loss_scale = 1.0 / self.huber_sigma if self.loss_name == "huber" else 1.0
        self._param_rng = generator("params", resolve_seed(seed))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.net(X)

    def loss(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        l = self.loss_fn(y_hat, y)
        return l * self._loss_scale if self._loss_scale != 1.0 else l

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), self.lr)

    @property
    def num_inputs(self) -> int | None:  # type: ignore[override]
        return None if self._lazy() else int(self.net.in_features)

    def _lazy(self) -> bool:
        return isinstance(self.net.weight, nn.parameter.UninitializedParameter)

    def materialize(self, example: Sequence[Any], device: torch.device) -> None:
        lazy = self._lazy()
        super().materialize(example, device)
        if lazy:  # the width is known now: start from the core's seeded draw
            w, b = initial_linear_params(self._param_rng, self.num_inputs or 0, self.sigma)
            self._assign_w_b(w, b)

    def _build(self, num_inputs: int) -> None:
        self.materialize((torch.zeros(1, num_inputs), torch.zeros(1, 1)), torch.device("cpu"))

    def _w_b(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._lazy():
            raise self.not_built()
        return self.net.weight, self.net.bias

    def _w_b_grads(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self._lazy() or self.net.weight.grad is None or self.net.bias.grad is None:
            return None
        return self.net.weight.grad, self.net.bias.grad

    def _assign_w_b(self, w: np.ndarray, b: np.ndarray) -> None:
        if self._lazy():  # set_w_b on a fresh model fixes its width
            self._build(w.shape[0])
        with torch.no_grad():
            self.net.weight.copy_(torch.from_numpy(w.reshape(1, -1)))
            self.net.bias.copy_(torch.from_numpy(b.reshape(1)))
