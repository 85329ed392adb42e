"""JAX arrays and devices: the core's array primitives, placement helpers, d2l's alias table."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Sharding, SingleDeviceSharding

from d2lx.helpers import method
from d2lx.loader import gather_block_bytes, host_array


class JaxOps:
    """:class:`d2lx.loader.ArrayOps` on one ``jax.Device`` (or a sharding); rows gathered with ``jnp.take``.

    Every transfer is an explicit ``jax.device_put``, so a run works under
    ``jax.transfer_guard("disallow")``. Indices are int32 because JAX
    disables 64-bit types by default (an int64 vector would be narrowed).
    Under data parallelism the placement replicates every array over the
    trainer's mesh; the compiled step takes its slice of each batch.
    """

    def __init__(self, placement: jax.Device | Sharding) -> None:
        self.device = placement
        if isinstance(placement, Sharding):
            ids = ",".join(str(d.id) for d in sorted(placement.device_set, key=lambda d: d.id))
            platform = next(iter(placement.device_set)).platform
            self.device_key = f"jax:{platform}:{ids}:{placement}"
        else:
            platform = placement.platform
            self.device_key = f"jax:{platform}:{placement.id}"
        self.gather_block_bytes = gather_block_bytes(platform == "cpu")

    def asarray(self, array: np.ndarray) -> jax.Array:
        return jax.device_put(np.ascontiguousarray(array), self.device)

    def indices(self, order: np.ndarray) -> jax.Array:
        return jax.device_put(np.asarray(order, dtype=np.int32), self.device)

    def take(self, array: jax.Array, indices: jax.Array) -> jax.Array:
        return jnp.take(array, indices, axis=0)

    def split(self, array: jax.Array, size: int) -> Sequence[jax.Array]:
        return _split(array, size)

    def to_device(self, value: Any) -> jax.Array:
        if isinstance(value, jax.core.Tracer):  # inside the compiled step (a reader's prepare_batch)
            return value  # the computation's placement decides
        return place(value if isinstance(value, jax.Array) else host_array(value), self.device)

    def to_host(self, values: Sequence[Any]) -> np.ndarray:
        """One device call and one transfer for an epoch of losses; else leaf by leaf.

        ``jax.device_get`` of a list fetches each array on its own (about
        5 us each, 0.5 ms for a hundred steps' losses); a jitted stack of
        them is one dispatch (about 30 us) and one copy. It is compiled once
        per number of values, which an epoch repeats. A single array is read
        with ``np.asarray``: ``jax.device_get`` first walks it as a tree and
        starts an asynchronous copy, about 15 us more per read.
        """
        first = values[0] if values else None
        if isinstance(first, jax.Array) and not isinstance(first, jax.core.Tracer):
            kind = type(first)  # by identity: an isinstance, a shape or a sharding per loss costs ~1 us
            if all(type(v) is kind for v in values):
                try:
                    stacked = _stack_scalars(*values)
                except (TypeError, ValueError):  # shapes that do not stack, or on different devices
                    pass
                else:
                    return np.asarray(stacked, dtype=np.float64).reshape(-1)
        host = values if all(isinstance(v, np.ndarray) for v in values) else jax.device_get(list(values))
        return np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in host])


@functools.partial(jax.jit, static_argnums=1)
def _split(array: jax.Array, size: int) -> list[jax.Array]:
    n = array.shape[0]
    return jnp.split(array, list(range(size, n, size))) if n > size else [array]


@jax.jit
def _stack_scalars(*values: jax.Array) -> jax.Array:
    return jnp.stack(values)


def place(tree: Any, placement: Any) -> Any:
    """``tree`` with every array on ``placement``, moving only the leaves that are not there.

    Leaves that are not arrays (``optax.EmptyState`` the class, as d2l's SGD
    returns it) stay as they are.
    """
    target = placement if isinstance(placement, Sharding) else SingleDeviceSharding(placement)

    def move(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array):
            # (jit outputs of constants may be uncommitted, yet already where they belong)
            return leaf if leaf.sharding.is_equivalent_to(target, leaf.ndim) else jax.device_put(leaf, target)
        if isinstance(leaf, (np.ndarray, np.generic, float, int)) and not isinstance(leaf, bool):
            return jax.device_put(leaf, target)
        return leaf

    return jax.tree_util.tree_map(move, tree)


def numpy_leaf(value: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 copy of ``value`` in ``shape`` (framework-free result)."""
    return np.array(jax.device_get(value), dtype=np.float32).reshape(shape)


def like(old: jax.Array | None, value: np.ndarray) -> jax.Array:
    """``value`` as a JAX array placed like ``old`` (its device or sharding; the default device if none)."""
    arr = np.asarray(value, dtype=np.float32)
    if old is not None and isinstance(old, jax.Array):
        return jax.device_put(arr.reshape(old.shape), old.sharding)
    return jnp.asarray(arr)


def gpu_devices() -> list[jax.Device]:
    """The GPUs JAX can use; empty when jaxlib has no GPU backend."""
    try:
        return list(jax.devices("gpu"))
    except RuntimeError:  # "Unknown backend gpu" / no CUDA plugin installed
        return []


def cpu() -> jax.Device:
    """The CPU device."""
    return jax.devices("cpu")[0]


def gpu(i: int = 0) -> jax.Device:
    """GPU ``i``."""
    return jax.devices("gpu")[i]


def num_gpus() -> int:
    """The number of GPUs JAX can use."""
    return len(gpu_devices())


def _numpy(x: Any, *args: Any, **kwargs: Any) -> np.ndarray:
    """A NumPy copy of an array (d2l: ``np.asarray``)."""
    return np.asarray(x, *args, **kwargs)


def _transpose(a: Any) -> Any:
    """``a.T`` (d2l's alias)."""
    return a.T


#: d2l 1.0.3's alias table for JAX: the same names, the same meaning (JAX has no global RNG,
#: hence no ``normal``/``rand``/``randn``; d2l draws keys with ``get_key``).
ALIASES: dict[str, Any] = {
    "nn_Module": nn.Module, "to": jax.device_put, "numpy": _numpy, "transpose": _transpose,
    "sigmoid": jax.nn.sigmoid,
    "ones_like": jnp.ones_like, "ones": jnp.ones, "zeros_like": jnp.zeros_like, "zeros": jnp.zeros,
    "arange": jnp.arange, "meshgrid": jnp.meshgrid, "sin": jnp.sin, "sinh": jnp.sinh, "cos": jnp.cos,
    "cosh": jnp.cosh, "tanh": jnp.tanh, "linspace": jnp.linspace, "exp": jnp.exp, "log": jnp.log,
    "tensor": jnp.array, "expand_dims": jnp.expand_dims, "matmul": jnp.matmul, "int32": jnp.int32,
    "int64": jnp.int64, "float32": jnp.float32, "concat": jnp.concatenate, "stack": jnp.stack,
    "abs": jnp.abs, "eye": jnp.eye,
    "reshape": method("reshape"), "reduce_sum": method("sum"), "argmax": method("argmax"),
    "astype": method("astype"), "reduce_mean": method("mean"), "swapaxes": method("swapaxes"),
    "repeat": method("repeat"),
}
