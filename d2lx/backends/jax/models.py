"""Linear regression from scratch (d2l 3.4) and concise (d2l 3.5): JAX/Flax/optax's lines.

What both models share on every backend is :class:`d2lx.linear.LinearModel`;
here they are flax dataclasses whose fields are the hyperparameters, whose
parameters live in the trainer's train state, and whose initializers draw
from d2lx's seeded NumPy stream instead of flax's key.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from d2lx.backends.jax.module import Module, Params
from d2lx.backends.jax.ops import like, numpy_leaf
from d2lx.hyperparameters import HyperParameters
from d2lx.linear import LinearModel, check_linear_args, check_loss_args
from d2lx.seeding import generator, initial_linear_params, resolve_seed
from d2lx.validation import check_float


class SGD(optax.GradientTransformation, HyperParameters):
    """Minibatch stochastic gradient descent, hand-written (d2l 3.4.3).

    It *is* an ``optax.GradientTransformation`` (the ``(init, update)``
    named tuple), so ``TrainState.create(tx=SGD(lr))`` and ``optax.chain``
    take it as they take ``optax.sgd(lr)``. SGD keeps no state; ``update``
    returns ``-lr * g``, which ``optax.apply_updates`` adds to the parameters.
    """

    lr: float

    def __new__(cls, lr: float) -> SGD:
        lr = check_float("lr", lr, positive=True, float32=True, example="0.03")

        def init(params: Params) -> optax.EmptyState:
            del params
            return optax.EmptyState()

        def update(updates: Params, state: optax.EmptyState, params: Params | None = None
                   ) -> tuple[Params, optax.EmptyState]:
            del params
            return jax.tree_util.tree_map(lambda g: -lr * g, updates), state

        return super().__new__(cls, init, update)

    def __init__(self, lr: float) -> None:
        lr = float(lr)
        self.save_hyperparameters()

    def __call__(self) -> optax.GradientTransformation:
        return optax.GradientTransformation(self.init, self.update)

    def __repr__(self) -> str:
        return f"SGD(lr={self.lr})"


def _resolve_model_seed(module: Module) -> None:
    """Fix ``module.seed`` to a number at construction.

    flax re-creates (clones) a module from its fields for every ``init`` and
    ``apply``; with ``seed=None`` meaning "the global seed *now*", a clone made
    after ``d2lx.seed(...)`` changed would draw other initial values.
    """
    seed = resolve_seed(module.seed)
    if seed is None:  # d2lx.seed(None): fresh OS entropy, drawn once for this model
        seed = int(np.random.SeedSequence().entropy)  # type: ignore[arg-type]
    module.seed = seed


def _accept_loss_keyword(cls: type) -> None:
    """Let ``cls(...)`` take ``loss=`` for its ``loss_name`` field (d2l 3.5.6's spelling).

    A field named ``loss`` would become an instance attribute hiding the
    ``loss()`` method, so the field is ``loss_name`` and flax's generated
    ``__init__`` is wrapped to accept ``loss=`` too.
    """
    init: Callable[..., None] = cls.__init__  # type: ignore[misc]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, loss: str | None = None, **kwargs: Any) -> None:
        if loss is not None:
            if "loss_name" in kwargs:
                raise TypeError("pass loss= or loss_name=, not both")
            kwargs["loss_name"] = loss
        init(self, *args, **kwargs)

    sig = inspect.signature(init)
    loss_param = inspect.Parameter("loss", inspect.Parameter.KEYWORD_ONLY, default="squared",
                                   annotation="str")
    __init__.__signature__ = sig.replace(parameters=[*sig.parameters.values(), loss_param])  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[misc]


class _LinearModel(LinearModel, Module):
    """What both JAX linear models share: the loss choice, seeds, ``w``/``b`` access.

    ``loss="huber", huber_sigma=s`` trains on d2l 3.5.6's Huber loss:
    ``optax.huber_loss(..., delta=s)`` is ``s`` times it, so it is divided by ``s``.
    """

    loss_name: str = dataclasses.field(default="squared", kw_only=True)
    huber_sigma: float | None = dataclasses.field(default=None, kw_only=True)
    seed: int | None = dataclasses.field(default=None, kw_only=True)
    if TYPE_CHECKING:  # fields of the two models (declared there, in d2l's order)
        lr: float
        sigma: float

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)  # flax makes cls a dataclass here
        _accept_loss_keyword(cls)

    @nn.nowrap
    def _check(self, num_inputs: int | None) -> None:
        n, self.lr, self.sigma = check_linear_args(num_inputs, self.lr, self.sigma)
        self.loss_name, self.huber_sigma = check_loss_args(self.loss_name, self.huber_sigma)
        _resolve_model_seed(self)
        self.hparams = {**({"num_inputs": n} if n is not None else {}), "lr": self.lr, "sigma": self.sigma,
                        "huber_sigma": self.huber_sigma, "loss": self.loss_name}

    def _batch_loss(self, y_hat: jax.Array, y: jax.Array, squared: Callable[[jax.Array], jax.Array]
                    ) -> jax.Array:
        """The batch mean of the chosen loss of the residuals ``y_hat - y``."""
        y = y.reshape(y_hat.shape)
        if self.loss_name == "huber":  # a Python string: decided at trace time
            return optax.huber_loss(y_hat, y, delta=self.huber_sigma).mean() / self.huber_sigma
        return squared(y_hat - y).mean()

    @nn.nowrap
    def _of(self, tree: Params) -> tuple[Any, Any]:
        raise NotImplementedError

    @nn.nowrap
    def _w_b(self) -> tuple[Any, Any]:
        params = self.current_params()
        if params is None:
            raise self.not_built()
        return self._of(params)

    @nn.nowrap
    def _w_b_grads(self) -> tuple[Any, Any] | None:
        grads = self.current_grads()
        return None if grads is None else self._of(grads)

    @nn.nowrap
    def get_w_b(self, state: Any = None) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        """``w`` (num_inputs, 1) and ``b`` (1,) as NumPy float32 (of ``state`` if given: d2l's JAX 3.5)."""
        if state is None:
            return super().get_w_b()
        w, b = self._of(state.params)
        return numpy_leaf(w, (-1, 1)), numpy_leaf(b, (1,))


class LinearRegressionScratch(_LinearModel):
    """The linear regression model implemented from scratch (d2l 3.4).

    ``w`` (``num_inputs`` x 1) and ``b`` (1,) are declared with
    ``self.param``; their initializers ignore flax's key and return d2lx's
    seeded draw (normal(0, ``sigma``), zeros), as on every backend.
    """

    num_inputs: int
    lr: float
    sigma: float = 0.01

    def __post_init__(self) -> None:
        self._check(self.num_inputs)
        super().__post_init__()

    def setup(self) -> None:
        draw = lambda i: initial_linear_params(generator("params", self.seed), self.num_inputs,  # noqa: E731
                                               self.sigma)[i]
        self.w = self.param("w", lambda key, shape: jnp.asarray(draw(0).reshape(shape)), (self.num_inputs, 1))
        self.b = self.param("b", lambda key, shape: jnp.asarray(draw(1).reshape(shape)), (1,))

    def forward(self, X: jax.Array) -> jax.Array:
        return jnp.matmul(X, self.w) + self.b

    def loss(self, params: Params, X: Sequence[jax.Array], y: jax.Array, state: Any) -> jax.Array:  # type: ignore[override]
        y_hat = state.apply_fn({"params": params}, *X)
        return self._batch_loss(y_hat, y, lambda r: r**2 / 2)

    @nn.nowrap
    def configure_optimizers(self) -> SGD:
        return SGD(self.lr)

    @nn.nowrap
    def _of(self, tree: Params) -> tuple[Any, Any]:
        return tree["w"], tree["b"]

    @nn.nowrap
    def _params_for_predict(self) -> Params:
        params = self.current_params()
        if params is None:  # before any fit: flax init (the key is ignored by the initializers)
            dummy = (jnp.zeros((1, self.num_inputs), jnp.float32),)
            params = self.apply_init(dummy, jax.random.key(0))["params"]
            self._parked_params = params
        return params

    @nn.nowrap
    def _w_b(self) -> tuple[Any, Any]:
        return self._of(self._params_for_predict())

    @nn.nowrap
    def _assign_w_b(self, w: np.ndarray, b: np.ndarray) -> None:
        params = self._params_for_predict()
        self.replace_params({**params, "w": like(params["w"], w), "b": like(params["b"], b)})


class LinearRegression(_LinearModel):
    """The concise model (d2l 3.5): ``nn.Dense(1)`` at ``self.net``, the MSE, ``optax.sgd``.

    The loss is the mean squared error *without* d2l 3.4's 1/2 factor
    (``optax.squared_error``), the same on every backend. The layer's width
    is known when ``init`` sees data; its kernel initializer then draws
    normal(0, ``sigma``) from d2lx's seeded stream (bias 0).
    """

    lr: float
    sigma: float = dataclasses.field(default=0.01, kw_only=True)

    def __post_init__(self) -> None:
        self._check(None)
        super().__post_init__()

    def _kernel_init(self, key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        del key  # d2lx's NumPy stream, not flax's key, makes every backend start alike
        w, _ = initial_linear_params(generator("params", self.seed), int(shape[0]), self.sigma)  # type: ignore[arg-type]
        return jnp.asarray(w.reshape(tuple(shape)), dtype)

    def setup(self) -> None:
        self.net = nn.Dense(1, kernel_init=self._kernel_init, bias_init=nn.initializers.zeros)

    def forward(self, X: jax.Array) -> jax.Array:
        return self.net(X)

    def loss(self, params: Params, X: Sequence[jax.Array], y: jax.Array, state: Any) -> jax.Array:  # type: ignore[override]
        y_hat = state.apply_fn({"params": params}, *X)
        return self._batch_loss(y_hat, y, optax.squared_error)

    @nn.nowrap
    def configure_optimizers(self) -> optax.GradientTransformation:
        return optax.sgd(self.lr)

    @property
    @nn.nowrap
    def num_inputs(self) -> int | None:  # type: ignore[override]
        """The layer's width, ``None`` until ``init`` has seen data (a lazy layer)."""
        params = self.current_params()
        return None if params is None else int(params["net"]["kernel"].shape[0])

    @nn.nowrap
    def _of(self, tree: Params) -> tuple[Any, Any]:
        return tree["net"]["kernel"], tree["net"]["bias"]

    @nn.nowrap
    def _assign_w_b(self, w: np.ndarray, b: np.ndarray) -> None:
        params = self.current_params()
        old = None if params is None else params["net"]
        self.replace_params({"net": {"kernel": like(None if old is None else old["kernel"], w),
                                     "bias": like(None if old is None else old["bias"], b)}})
