"""The hand-written JAX loop (flax + optax, no d2lx), for ``d2lx bench``.

One ``jax.jit``-compiled step per minibatch: the epoch's shuffled arrays stay
on the device and the step slices its batch itself
(``lax.dynamic_slice_in_dim``), so a step is a single dispatch. Parameters and
optimizer state are donated to the step (updated in place). The loss is
summed inside the step, so nothing is read back to the host until the end
of the epoch. The last, shorter batch gets its own compiled shape.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import optax

FRAMEWORK = "jax"
VARIANTS: tuple[str, ...] = ("jit",)


def framework_version() -> str:
    return str(jax.__version__)


class Loop:
    def __init__(self, X: np.ndarray, y: np.ndarray, model: str, lr: float, batch_size: int,
                 variant: str = "jit") -> None:
        if model not in ("concise", "scratch"):
            raise ValueError(model)
        self.device = jax.devices("cpu")[0]
        self.X = jax.device_put(np.asarray(X, np.float32), self.device)
        self.y = jax.device_put(np.asarray(y, np.float32), self.device)
        self.n, self.d = X.shape
        self.model, self.bs = model, batch_size
        if model == "concise":
            net = fnn.Dense(1)
            tx = optax.sgd(lr)

            def loss_fn(params: Any, Xb: jax.Array, yb: jax.Array) -> jax.Array:
                return jnp.mean((net.apply(params, Xb) - yb) ** 2)

            def update(params: Any, opt_state: Any, grads: Any) -> tuple[Any, Any]:
                updates, opt_state = tx.update(grads, opt_state, params)
                return optax.apply_updates(params, updates), opt_state

            self.tx: Any = tx
        else:
            def loss_fn(params: Any, Xb: jax.Array, yb: jax.Array) -> jax.Array:
                return jnp.mean((Xb @ params["w"] + params["b"] - yb) ** 2 / 2)

            def update(params: Any, opt_state: Any, grads: Any) -> tuple[Any, Any]:
                return jax.tree.map(lambda p, g: p - lr * g, params, grads), opt_state

            self.tx = None

        @partial(jax.jit, static_argnums=(6,), donate_argnums=(0, 1, 2))
        def step(params: Any, opt_state: Any, loss_sum: jax.Array, Xe: jax.Array, ye: jax.Array,
                 start: jax.Array, size: int) -> tuple[Any, Any, jax.Array]:
            Xb = jax.lax.dynamic_slice_in_dim(Xe, start, size)
            yb = jax.lax.dynamic_slice_in_dim(ye, start, size)
            loss, grads = jax.value_and_grad(loss_fn)(params, Xb, yb)
            params, opt_state = update(params, opt_state, grads)
            return params, opt_state, loss_sum + loss

        @jax.jit
        def gather(X: jax.Array, y: jax.Array, idx: jax.Array) -> tuple[jax.Array, jax.Array]:
            return jnp.take(X, idx, axis=0), jnp.take(y, idx, axis=0)

        self._step, self._gather = step, gather

    def _init(self, w0: np.ndarray, b0: np.ndarray) -> tuple[Any, Any]:
        w = jnp.asarray(w0.reshape(self.d, 1), jnp.float32)
        b = jnp.asarray(b0.reshape(1), jnp.float32)
        if self.model == "concise":
            params = {"params": {"kernel": w, "bias": b}}
            return params, self.tx.init(params)
        return {"w": w, "b": b}, ()

    def run(self, epochs: int, w0: np.ndarray, b0: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        n, bs = self.n, self.bs
        params, opt_state = self._init(w0, b0)
        full, tail = divmod(n, bs)
        losses: list[float] = []
        for _ in range(epochs):
            idx = jax.device_put(rng.permutation(n).astype(np.int32), self.device)
            Xe, ye = self._gather(self.X, self.y, idx)
            loss_sum = jnp.zeros((), jnp.float32)
            for i in range(full):
                params, opt_state, loss_sum = self._step(params, opt_state, loss_sum, Xe, ye,
                                                         i * bs, bs)
            if tail:
                params, opt_state, loss_sum = self._step(params, opt_state, loss_sum, Xe, ye,
                                                         full * bs, tail)
            losses.append(float(loss_sum) / (full + (1 if tail else 0)))
        if self.model == "concise":
            w, b = params["params"]["kernel"], params["params"]["bias"]
        else:
            w, b = params["w"], params["b"]
        return {"w": np.asarray(w, np.float32).reshape(-1, 1), "b": np.asarray(b, np.float32).reshape(1),
                "losses": losses}
