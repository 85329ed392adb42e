"""JAX: the hand-written loops (flax + optax, no d2lx) and the reader's d2lx code.

One ``jax.jit``-compiled step per minibatch: the data stay on the device and
the step slices its batch itself (``lax.dynamic_slice_in_dim`` of the
epoch's shuffled copy, or a gather of the batch's rows), so a step is a
single dispatch. Parameters and
optimizer state are donated to the step (updated in place); the losses are
summed on the device and read once per epoch. The last, shorter batch gets
its own compiled shape. Validation is the same jitted slicing, without the
update. Over a loader (JAX has none: a list of NumPy batches) each batch is
passed to a jitted step as it comes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.loops import result

FRAMEWORK = "jax"
Batch = tuple[np.ndarray, np.ndarray]
# d2lx's JAX trainer computes float32 matmuls in full float32 ("highest"); so does the loop, or on an
# Ampere+ GPU XLA would use TF32 for it and the two would no longer run the same experiment (on a CPU
# every precision is full float32).
jax.config.update("jax_default_matmul_precision", "highest")


def framework_version() -> str:
    return str(jax.__version__)


def variants(kind: str) -> tuple[str, ...]:
    return ("jit",) if kind == "loader" else ("jit", "jit_take")


def jax_device(device: str) -> Any:
    """The benchmark's ``"cpu"``/``"gpu"`` as a JAX device (GPU 0, or the first CPU device)."""
    return jax.devices("gpu" if device == "gpu" else "cpu")[0]


def gpu_name() -> str | None:
    """GPU 0's name, or ``None`` where JAX sees no GPU."""
    try:
        return str(jax.devices("gpu")[0].device_kind)
    except RuntimeError:  # no GPU backend
        return None


def copier(X: np.ndarray, y: np.ndarray, device: str) -> Callable[[], None]:
    """One device-to-device copy of ``X`` and ``y`` (placed on ``device`` once), waited for.

    A jitted ``jnp.copy``: its outputs cannot alias inputs that are not
    donated, so XLA writes new buffers, a full read and write of the data.
    """
    dev = jax_device(device)
    src = [jax.device_put(np.asarray(a, np.float32), dev) for a in (X, y)]
    copy = jax.jit(lambda a, b: (jnp.copy(a), jnp.copy(b)))

    def run() -> None:
        jax.block_until_ready(copy(*src))

    return run


def _given(array: np.ndarray) -> Callable[..., jax.Array]:
    """A flax initializer that returns ``array`` (the benchmark's shared initial values)."""
    return lambda key, shape, dtype=jnp.float32: jnp.asarray(np.asarray(array).reshape(shape), dtype)


class _MLP(fnn.Module):
    hidden: int

    @fnn.compact
    def __call__(self, X: jax.Array) -> jax.Array:
        return fnn.Dense(1, name="out")(fnn.relu(fnn.Dense(self.hidden, name="hidden")(X)))


