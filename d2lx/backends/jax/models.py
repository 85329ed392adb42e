"""Linear regression from scratch (d2l 3.4) and concise (d2l 3.5) in JAX/Flax/optax."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from d2lx.backends.jax.module import Module, Params, like, numpy_leaf
from d2lx.hyperparameters import HyperParameters
from d2lx.module import check_linear_args, check_loss_args, check_regression_shapes
from d2lx.seeding import generator, initial_linear_params, resolve_seed
from d2lx.validation import check_float


class SGD(optax.GradientTransformation, HyperParameters):
    """Minibatch stochastic gradient descent, hand-written (d2l 3.4.3).

    It *is* an ``optax.GradientTransformation`` (the ``(init, update)``
    named tuple), so ``TrainState.create(tx=SGD(lr))``, ``optax.chain`` and
    ``state.apply_gradients`` take it as they take ``optax.sgd(lr)``. SGD has
    no state (``optax.EmptyState``); ``update`` returns ``-lr * g``, which
    ``optax.apply_updates`` adds to the parameters. ``SGD(lr)()`` returns a
    plain ``GradientTransformation``, as the seed's ``__call__`` does.
    """

    lr: float

    def __new__(cls, lr: float) -> SGD:
        lr = check_float("lr", lr, positive=True, example="0.03")

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


def _seed_field() -> Any:
    return dataclasses.field(default=None, kw_only=True)


def _resolve_model_seed(module: Module) -> None:
    """Fix ``module.seed`` to a concrete number at construction.

    flax re-creates (clones) a module from its fields for every ``init`` and
    ``apply``; with ``seed=None`` meaning "the global seed *now*", a clone made
    after ``d2lx.seed(...)`` changed would draw other initial values. Resolving
    once makes every clone draw the same numbers as the first.
    """
    seed = resolve_seed(module.seed)
    if seed is None:  # d2lx.seed(None): fresh OS entropy, drawn once for this model
        seed = int(np.random.SeedSequence().entropy)
    module.seed = seed


def _core_draw(seed: int, num_inputs: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    return initial_linear_params(generator("params", seed), num_inputs, sigma)


def _accept_loss_keyword(cls: type) -> None:
    """Let ``cls(...)`` take ``loss=`` for its ``loss_name`` field (d2l 3.5.6's spelling).

    A flax module is a dataclass: a field named ``loss`` would become an
    instance attribute hiding the ``loss()`` method. The field is therefore
    ``loss_name``, and the dataclass ``__init__`` flax generates is wrapped
    to accept ``loss=`` too (flax's ``clone`` passes ``loss_name=``).
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
    params = list(sig.parameters.values())
    loss_param = inspect.Parameter("loss", inspect.Parameter.KEYWORD_ONLY, default="squared",
                                   annotation="str")
    __init__.__signature__ = sig.replace(parameters=[*params, loss_param])  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[misc]


class _LinearModel(Module):
    """What both linear models share: the loss choice, ``predict`` and ``get_grads``.

    ``loss="huber", huber_sigma=s`` (keyword-only; d2l 3.5.6, exercise 2)
    trains on Huber's robust loss in the seed's form, ``|r| - s/2`` if
    ``|r| > s`` else ``r**2 / (2 s)``. ``optax.huber_loss(..., delta=s)`` is
    ``s`` times that (``0.5 r**2`` inside, ``s |r| - s**2/2`` outside), so the
    model divides it by ``s``: the framework's loss, the seed's numbers.
    """

    loss_name: str = dataclasses.field(default="squared", kw_only=True)
    huber_sigma: float = dataclasses.field(default=1.0, kw_only=True)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)  # flax makes cls a dataclass here
        _accept_loss_keyword(cls)

    @nn.nowrap
    def _check_loss(self) -> dict[str, Any]:
        self.loss_name, self.huber_sigma = check_loss_args(self.loss_name, self.huber_sigma)
        # "loss", not an attribute (it would hide the loss() method), as on every backend
        return {"huber_sigma": self.huber_sigma, "loss": self.loss_name}

    def _batch_loss(self, y_hat: jax.Array, y: jax.Array, squared: Callable[[jax.Array], jax.Array]
                    ) -> jax.Array:
        """Mean over the batch of the chosen loss of the residuals ``y_hat - y``."""
        y = y.reshape(y_hat.shape)
        if self.loss_name == "huber":  # a Python string: decided at trace time
            return optax.huber_loss(y_hat, y, delta=self.huber_sigma).mean() / self.huber_sigma
        return squared(y_hat - y).mean()

    @nn.nowrap
    def _w_b_of(self, tree: Params) -> tuple[Any, Any]:
        raise NotImplementedError

    @nn.nowrap
    def get_grads(self) -> tuple[np.ndarray, np.ndarray]:
        """The gradients of ``w`` and ``b`` the last applied step used (NumPy float32).

        The compiled step keeps them in the state it carries from step to step
        (after clipping; under data parallelism, the global batch's gradient),
        so recording them costs no host sync; this call reads them once.
        """
        grads = self.current_grads()
        if grads is None:
            raise RuntimeError(f"{type(self).__name__} has no gradients yet: train it first")
        w, b = self._w_b_of(grads)
        return numpy_leaf(w, (-1, 1)), numpy_leaf(b, (1,))


class LinearRegressionScratch(_LinearModel):
    """The linear regression model implemented from scratch (d2l 3.4).

    ``w`` (``num_inputs`` x 1) and ``b`` (1,) are declared with
    ``self.param``. Their initializers ignore flax's PRNG key and return the
    draw of d2lx's seeded NumPy stream (normal(0, ``sigma``), zeros), so the
    same seed starts every backend from the same numbers.
    """

    num_inputs: int
    lr: float
    sigma: float = 0.01
    seed: int | None = _seed_field()

    def __post_init__(self) -> None:
        num_inputs, lr, sigma = check_linear_args(self.num_inputs, self.lr, self.sigma)
        self.num_inputs, self.lr, self.sigma = num_inputs, lr, sigma
        _resolve_model_seed(self)
        self.hparams = {"num_inputs": num_inputs, "lr": lr, "sigma": sigma, **self._check_loss()}
        super().__post_init__()

    def setup(self) -> None:
        draw = lambda i: _core_draw(self.seed, self.num_inputs, self.sigma)[i]  # noqa: E731
        self.w = self.param("w", lambda key, shape: jnp.asarray(draw(0).reshape(shape)),
                            (self.num_inputs, 1))
        self.b = self.param("b", lambda key, shape: jnp.asarray(draw(1).reshape(shape)), (1,))

    def forward(self, X: jax.Array) -> jax.Array:
        return jnp.matmul(X, self.w) + self.b

    def loss(self, params: Params, X: Sequence[jax.Array], y: jax.Array, state: Any) -> jax.Array:
        y_hat = state.apply_fn({"params": params}, *X)
        return self._batch_loss(y_hat, y, lambda r: r**2 / 2)

    @nn.nowrap
    def configure_optimizers(self) -> SGD:
        return SGD(self.lr)

    @nn.nowrap
    def check_data_shapes(self, X_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> None:
        check_regression_shapes(type(self).__name__, self.num_inputs, X_shape, y_shape)

    @nn.nowrap
    def _w_b_of(self, tree: Params) -> tuple[Any, Any]:
        return tree["w"], tree["b"]

    @nn.nowrap
    def _params_for_predict(self) -> Params:
        return self._params_or_init()

    @nn.nowrap
    def _params_or_init(self) -> Params:
        params = self.current_params()
        if params is None:  # before any fit: flax init (the key is ignored by the initializers)
            params = self.apply_init((jnp.zeros((1, self.num_inputs), jnp.float32),),
                                     jax.random.key(0))["params"]
            self._parked_params = params
        return params

    @nn.nowrap
    def get_w_b(self, state: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """``w`` (num_inputs, 1) and ``b`` (1,) as NumPy float32 (of ``state`` if given)."""
        params = self._params_or_init() if state is None else state.params
        return numpy_leaf(params["w"], (-1, 1)), numpy_leaf(params["b"], (1,))

    @nn.nowrap
    def set_w_b(self, w: np.ndarray, b: np.ndarray) -> None:
        params = self._params_or_init()
        self.replace_params({**params, "w": like(params["w"], np.reshape(w, (-1, 1))),
                             "b": like(params["b"], np.reshape(b, (1,)))})


class LinearRegression(_LinearModel):
    """The concise linear regression model (d2l 3.5): ``nn.Dense(1)`` at ``self.net``.

    The loss is the mean squared error *without* d2l 3.4's 1/2 factor
    (``optax.squared_error``, not ``optax.l2_loss``), the same on every d2lx
    backend; the optimizer is ``optax.sgd(lr)``. The layer's width is known
    only when ``init`` sees data; its kernel initializer then draws
    normal(0, ``sigma``) from d2lx's seeded stream (bias 0).
    """

    lr: float
    sigma: float = dataclasses.field(default=0.01, kw_only=True)
    seed: int | None = _seed_field()

    def __post_init__(self) -> None:
        _, lr, sigma = check_linear_args(None, self.lr, self.sigma)
        self.lr, self.sigma = lr, sigma
        _resolve_model_seed(self)
        self.hparams = {"lr": lr, "sigma": sigma, **self._check_loss()}
        super().__post_init__()

    def _kernel_init(self, key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        del key  # d2lx's NumPy stream, not flax's key, makes every backend start alike
        w, _ = _core_draw(self.seed, int(shape[0]), self.sigma)
        return jnp.asarray(w.reshape(tuple(shape)), dtype)

    def setup(self) -> None:
        self.net = nn.Dense(1, kernel_init=self._kernel_init, bias_init=nn.initializers.zeros)

    def forward(self, X: jax.Array) -> jax.Array:
        return self.net(X)

    def loss(self, params: Params, X: Sequence[jax.Array], y: jax.Array, state: Any) -> jax.Array:
        y_hat = state.apply_fn({"params": params}, *X)
        return self._batch_loss(y_hat, y, optax.squared_error)

    @nn.nowrap
    def configure_optimizers(self) -> optax.GradientTransformation:
        return optax.sgd(self.lr)

    @property
    @nn.nowrap
    def num_inputs(self) -> int | None:
        """The layer's width, ``None`` until ``init`` has seen data (a lazy layer)."""
        params = self.current_params()
        return None if params is None else int(params["net"]["kernel"].shape[0])

    @nn.nowrap
    def check_data_shapes(self, X_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> None:
        check_regression_shapes(type(self).__name__, self.num_inputs, X_shape, y_shape)

    @nn.nowrap
    def _w_b_of(self, tree: Params) -> tuple[Any, Any]:
        return tree["net"]["kernel"], tree["net"]["bias"]

    @nn.nowrap
    def get_w_b(self, state: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """``w`` (num_inputs, 1) and ``b`` (1,) as NumPy (d2l 3.5 passes ``state``)."""
        params = self.current_params() if state is None else state.params
        if params is None:
            raise RuntimeError("LinearRegression has no weights before its first fit (lazy layer)")
        net = params["net"]
        return numpy_leaf(net["kernel"], (-1, 1)), numpy_leaf(net["bias"], (1,))

    @nn.nowrap
    def set_w_b(self, w: np.ndarray, b: np.ndarray) -> None:
        """Set the layer's weights; on a fresh model this also fixes its width."""
        params = self.current_params()
        old = None if params is None else params["net"]
        kernel = like(None if old is None else old["kernel"], np.reshape(w, (-1, 1)))
        bias = like(None if old is None else old["bias"], np.reshape(b, (1,)))
        self.replace_params({"net": {"kernel": kernel, "bias": bias}})
