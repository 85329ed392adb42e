"""d2lx's own loader: the whole dataset on the training device, batched there.

:class:`ArrayLoader` is what :meth:`d2lx.DataModule.get_tensorloader`
returns: the arrays sit on the training device (copied there once), an
epoch's shuffle is a few cache-sized gathers on the device, and a batch is a
slice of one. Adapters with a compiled epoch (JAX, TensorFlow) run it
without ever materialising a batch on the host: the fast path. Any other
loader a ``DataModule`` returns is :mod:`d2lx.batches`' job.

The adapter gives the core its array primitives as an :class:`ArrayOps`;
:func:`to_numpy`, :func:`host_array` and :func:`batch_size_of` are the
small conversions every module shares.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

Batch = tuple[Any, ...]

#: About how many bytes :class:`ArrayLoader` gathers at once for a shuffled epoch (fits a CPU's cache).
GATHER_BLOCK_BYTES = 4 * 2**20
#: The same on a GPU, where a gather's cost is its launch, not the cache: a large batch (4096 x 256
#: float32 is 4 MiB) would otherwise be gathered on its own, two launches a step that the hand loop's
#: one gather per epoch does not pay. Large blocks, not the whole epoch, so that the shuffled copy
#: never doubles the device memory a large data set takes.
ACCELERATOR_GATHER_BLOCK_BYTES = 256 * 2**20


def gather_block_bytes(on_cpu: bool) -> int:
    """The ``gather_block_bytes`` of an :class:`ArrayOps` on the CPU or on an accelerator."""
    return GATHER_BLOCK_BYTES if on_cpu else ACCELERATOR_GATHER_BLOCK_BYTES


@runtime_checkable
class ArrayOps(Protocol):
    """The array primitives an adapter gives the core, bound to one device.

    ``device_key`` identifies backend + device (``"torch:cuda:0"``); it keys
    the data module's cache, so a dataset is copied to a device once.
    An adapter may also set ``gather_block_bytes`` (see
    :func:`gather_block_bytes`): how many bytes :class:`ArrayLoader` gathers
    at once; without it, :data:`GATHER_BLOCK_BYTES`, the CPU's figure.
    """

    device_key: str

    def asarray(self, array: np.ndarray) -> Any:
        """Copy a NumPy array to the device as the framework's array type."""
        ...

    def indices(self, order: np.ndarray) -> Any:
        """Copy an integer index vector to the device."""
        ...

    def take(self, array: Any, indices: Any) -> Any:
        """Gather rows ``indices`` of a device array (stays on the device)."""
        ...

    def split(self, array: Any, size: int) -> Sequence[Any]:
        """``array`` cut into consecutive batches of ``size`` rows (the last may be shorter).

        One framework call for a block's batches where the framework has one
        that does not copy: slicing batch by batch costs a dispatch per batch
        and array (on the CPU about 2 us in PyTorch, 50 in JAX and 100 in
        eager TensorFlow). MXNet's ``np.split`` copies, so MXNet slices.
        """
        ...

    def to_device(self, value: Any) -> Any:
        """``value`` (NumPy or any array of this framework) on the device; no copy if it is there."""
        ...

    def to_host(self, values: Sequence[Any]) -> np.ndarray:
        """Scalars or vectors of this framework, concatenated into one float64 NumPy vector.

        One call per epoch for all of its losses: one device-to-host transfer.
        """
        ...


def to_numpy(value: Any) -> np.ndarray:
    """A NumPy view or copy of a NumPy, PyTorch, JAX, TensorFlow or MXNet array (or a list).

    Duck-typed so the core never imports a framework.
    """
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "asnumpy"):  # mxnet
        return np.asarray(value.asnumpy())
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch
        return np.asarray(value.detach().cpu().numpy())
    if hasattr(value, "numpy") and callable(value.numpy):  # tensorflow eager (and tf.Variable)
        return np.asarray(value.numpy())
    return np.asarray(value)


