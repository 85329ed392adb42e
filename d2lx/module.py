"""The framework-neutral half of d2l's ``Module`` and the linear-model contract.

Each backend's ``Module`` is ``class Module(ModuleBase, <framework module>)``,
so a d2l user gets the framework's own class (``torch.nn.Module``,
``keras.Model``, ``gluon.Block``...) plus the d2l methods defined once here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from d2lx.errors import InvalidArgumentError, ShapeMismatchError
from d2lx.hyperparameters import HyperParameters
from d2lx.validation import check_float, check_int


class ModuleBase(HyperParameters):
    """d2l's ``Module`` API: ``forward``, ``loss``, ``training_step``...

    ``training_step`` and ``validation_step`` report their loss to the trainer
    with :meth:`log`, which is what fills ``trainer.history`` and stops a
    diverging run. Adapters whose step runs inside a compiled function (JAX)
    report losses from outside it instead.
    """

    trainer: Any = None

    if TYPE_CHECKING:  # the framework's module class provides __call__ at run time

        def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def loss(self, y_hat: Any, y: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define loss(y_hat, y)")

    def forward(self, X: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define forward(X)")

    def configure_optimizers(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define configure_optimizers()")

    def training_step(self, batch: Any) -> Any:
        loss = self.loss(self(*batch[:-1]), batch[-1])
        self.log("loss", loss, train=True, count=_batch_len(batch))
        return loss

    def validation_step(self, batch: Any) -> Any:
        loss = self.loss(self(*batch[:-1]), batch[-1])
        self.log("loss", loss, train=False, count=_batch_len(batch))
        return loss

    def log(self, key: str, value: Any, train: bool = True, count: int = 1) -> None:
        """Hand a per-step value to the trainer (no host sync; see ``history.LossMeter``)."""
        if self.trainer is not None and key == "loss":
            self.trainer.record_loss(value, train=train, count=count)

    def plot(self, key: str, value: Any, train: bool) -> None:
        """d2l's name for :meth:`log` (d2l draws here; d2lx records)."""
        self.log(key, value, train=train)

    def get_w_b(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the weight ``(num_inputs, 1)`` and bias ``(1,)`` as NumPy float32."""
        raise NotImplementedError(f"{type(self).__name__} has no linear weights to return")

    def get_grads(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the last step's gradients of ``w`` and ``b`` (layout of :meth:`get_w_b`).

        d2l 3.5.6, exercise 3: "how do you access the gradient of the weights?"
        These are the gradients the optimizer applied (after clipping and,
        under data parallelism, after averaging across devices).
        """
        raise NotImplementedError(f"{type(self).__name__} has no linear weights")


LOSSES = ("squared", "huber")


def check_loss_args(loss: Any, huber_sigma: Any) -> tuple[str, float]:
    """Validate the loss choice shared by both linear models on every backend.

    ``loss="squared"`` is the model's d2l loss (scratch: ``(y_hat-y)**2/2``;
    concise: the MSE). ``loss="huber"`` is Huber's robust loss of d2l 3.5.6,
    exercise 2: ``|r| - sigma/2`` if ``|r| > sigma`` else ``r**2 / (2 sigma)``,
    averaged over the batch, computed with the framework's own Huber loss. Its
    ``sigma`` is called ``huber_sigma`` here because ``sigma`` already names
    the standard deviation of the initial weights in d2l's signatures.
    """
    if loss not in LOSSES:
        raise InvalidArgumentError(f"unknown loss {loss!r}; use one of: {', '.join(LOSSES)}")
    return loss, check_float("huber_sigma", huber_sigma, positive=True, example="1.0")


def _batch_len(batch: Any) -> int:
    shape = getattr(batch[-1], "shape", None)
    return int(shape[0]) if shape else 1


def check_linear_args(num_inputs: int | None, lr: Any, sigma: Any) -> tuple[int | None, float, float]:
    """Validate the constructor arguments shared by both linear models."""
    n = None if num_inputs is None else check_int("num_inputs", num_inputs, minimum=1, example="2")
    return (n, check_float("lr", lr, positive=True, example="0.03"),
            check_float("sigma", sigma, nonnegative=True, example="0.01"))


def check_regression_shapes(
    model_name: str, num_inputs: int | None, X_shape: tuple[int, ...], y_shape: tuple[int, ...]
) -> None:
    """Refuse data a one-output linear model would mis-train on, before any step.

    The ``y`` check matters: a ``(n,)`` target broadcasts against the
    ``(n, 1)`` prediction into an ``(n, n)`` loss and trains on nonsense
    without any error from the framework.
    """
    if len(X_shape) != 2:
        raise ShapeMismatchError(
            f"{model_name} needs X of shape (examples, features), got {tuple(X_shape)}; "
            "reshape X to 2-D"
        )
    if num_inputs is not None and X_shape[1] != num_inputs:
        raise ShapeMismatchError(
            f"{model_name} was built with num_inputs={num_inputs} but the data has "
            f"{X_shape[1]} features; build it with num_inputs={X_shape[1]} or use matching data"
        )
    if tuple(y_shape) != (X_shape[0], 1):
        raise ShapeMismatchError(
            f"y has shape {tuple(y_shape)} but {model_name} predicts ({X_shape[0]}, 1); "
            "reshape y with y.reshape(-1, 1) (a 1-D y would broadcast into a wrong loss)"
        )