def _model(kind: str, init: Any, lr: float
           ) -> tuple[Callable[..., jax.Array], Any, Any, Callable[[Any], Any]]:
    """``(loss_fn, params, tx, to_d2lx)`` of a fresh model of ``kind`` from ``init``.

    ``tx`` is ``None`` for the scratch model (SGD by hand).
    """
    if kind == "scratch":
        def loss(params: Any, X: jax.Array, y: jax.Array) -> jax.Array:
            return jnp.mean((X @ params["w"] + params["b"] - y) ** 2 / 2)

        params = {"w": jnp.asarray(init["w"]), "b": jnp.asarray(init["b"])}
        return loss, params, None, lambda p: p
    if kind == "mlp":
        net: fnn.Module = _MLP(init["W1"].shape[1])
        params = {"params": {"hidden": {"kernel": jnp.asarray(init["W1"]), "bias": jnp.asarray(init["b1"])},
                             "out": {"kernel": jnp.asarray(init["W2"]), "bias": jnp.asarray(init["b2"])}}}

        def to_d2lx(p: Any) -> dict[str, Any]:
            d0, d1 = p["params"]["hidden"], p["params"]["out"]
            return {"W1": d0["kernel"], "b1": d0["bias"], "W2": d1["kernel"], "b2": d1["bias"]}
    else:
        net = fnn.Dense(1)
        params = {"params": {"kernel": jnp.asarray(init["w"]), "bias": jnp.asarray(init["b"])}}

        def to_d2lx(p: Any) -> dict[str, Any]:
            return {"w": p["params"]["kernel"], "b": p["params"]["bias"]}

    def mse(params: Any, X: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.mean((net.apply(params, X) - y) ** 2)

    return mse, params, optax.sgd(lr), to_d2lx


def _update(tx: Any, lr: float) -> Callable[[Any, Any, Any], tuple[Any, Any]]:
    def update(params: Any, opt_state: Any, grads: Any) -> tuple[Any, Any]:
        if tx is None:
            return jax.tree.map(lambda p, g: p - lr * g, params, grads), opt_state
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return update


class ArrayLoop:
    """Arrays on the device once; one jitted step per batch (see ``loops/__init__``).

    Variant ``jit`` gathers the epoch's shuffled copy once and slices it;
    ``jit_take`` gathers each batch's rows inside its step (no epoch-wide
    copy: one memory pass less on data larger than the caches).
    """

    def __init__(self, kind: str, arrays: tuple[np.ndarray, ...], lr: float, batch_size: int, init: Any,
                 variant: str = "jit", device: str = "cpu") -> None:
        self.device = jax_device(device)
        self.X, self.y, self.X_val, self.y_val = (jax.device_put(np.asarray(a, np.float32), self.device)
                                                  for a in arrays)
        self.kind, self.lr, self.bs, self.init = kind, lr, batch_size, init
        loss_fn, _, tx, _ = _model(kind, init, lr)
        update = _update(tx, lr)

        self.take = variant == "jit_take"

        def batch(X: jax.Array, y: jax.Array, order: jax.Array, start: jax.Array, size: int
                  ) -> tuple[jax.Array, jax.Array]:
            if self.take:
                rows = jax.lax.dynamic_slice_in_dim(order, start, size)
                return jnp.take(X, rows, axis=0), jnp.take(y, rows, axis=0)
            return jax.lax.dynamic_slice_in_dim(X, start, size), jax.lax.dynamic_slice_in_dim(y, start, size)

        @functools.partial(jax.jit, static_argnums=(7,), donate_argnums=(0, 1, 2))
        def step(params: Any, opt_state: Any, loss_sum: jax.Array, Xe: jax.Array, ye: jax.Array,
                 order: jax.Array, start: jax.Array, size: int) -> tuple[Any, Any, jax.Array]:
            Xb, yb = batch(Xe, ye, order, start, size)
            loss, grads = jax.value_and_grad(loss_fn)(params, Xb, yb)
            params, opt_state = update(params, opt_state, grads)
            return params, opt_state, loss_sum + loss

        @functools.partial(jax.jit, static_argnums=(5,), donate_argnums=(1,))
        def val_step(params: Any, loss_sum: jax.Array, X: jax.Array, y: jax.Array, start: jax.Array,
                     size: int) -> jax.Array:
            Xb = jax.lax.dynamic_slice_in_dim(X, start, size)
            yb = jax.lax.dynamic_slice_in_dim(y, start, size)
            return loss_sum + loss_fn(params, Xb, yb) * size

        @jax.jit
        def gather(X: jax.Array, y: jax.Array, idx: jax.Array) -> tuple[jax.Array, jax.Array]:
            return jnp.take(X, idx, axis=0), jnp.take(y, idx, axis=0)

        self._step, self._val_step, self._gather = step, val_step, gather
        # Batch starts as device scalars, made once: a Python int would be converted at every call.
        top = max(self.X.shape[0], self.X_val.shape[0])
        self._starts = [jax.device_put(np.int32(s), self.device) for s in range(0, top, batch_size)]

    def run(self, epochs: int, rng: np.random.Generator) -> dict[str, Any]:
        n, bs, n_val = self.X.shape[0], self.bs, self.X_val.shape[0]
        _, params, tx, to_d2lx = _model(self.kind, self.init, self.lr)
        params = jax.device_put(params, self.device)
        opt_state = tx.init(params) if tx is not None else ()
        losses, val_losses = [], []
        for _ in range(epochs):
            idx = jax.device_put(rng.permutation(n).astype(np.int32), self.device)
            Xe, ye = (self.X, self.y) if self.take else self._gather(self.X, self.y, idx)
            loss_sum = jnp.zeros((), jnp.float32)
            for i, s in enumerate(range(0, n, bs)):
                params, opt_state, loss_sum = self._step(params, opt_state, loss_sum, Xe, ye, idx,
                                                         self._starts[i], min(bs, n - s))
            val_sum = jnp.zeros((), jnp.float32)
            for i, s in enumerate(range(0, n_val, bs)):
                val_sum = self._val_step(params, val_sum, self.X_val, self.y_val, self._starts[i],
                                         min(bs, n_val - s))
            losses.append(float(loss_sum) / -(-n // bs))
            val_losses.append(float(val_sum) / n_val)
        return result(to_d2lx(params), losses, val_losses)


def make_loader(X: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int) -> list[Batch]:
    """JAX has no loader: a list of NumPy batches (in a seeded shuffled order, the same every epoch)."""
    order = np.random.default_rng(seed).permutation(len(X)) if shuffle else np.arange(len(X))
    return [(X[order[i:i + batch_size]], y[order[i:i + batch_size]]) for i in range(0, len(X), batch_size)]


class LoaderLoop:
    """The concise model over NumPy batches: each batch goes to a jitted step as it comes."""

    def __init__(self, train: list[Batch], val: list[Batch], lr: float, init: Any,
                 variant: str = "jit") -> None:
        self.train, self.val, self.lr, self.init = train, val, lr, init
        loss_fn, _, tx, _ = _model("concise", init, lr)
        update = _update(tx, lr)

        @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
        def step(params: Any, opt_state: Any, loss_sum: jax.Array, X: jax.Array, y: jax.Array
                 ) -> tuple[Any, Any, jax.Array]:
            loss, grads = jax.value_and_grad(loss_fn)(params, X, y)
            params, opt_state = update(params, opt_state, grads)
            return params, opt_state, loss_sum + loss

        @functools.partial(jax.jit, donate_argnums=(1,))
        def val_step(params: Any, loss_sum: jax.Array, X: jax.Array, y: jax.Array) -> jax.Array:
            return loss_sum + loss_fn(params, X, y) * X.shape[0]

        self._step, self._val_step = step, val_step

    def run(self, epochs: int) -> dict[str, Any]:
        _, params, tx, to_d2lx = _model("concise", self.init, self.lr)
        opt_state = tx.init(params)
        losses, val_losses = [], []
        n_val = sum(len(y) for _, y in self.val)
        for _ in range(epochs):
            loss_sum = jnp.zeros((), jnp.float32)
            for X, y in self.train:
                params, opt_state, loss_sum = self._step(params, opt_state, loss_sum, X, y)
            val_sum = jnp.zeros((), jnp.float32)
            for X, y in self.val:
                val_sum = self._val_step(params, val_sum, X, y)
            losses.append(float(loss_sum) / len(self.train))
            val_losses.append(float(val_sum) / n_val)
        return result(to_d2lx(params), losses, val_losses)


# -- the d2lx side: what a reader writes --------------------------------------------------------
@functools.cache
def _mlp_class(d2l: Any) -> type:
    """The reader's MLP class, made once per namespace: d2lx reuses compiled steps of equal models,
    and flax modules are equal only if they are of the same class with equal fields."""

    class MLP(d2l.Module):
        start: Any  # the initial parameters (a hashable Frozen)
        lr: float

        def setup(self) -> None:
            s = self.start
            self.hidden = fnn.Dense(s["W1"].shape[1], kernel_init=_given(s["W1"]), bias_init=_given(s["b1"]))
            self.out = fnn.Dense(1, kernel_init=_given(s["W2"]), bias_init=_given(s["b2"]))

        def forward(self, X: jax.Array) -> jax.Array:
            return self.out(fnn.relu(self.hidden(X)))

        def loss(self, params: Any, X: Any, y: jax.Array, state: Any) -> jax.Array:
            y_hat = state.apply_fn({"params": params}, *X)
            return jnp.mean((y_hat - y.reshape(y_hat.shape)) ** 2)

        def configure_optimizers(self) -> Any:
            return optax.sgd(self.lr)

    return MLP


def d2lx_mlp(d2l: Any, init: Any, lr: float) -> Any:
    """A reader's MLP on ``d2lx.jax``: flax ``Dense`` layers, the MSE, ``optax.sgd``."""
    return _mlp_class(d2l)(start=init, lr=lr)