def host_array(value: Any) -> np.ndarray:
    """A batch array from the host as NumPy, float64 narrowed to float32 (d2lx computes in float32).

    Loaders of NumPy data yield float64 by default; every framework's layers
    expect float32 and would refuse the mix (or, for JAX, warn and narrow).
    """
    array = np.asarray(value)
    return array.astype(np.float32) if array.dtype == np.float64 else array


def batch_size_of(batch: Batch) -> int:
    """Examples in ``batch``: the length of its last array (the targets)."""
    shape = getattr(batch[-1], "shape", None)
    return int(shape[0]) if shape else 1


class ArrayLoader:
    """Minibatches of device arrays: d2lx's stand-in for d2l's ``DataLoader``.

    ``len(loader)`` is the number of batches per epoch (the last one may be
    shorter, as with ``DataLoader(drop_last=False)``). With ``shuffle=True``
    each pass draws a new permutation from ``rng``: the same seeded NumPy
    stream on every backend, so every backend sees the same batches.
    """

    def __init__(self, tensors: Sequence[Any], batch_size: int, shuffle: bool, ops: ArrayOps,
                 rng: np.random.Generator | None, num_examples: int,
                 head: Sequence[Any] | None = None) -> None:
        self.tensors = tuple(tensors)
        #: The first example of every array (a batch of one): the data's shapes, for building the model.
        self.head = tuple(t[:1] for t in self.tensors) if head is None else tuple(head)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.ops = ops
        self.rng = rng
        self.num_examples = num_examples
        #: Examples in the batch last handed out (a loss plotted by a reader's loop is weighted by it).
        self.current_size = 1

    def __len__(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    def batch_sizes(self) -> list[int]:
        """The size of every batch of an epoch, in order (only the last may be smaller)."""
        full, rest = divmod(self.num_examples, self.batch_size)
        return [self.batch_size] * full + ([rest] if rest else [])

    def epoch_order(self) -> np.ndarray | None:
        """Draw this epoch's example order (``None``: the natural order).

        Compiled epochs call this instead of iterating, so that they consume
        the random stream exactly as iteration does (and gather each batch's
        rows in the graph).
        """
        if not self.shuffle:
            return None
        assert self.rng is not None
        return self.rng.permutation(self.num_examples)

    def __iter__(self) -> Iterator[Batch]:
        """The epoch's batches, on the device: gathered blocks of the shuffled order, each split once.

        The rows are gathered a block of batches at a time, a block being
        about the ops' ``gather_block_bytes``. On the CPU (4 MiB) it is small
        enough to stay in the cache (gathering the whole data set at the
        start of the epoch writes and reads back a data set-sized array: for
        100,000 x 256, 45 ms against 10 ms), large enough that a small data
        set costs one gather per epoch, not one per batch and array. On a GPU
        a launch costs more than the bytes, so blocks are far larger.
        """
        order = self.epoch_order()
        rows = None if order is None else self.ops.indices(order)
        n, bs = self.num_examples, self.batch_size
        block = max(1, n if rows is None else self.batches_per_block() * bs)
        for first in range(0, n, block):
            if rows is None:
                arrays = tuple(t if len(t) == n else t[:n] for t in self.tensors)
            else:
                block_rows = rows[first:first + block]
                arrays = tuple(self.ops.take(t, block_rows) for t in self.tensors)
            starts = range(first, min(first + block, n), bs)
            for start, batch in zip(starts, zip(*(self.ops.split(a, bs) for a in arrays))):
                self.current_size = min(bs, n - start)
                yield batch

    def batches_per_block(self) -> int:
        """How many batches one gather serves (at least one; see :meth:`__iter__`)."""
        row_values = sum(math.prod(tuple(t.shape)[1:]) for t in self.tensors)
        batch_bytes = max(1, 4 * row_values * self.batch_size)  # float32, 4 bytes a value
        return max(1, getattr(self.ops, "gather_block_bytes", GATHER_BLOCK_BYTES) // batch_bytes)
