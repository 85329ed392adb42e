"""Loaders: d2lx's device-resident one, and any other re-iterable of batches.

Two kinds of loader reach the trainer:

* :class:`ArrayLoader`, which :meth:`d2lx.DataModule.get_tensorloader`
  returns: the whole dataset sits on the training device (copied there once),
  an epoch's shuffle is a few cache-sized gathers on the device, and a batch
  is a slice of one.
  Adapters with a compiled epoch (JAX, TensorFlow) run it without ever
  materialising a batch on the host: the fast path.
* anything else a ``DataModule`` returns: a torch ``DataLoader``, a
  ``tf.data.Dataset``, a Gluon ``DataLoader``, a list of NumPy batches, a
  generator. :class:`Batches` iterates it once per epoch, counts its batches
  when it has no ``len()``, and turns every batch into a tuple
  ``(X, ..., y)``; the trainer's ``prepare_batch`` moves it to the device.

The adapter gives the core its array primitives as an :class:`ArrayOps`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from d2lx.errors import ArgumentTypeError, InvalidArgumentError, ShapeMismatchError

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


def as_batch(item: Any, split: str, index: int) -> Batch:
    """One loader item as the tuple ``(X, ..., y)`` d2l's steps take; refuse other shapes clearly."""
    if isinstance(item, tuple) and len(item) >= 2:
        return item
    if isinstance(item, list) and len(item) >= 2:  # torch and Gluon DataLoaders yield lists
        return tuple(item)
    kind = type(item).__name__
    raise ArgumentTypeError(
        f"{split} batch {index} is a {kind}, not a tuple (X, ..., y); make the loader yield "
        "(inputs..., targets) tuples, e.g. TensorDataset(X, y) or Dataset.from_tensor_slices((X, y))"
    )


class Batches:
    """Any loader a ``DataModule`` returns, iterated once per epoch as ``(X, ..., y)`` tuples.

    ``len()`` is the loader's own where it has one, else the count seen in
    the last complete epoch (``None`` before the first). A one-shot iterator
    (a generator) is replaced each epoch by a fresh one from ``refresh`` (the
    data module's ``train_dataloader``/``val_dataloader``), as d2l's loaders
    are re-iterable and a generator is not.
    """

    def __init__(self, loader: Iterable[Any], split: str,
                 refresh: Callable[[], Iterable[Any]] | None = None) -> None:
        if not isinstance(loader, Iterable):
            raise ArgumentTypeError(
                f"the {split} loader is a {type(loader).__name__}, which cannot be iterated; "
                "get_dataloader must return a loader, a list of batches or a generator"
            )
        self.loader = loader
        self.split = split
        self.refresh = refresh
        self.counted: int | None = None
        self._pending: tuple[Any, Iterator[Any]] | None = None  # peek()'s batch and the rest of its epoch
        self.current_size = 1  # examples in the batch last handed out
        self._used = False

    def __len__(self) -> int:
        length = declared_length(self.loader)
        if length is not None:
            return length
        if self.counted is None:
            raise TypeError(f"the {self.split} loader has no len() and no epoch has been counted yet")
        return self.counted

    def known_length(self) -> int | None:
        """``len()`` if the loader says, else the last counted epoch's, else ``None``."""
        length = declared_length(self.loader)
        return length if length is not None else self.counted

    def peek(self) -> Batch:
        """The first batch, without losing it: the first epoch continues the same iterator."""
        if self._pending is None:
            iterator = self._fresh_iterator()
            try:
                first = next(iterator)
            except StopIteration:
                raise InvalidArgumentError(
                    f"the {self.split} loader yielded no batches; give it at least one example"
                ) from None
            self._pending = (first, iterator)
        return as_batch(self._pending[0], self.split, 0)

    def reset(self) -> None:
        """Forget the iterator :meth:`peek` started: the next epoch starts a fresh one.

        A resumed run restores the random generators a loader shuffles with
        after the trainer peeked; the first resumed epoch must draw its order
        from the restored state.
        """
        if self._pending is not None:
            self._pending = None
            if isinstance(self.loader, Iterator) and self.refresh is not None:  # one-shot: ask for another
                self.loader = self.refresh()

    def __iter__(self) -> Iterator[Batch]:
        if self._pending is not None:
            first, rest = self._pending
            self._pending = None
            source: Iterator[Any] = itertools.chain([first], rest)
        else:
            source = self._fresh_iterator()
        count = 0
        for count, item in enumerate(source, start=1):
            batch = as_batch(item, self.split, count - 1)
            self.current_size = batch_size_of(batch)
            yield batch
        if count == 0:
            raise InvalidArgumentError(
                f"the {self.split} loader yielded no batches this epoch; a generator is used up after "
                "one pass: return a list, a DataLoader or another re-iterable, or build the "
                "generator inside get_dataloader (d2lx then calls it again every epoch)"
            )
        self.counted = count

    def _fresh_iterator(self) -> Iterator[Any]:
        iterator = iter(self.loader)
        if iterator is self.loader and self._used and self.refresh is not None:
            self.loader = self.refresh()  # a used-up generator: ask the data module for a new one
            iterator = iter(self.loader)
        self._used = True
        return iterator


def declared_length(loader: Any) -> int | None:
    """``len(loader)`` where the loader knows it (``tf.data`` may not), else ``None``."""
    try:
        length = len(loader)
    except (TypeError, ValueError):  # no __len__, or tf.data's "length is unknown"
        return None
    return int(length) if length >= 0 else None


def as_loader(loader: Any, split: str, refresh: Callable[[], Any]) -> Any:
    """d2lx's own loader as it is; any other wrapped in :class:`Batches`."""
    return loader if isinstance(loader, ArrayLoader) else Batches(loader, split, refresh)


def known_length(loader: Any) -> int | None:
    """Batches per epoch where known (``None``: a loader without ``len()``, before its first epoch)."""
    return len(loader) if isinstance(loader, ArrayLoader) else loader.known_length()


def first_batch(loader: Any) -> Batch:
    """A batch with the data's shapes: d2lx's first rows, or a foreign loader's first batch (kept)."""
    if isinstance(loader, ArrayLoader):
        return loader.head
    return tuple(loader.peek())


def check_same_features(train: Batch, val: Batch) -> None:
    """Refuse a validation set whose rows differ in shape from the training set's (before any step)."""
    for i, (a, b) in enumerate(zip(train, val)):
        if tuple(a.shape[1:]) != tuple(b.shape[1:]):
            raise ShapeMismatchError(
                f"validation array {i} has rows of shape {tuple(b.shape[1:])} but training array {i} "
                f"has {tuple(a.shape[1:])}; give both sets the same features")
