"""JAX array primitives for the core loader (see ``d2lx.data.ArrayOps``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Sharding


class JaxOps:
    """Places arrays on one ``jax.Device`` (or a sharding); gathers rows with ``jnp.take``.

    Every transfer is an explicit ``jax.device_put``, so a run works under
    ``jax.transfer_guard("disallow")``: nothing crosses to the device behind
    the loader's back. Indices are int32 because JAX disables 64-bit types by
    default (``jax_enable_x64``); an int64 vector would be silently narrowed.

    Under data parallelism the placement is a ``NamedSharding`` that
    replicates every array over the trainer's mesh: each device holds the
    (small) dataset, and the compiled step takes its slice of each batch.
    """

    def __init__(self, placement: jax.Device | Sharding) -> None:
        self.device = placement
        if isinstance(placement, Sharding):
            ids = ",".join(str(d.id) for d in sorted(placement.device_set, key=lambda d: d.id))
            platform = next(iter(placement.device_set)).platform
            self.device_key = f"jax:{platform}:{ids}:{placement}"
        else:
            self.device_key = f"jax:{placement.platform}:{placement.id}"

    def asarray(self, array: np.ndarray) -> jax.Array:
        return jax.device_put(np.ascontiguousarray(array), self.device)

    def indices(self, order: np.ndarray) -> jax.Array:
        return jax.device_put(np.asarray(order, dtype=np.int32), self.device)

    def take(self, array: jax.Array, indices: jax.Array) -> jax.Array:
        return jnp.take(array, indices, axis=0)
