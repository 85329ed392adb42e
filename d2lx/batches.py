"""Any other loader a ``DataModule`` returns, as the trainer iterates it.

A torch ``DataLoader``, a ``tf.data.Dataset``, a Gluon ``DataLoader``, a
list of NumPy batches, a generator: :class:`Batches` iterates it once per
epoch, counts its batches when it has no ``len()``, keeps the first batch
the trainer peeks at (so a one-shot iterator loses nothing), and turns every
batch into a tuple ``(X, ..., y)``; the trainer's ``prepare_batch`` moves it
to the device. The helpers below treat both kinds of loader alike
(:class:`~d2lx.loader.ArrayLoader`, d2lx's own, and :class:`Batches`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from d2lx.errors import ArgumentTypeError, InvalidArgumentError, ShapeMismatchError
from d2lx.loader import ArrayLoader, Batch, batch_size_of


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
