"""The shell of the two linear models (d2l 3.4 scratch, 3.5 concise), written once.

What is the same on every backend lives here: argument and loss checks,
hyperparameters, the data-shape check, and ``w``/``b``/gradients in d2lx's
framework-free layout (``w`` of shape ``(num_inputs, 1)``, ``b`` of shape
``(1,)``, NumPy float32, whatever layout the framework's layer keeps). A
backend's model adds only its framework lines: where ``w`` and ``b`` live
(:meth:`LinearModel._w_b`), how to write them (:meth:`LinearModel._assign_w_b`),
and its layers, loss and optimizer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from d2lx.errors import InvalidArgumentError, NotFittedError, ShapeMismatchError
from d2lx.loader import to_numpy
from d2lx.validation import as_float_array, check_float, check_int

LOSSES = ("squared", "huber")


def check_loss_args(loss: Any, huber_sigma: Any) -> tuple[str, float | None]:
    """Validate the loss choice (same on both linear models and every backend).

    ``loss="squared"`` is the model's d2l loss (scratch: ``(y_hat-y)**2/2``;
    concise: the MSE). ``loss="huber"`` is Huber's robust loss of d2l 3.5.6,
    exercise 2: ``|r| - sigma/2`` if ``|r| > sigma`` else ``r**2 / (2 sigma)``,
    averaged over the batch, computed with the framework's own Huber loss.
    Its ``sigma`` is called ``huber_sigma`` (default 1.0) because ``sigma``
    already names the standard deviation of the initial weights in d2l's
    signatures; given with the squared loss, it would be silently unused,
    so it is refused.
    """
    if loss not in LOSSES:
        raise InvalidArgumentError(f"unknown loss {loss!r}; use one of: {', '.join(LOSSES)}")
    if loss != "huber":
        if huber_sigma is not None:
            raise InvalidArgumentError(
                f"huber_sigma={huber_sigma!r} sets the Huber loss's sigma but the loss is {loss!r}; "
                "pass loss='huber' too, or drop huber_sigma")
        return loss, None
    sigma = 1.0 if huber_sigma is None else huber_sigma
    return loss, check_float("huber_sigma", sigma, positive=True, float32=True, example="1.0")


def check_linear_args(num_inputs: Any, lr: Any, sigma: Any) -> tuple[int | None, float, float]:
    """Validate the constructor arguments both linear models share."""
    n = None if num_inputs is None else check_int("num_inputs", num_inputs, minimum=1, example="2")
    return (n, check_float("lr", lr, positive=True, float32=True, example="0.03"),
            check_float("sigma", sigma, nonnegative=True, float32=True, example="0.01"))


def check_regression_shapes(model_name: str, num_inputs: int | None, X_shape: tuple[int, ...],
                            y_shape: tuple[int, ...]) -> None:
    """Refuse data a one-output linear model would mis-train on, before any step.

    The ``y`` check matters: a ``(n,)`` target broadcasts against the
    ``(n, 1)`` prediction into an ``(n, n)`` loss and trains on nonsense
    without any error from the framework.
    """
    X_shape, y_shape = tuple(X_shape), tuple(y_shape)
    if len(X_shape) != 2:
        raise ShapeMismatchError(
            f"{model_name} needs X of shape (examples, features), got {X_shape}; reshape X to 2-D")
    if num_inputs is not None and X_shape[1] != num_inputs:
        raise ShapeMismatchError(
            f"{model_name} was built with num_inputs={num_inputs} but the data has "
            f"{X_shape[1]} features; build it with num_inputs={X_shape[1]} or use matching data")
    if y_shape != (X_shape[0], 1):
        raise ShapeMismatchError(
            f"y has shape {y_shape} but {model_name} predicts ({X_shape[0]}, 1); "
            "reshape y with y.reshape(-1, 1) (a 1-D y would broadcast into a wrong loss)")


class LinearModel:
    """Mixin of both linear models on every backend (see the module docstring).

    Subclasses call :meth:`init_linear` in ``__init__`` and implement
    :meth:`_w_b`, :meth:`_w_b_grads` and :meth:`_assign_w_b`.
    """

    hparams: dict[str, Any]
    num_inputs: int | None
    loss_name: str

    def init_linear(self, *, num_inputs: Any, lr: Any, sigma: Any, loss: Any,
                    huber_sigma: Any = None) -> None:
        """Check the arguments and keep them as attributes and ``hparams`` (as ``save_hyperparameters``)."""
        num_inputs, lr, sigma = check_linear_args(num_inputs, lr, sigma)
        loss, huber_sigma = check_loss_args(loss, huber_sigma)
        values = {"lr": lr, "sigma": sigma, "huber_sigma": huber_sigma}
        if num_inputs is not None:
            values = {"num_inputs": num_inputs, **values}
        for name, value in values.items():
            setattr(self, name, value)
        self.loss_name = loss  # not ``self.loss``: that would hide the loss() method
        self.hparams = {**values, "loss": loss}

    # -- what a backend's model provides ---------------------------------------------
    def _w_b(self) -> tuple[Any, Any]:
        """The weight and bias as framework arrays, in the framework's layout."""
        raise NotImplementedError

    def _w_b_grads(self) -> tuple[Any, Any] | None:
        """The gradients the last applied step used (framework arrays), or ``None`` before any step."""
        raise NotImplementedError

    def _assign_w_b(self, w: np.ndarray, b: np.ndarray) -> None:
        """Write ``w`` ``(num_inputs, 1)`` and ``b`` ``(1,)`` (float32 NumPy) into the model."""
        raise NotImplementedError

    # -- the framework-free surface -----------------------------------------------------
    def check_data_shapes(self, X_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> None:
        check_regression_shapes(type(self).__name__, self.num_inputs, X_shape, y_shape)

    def get_w_b(self) -> tuple[np.ndarray, np.ndarray]:
        """``w`` ``(num_inputs, 1)`` and ``b`` ``(1,)`` as NumPy float32 copies (the same on any backend)."""
        return _layout(*self._w_b())

    def get_grads(self) -> tuple[np.ndarray, np.ndarray]:
        """The gradients of ``w`` and ``b`` the last applied step used, in :meth:`get_w_b`'s layout.

        d2l 3.5.6, exercise 3: "how do you access the gradient of the
        weights?" These are the gradients the optimizer applied (after
        clipping and, under data parallelism, after averaging across devices).
        """
        grads = self._w_b_grads()
        if grads is None:
            raise NotFittedError(
                f"{type(self).__name__} has no gradients yet: no training step has been applied; "
                "call trainer.fit(model, data) first")
        return _layout(*grads)

    def set_w_b(self, w: Any, b: Any) -> None:
        """Set the weight and bias from NumPy (or any framework's) arrays in :meth:`get_w_b`'s layout."""
        w_np = as_float_array("w", w, example="np.zeros((2, 1))").reshape(-1, 1)
        b_np = as_float_array("b", b, example="np.zeros(1)").reshape(-1)
        if b_np.shape != (1,):
            raise ShapeMismatchError(f"b must hold one number, got shape {b_np.shape}")
        if self.num_inputs is not None and w_np.shape[0] != self.num_inputs:
            raise ShapeMismatchError(
                f"w has {w_np.shape[0]} weights but {type(self).__name__} has num_inputs={self.num_inputs}")
        self._assign_w_b(w_np, b_np)

    def not_built(self) -> NotFittedError:
        """The error for reading a lazy layer's weights before its width is known."""
        return NotFittedError(
            f"{type(self).__name__} has no weights yet: its layer learns its width from the first "
            "batch; call trainer.fit(model, data) first, or set_w_b(w, b)")


def _layout(w: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """d2lx's layout of a framework's ``(w, b)``: ``(n, 1)`` and ``(1,)`` float32 NumPy copies."""
    return (np.array(to_numpy(w), dtype=np.float32).reshape(-1, 1),
            np.array(to_numpy(b), dtype=np.float32).reshape(1))
