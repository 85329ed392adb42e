"""Data-parallel training for the JAX backend: one process, a ``Mesh``, XLA's SPMD partitioner.

``devices=N`` makes a one-axis ``jax.sharding.Mesh`` (axis ``data``) over N
devices. Data, parameters and optimizer state are replicated over it; inside
the one compiled step every batch is constrained to be sharded along
``data`` (``with_sharding_constraint``), so XLA gives each device its slice of
the batch and inserts the all-reduce of the gradients itself. The program is
the one-device program (the global batch's mean loss), only partitioned, so
the result is the one-device result up to float32 summation order; a batch
that does not divide by N is padded and masked by XLA, not by d2lx.

Several hosts would call ``jax.distributed.initialize()`` first and build the
mesh over every process's devices; d2lx does not do that for you (see
``docs/scaling-out.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"  #: the mesh axis the batch is sharded along


def make_mesh(devices: Sequence[jax.Device]) -> tuple[Mesh, NamedSharding]:
    """The mesh over ``devices`` and the placement that replicates an array over it."""
    mesh = Mesh(np.array(list(devices)), (DATA_AXIS,))
    return mesh, NamedSharding(mesh, PartitionSpec())


def shard_batch(mesh: Mesh | None, batch: tuple[Any, ...]) -> tuple[Any, ...]:
    """Inside a trace: split the batch's examples across the mesh (nothing without one)."""
    if mesh is None:
        return batch
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return tuple(jax.lax.with_sharding_constraint(t, sharding) for t in batch)
