"""Splitting a global batch across devices, the same way on every backend.

Data-parallel training (``devices=N``) gives each device a contiguous
part of every global batch; the torch, TensorFlow and MXNet adapters cut it
with :func:`shard_slices` and refuse, before the first step, batches too
small to give every device an example (:func:`check_shardable`). JAX leaves
the split to XLA's partitioner (:mod:`d2lx.backends.jax.distributed`).
"""

from __future__ import annotations

from d2lx.errors import InvalidArgumentError

__all__ = ["check_shardable", "shard_slices"]


def shard_slices(length: int, parts: int) -> list[slice]:
    """Split ``range(length)`` into ``parts`` contiguous slices, sizes differing by at most 1.

    Data-parallel training gives each device its part of a global batch
    (``numpy.array_split`` semantics: the first ``length % parts`` shards get
    one example more; a shard may be empty).
    """
    base, extra = divmod(length, parts)
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + base + (1 if i < extra else 0))
    return [slice(bounds[i], bounds[i + 1]) for i in range(parts)]


def check_shardable(num_examples: int, batch_size: int, devices: int) -> None:
    """Refuse batches that would leave a device without examples (data parallelism)."""
    last = num_examples % batch_size or batch_size
    smallest = min(batch_size, last)
    if smallest < devices:
        raise InvalidArgumentError(
            f"a batch of {smallest} example(s) cannot be split across {devices} "
            f"devices; use batch_size >= {devices} and a num_train whose last batch "
            f"(num_train % batch_size) is 0 or >= {devices}"
        )
