"""Linear regression from scratch (d2l 3.4) and concise (d2l 3.5) in PyTorch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from d2lx.backends.torch.module import Module
from d2lx.hyperparameters import HyperParameters
from d2lx.module import check_linear_args, check_loss_args, check_regression_shapes
from d2lx.seeding import generator, initial_linear_params, resolve_seed


class SGD(HyperParameters):
    """Minibatch stochastic gradient descent, hand-written (d2l 3.4.3)."""

    def __init__(self, params: Sequence[torch.Tensor], lr: float) -> None:
        self.save_hyperparameters()

    def step(self) -> None:
        with torch.no_grad():
            for param in self.params:
                param -= self.lr * param.grad

    def zero_grad(self) -> None:
        for param in self.params:
            if param.grad is not None:
                param.grad.zero_()


class _LinearMixin:
    """``get_w_b``/``set_w_b`` in d2lx's framework-free layout: w (n, 1), b (1,)."""

    def _w_b_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def get_w_b(self) -> tuple[np.ndarray, np.ndarray]:
        w, b = self._w_b_tensors()
        return (w.detach().cpu().numpy().reshape(-1, 1).copy(),
                b.detach().cpu().numpy().reshape(1).copy())

    def get_grads(self) -> tuple[np.ndarray, np.ndarray]:
        w, b = self._w_b_tensors()
        if w.grad is None or b.grad is None:
            raise RuntimeError(f"{type(self).__name__} has no gradients yet: train it first")
        return (w.grad.detach().cpu().numpy().reshape(-1, 1).copy(),
                b.grad.detach().cpu().numpy().reshape(1).copy())

    def _make_loss(self, loss: str, huber_sigma: float) -> nn.Module | None:
        """``nn.HuberLoss(delta=s)`` is ``s`` times d2l's Huber loss with sigma ``s``."""
        return nn.HuberLoss(delta=huber_sigma) if loss == "huber" else None

    def set_w_b(self, w: np.ndarray, b: np.ndarray) -> None:
        tw, tb = self._w_b_tensors()
        with torch.no_grad():
            tw.copy_(torch.from_numpy(np.asarray(w, np.float32).reshape(tw.shape)))
            tb.copy_(torch.from_numpy(np.asarray(b, np.float32).reshape(tb.shape)))


class LinearRegressionScratch(_LinearMixin, Module):
    """The linear regression model implemented from scratch.

    ``w`` (``num_inputs`` x 1, normal(0, ``sigma``)) and ``b`` (zeros) are
    explicit ``requires_grad`` tensors, drawn from d2lx's seeded NumPy stream
    so every backend starts from the same numbers. They are registered as
    ``nn.Parameter`` (a tensor with ``requires_grad``) rather than left as
    attributes, so ``.to(device)``, ``state_dict`` and
    ``DistributedDataParallel`` see them; d2l code reading ``model.w`` works
    unchanged.
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
        self.huber = self._make_loss(loss, huber_sigma)
        w, b = initial_linear_params(generator("params", resolve_seed(seed)), num_inputs, sigma)
        self.w = nn.Parameter(torch.from_numpy(w))
        self.b = nn.Parameter(torch.from_numpy(b))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return torch.matmul(X, self.w) + self.b

    def loss(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.huber is not None:
            return self.huber(y_hat, y) / self.huber_sigma
        l = (y_hat - y) ** 2 / 2
        return l.mean()

    def configure_optimizers(self) -> SGD:
        return SGD([self.w, self.b], self.lr)

    def param_tensors(self) -> list[torch.Tensor]:
        return [self.w, self.b]

    def check_data_shapes(self, X_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> None:
        check_regression_shapes(type(self).__name__, self.num_inputs, X_shape, y_shape)

    def _w_b_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.w, self.b


class LinearRegression(_LinearMixin, Module):
    """The concise linear regression model: ``nn.LazyLinear(1)``, ``nn.MSELoss``, ``optim.SGD``.

    The loss is the mean squared error *without* d2l 3.4's 1/2 factor, the
    same on every d2lx backend. The lazy layer's weight is set, once its
    width is known, from d2lx's seeded stream (normal(0, ``sigma``), bias 0).
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
        self.net = nn.LazyLinear(1)
        self.loss_fn = self._make_loss(loss, huber_sigma) or nn.MSELoss()
        self._loss_scale = 1.0 / huber_sigma if loss == "huber" else 1.0
        self._param_rng = generator("params", resolve_seed(seed))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.net(X)

    def loss(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self._loss_scale != 1.0:
            return self.loss_fn(y_hat, y) * self._loss_scale
        return self.loss_fn(y_hat, y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), self.lr)

    @property
    def num_inputs(self) -> int | None:
        return None if self._is_lazy() else int(self.net.in_features)

    def _is_lazy(self) -> bool:
        return isinstance(self.net.weight, nn.parameter.UninitializedParameter)

    def materialize(self, num_inputs: int, device: torch.device) -> None:
        if self._is_lazy():
            with torch.no_grad():
                self.net(torch.zeros(1, num_inputs))  # LazyLinear infers its width here
            w, b = initial_linear_params(self._param_rng, num_inputs, self.sigma)
            super().set_w_b(w, b)
        self.to(device)

    def set_w_b(self, w: np.ndarray, b: np.ndarray) -> None:
        """Set the weights; a still-lazy layer is built first with ``w``'s width."""
        if self._is_lazy():
            self.materialize(int(np.asarray(w).reshape(-1, 1).shape[0]), torch.device("cpu"))
        super().set_w_b(w, b)

    def check_data_shapes(self, X_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> None:
        check_regression_shapes(type(self).__name__, self.num_inputs, X_shape, y_shape)

    def _w_b_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._is_lazy():
            raise RuntimeError("LinearRegression has no weights before its first fit (lazy layer)")
        return self.net.weight, self.net.bias
