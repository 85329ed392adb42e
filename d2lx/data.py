"""Data modules: d2l's ``DataModule`` and ``SyntheticRegressionData``, plus ``ArrayData``.

Design (see ``docs/architecture.md``):

* The numbers come from one seeded NumPy source (:mod:`d2lx.seeding`), so the
  same seed is the same experiment on every backend. A backend namespace's
  ``SyntheticRegressionData`` (``d2l.SyntheticRegressionData``) then hands
  the reader the backend's own tensors (``data.X``, ``data.y``, ``data.w``),
  as d2l does; the classes here, imported from ``d2lx.data``, keep NumPy.
* :meth:`DataModule.get_tensorloader` copies each array to the training
  device **once** (cached per device) and returns d2lx's
  :class:`~d2lx.loader.ArrayLoader`, which batches on the device. A
  ``get_dataloader`` may return any other loader instead (a torch
  ``DataLoader``, ``tf.data``...): the trainer takes that too.
* Nothing here needs ``super().__init__()``: d2l's own chapter 3.7 writes a
  ``DataModule`` subclass that never calls it, so the base class's state is
  made on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from d2lx.errors import InvalidArgumentError, ShapeMismatchError
from d2lx.hyperparameters import HyperParameters
from d2lx.loader import ArrayLoader, ArrayOps, to_numpy
from d2lx.seeding import generator, resolve_seed
from d2lx.validation import as_float_array, check_float, check_int, check_memory, check_scalar

__all__ = ["ArrayData", "DataModule", "SyntheticRegressionData"]


def _index_key(indices: Any) -> Any:
    """A hashable description of ``indices`` (a slice, or an index array by content)."""
    if isinstance(indices, slice):
        return ("slice", indices.start, indices.stop, indices.step)
    array = np.asarray(to_numpy(indices))
    return ("array", array.dtype.str, array.shape, array.tobytes())


class DataModule(HyperParameters):
    """Base class of data: d2l's ``DataModule`` (``root``, ``num_workers``) without a framework.

    Subclasses implement :meth:`get_dataloader`, usually with
    :meth:`get_tensorloader` on NumPy arrays or framework tensors. ``seed``
    fixes the shuffling order; by default the global seed
    (:func:`d2lx.seed`) when the order is first needed.
    """

    batch_size: int

    def __init__(self, root: str = "../data", num_workers: int = 4, *, seed: int | None = None) -> None:
        self.save_hyperparameters(ignore=["seed"])
        self.seed = resolve_seed(seed)

    # -- state made on first use (a subclass may skip super().__init__()) -------------
    @property
    def shuffle_rng(self) -> np.random.Generator:
        """The seeded NumPy stream the training loader's shuffle order is drawn from."""
        rng = self.__dict__.get("_shuffle_rng")
        if rng is None:
            if "seed" not in self.__dict__:
                self.seed = resolve_seed(None)
            rng = self.__dict__["_shuffle_rng"] = generator("shuffle", self.seed)
        return rng

    def _cache(self) -> dict[Any, tuple[Any, Any, Any]]:
        """Device copies by source: ``(source kept alive, device array, its first row)``."""
        return self.__dict__.setdefault("_device_cache", {})

    # -- binding to a backend and device (Trainer.prepare_data does it) -----------------
    def bind(self, ops: ArrayOps) -> None:
        """Make later loaders produce arrays of ``ops``' framework and device."""
        self.__dict__["_ops"] = ops

    def _require_ops(self) -> ArrayOps:
        ops = self.__dict__.get("_ops")
        if ops is None:
            from d2lx import registry  # local: the registry imports backends lazily

            ops = registry.load().default_array_ops()
            self.bind(ops)
        return ops

    def _on_device(self, source: Any, indices: Any, split: str, position: int) -> tuple[Any, Any]:
        """``source[indices]`` on the bound device and its first row, checked and copied only the first time.

        The first row (the loader's :attr:`~d2lx.loader.ArrayLoader.head`) is
        kept with it: slicing a device array is an eager operation that costs
        JAX or TensorFlow tens of microseconds, every fit.

        The cache key is the source array (its identity, kept alive by the
        cache, or for NumPy the memory it views) and the indices, so slicing
        ``self.X`` again in a later ``train_dataloader()`` finds the same
        device copy. Data changed in place after the first fit is not re-sent.
        """
        ops = self._require_ops()
        if isinstance(source, np.ndarray):
            ident: Any = (source.__array_interface__["data"][0], source.shape, source.strides,
                          source.dtype.str)
        else:
            ident = id(source)
        key = (ops.device_key, ident, _index_key(indices))
        hit = self._cache().get(key)
        if hit is not None:
            return hit[1], hit[2]
        name = f"{split} array {position}"
        array = as_float_array(name, to_numpy(source)[indices], example="np.ones((n, 2))")
        if array.ndim >= 2 and 0 in array.shape[1:]:
            raise ShapeMismatchError(
                f"{name} has shape {array.shape}: no features to learn from; give X at least one column"
            )
        moved = ops.asarray(np.ascontiguousarray(array))
        head = moved[:1]
        self._cache()[key] = (source, moved, head)
        return moved, head

    # -- the d2l surface -------------------------------------------------------------------
    def get_dataloader(self, train: bool) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement get_dataloader(train)")

    def train_dataloader(self) -> Any:
        return self.get_dataloader(train=True)

    def val_dataloader(self) -> Any:
        return self.get_dataloader(train=False)

    def get_tensorloader(self, tensors: Sequence[Any], train: bool,
                         indices: slice | Any = slice(0, None)) -> ArrayLoader:
        """Batch ``tensors[i][indices]`` on the training device (d2l's signature).

        The arrays may be NumPy or any framework's tensors. They are checked
        (numbers, finite, same length, not empty) and copied to the device
        once; later calls reuse the device copy.
        """
        if not tensors:
            raise InvalidArgumentError("get_tensorloader needs at least one array")
        split = "training" if train else "validation"
        moved = [self._on_device(t, indices, split, i) for i, t in enumerate(tensors)]
        lengths = [int(m.shape[0]) for m, _ in moved]
        if len(set(lengths)) > 1:
            raise ShapeMismatchError(
                f"{split} arrays have different lengths ({', '.join(map(str, lengths))}); "
                "every array must have one row per example"
            )
        n = lengths[0]
        if n == 0:
            raise InvalidArgumentError(f"the {split} set is empty (0 examples); provide at least one example")
        batch_size = check_int("batch_size", getattr(self, "batch_size", None), minimum=1, example="32")
        if train and batch_size > n:
            raise InvalidArgumentError(
                f"batch_size={batch_size} is larger than the training set ({n} examples); "
                f"use batch_size <= {n}"
            )
        return ArrayLoader([m for m, _ in moved], batch_size, shuffle=train, ops=self._require_ops(),
                           rng=self.shuffle_rng if train else None, num_examples=n,
                           head=tuple(h for _, h in moved))


class SyntheticRegressionData(DataModule):
    """Synthetic data for linear regression: ``y = X w + b + noise`` (d2l 3.3).

    ``X`` is standard normal and the noise normal(0, ``noise``), both from the
    seeded NumPy stream, so every backend trains on identical numbers. The
    first ``num_train`` rows are the training set, the next ``num_val`` the
    validation set. ``w`` is a list or any framework's 1-D array (a column
    ``(n, 1)`` is accepted too). Here ``X``, ``y`` and ``w`` are NumPy
    float32; ``d2l.SyntheticRegressionData`` of a backend namespace gives that
    backend's tensors (see :func:`bind_tensors`). ``b`` is kept as given.
    """

    #: Converts the NumPy arrays to the reader's tensors (set by a backend namespace).
    tensor_ops: ClassVar[Callable[[], ArrayOps] | None] = None

    def __init__(self, w: Any, b: Any, noise: float = 0.01, num_train: int = 1000, num_val: int = 1000,
                 batch_size: int = 32, *, seed: int | None = None) -> None:
        w_np = as_float_array("w", w, example="[2, -3.4]")
        if w_np.ndim == 2 and w_np.shape[1] == 1:
            w_np = w_np[:, 0]
        if w_np.ndim != 1:
            raise ShapeMismatchError(
                f"w must be a vector of weights (one per feature), got shape {w_np.shape}; "
                "pass e.g. w=[2, -3.4] (a column of shape (n, 1) works too)"
            )
        if w_np.size == 0:
            raise InvalidArgumentError("w is empty; pass at least one weight, e.g. w=[2, -3.4]")
        b_value = check_scalar("b", b, example="4.2")
        noise = check_float("noise", noise, nonnegative=True, float32=True, example="0.01")
        num_train = check_int("num_train", num_train, minimum=1, example="1000")
        num_val = check_int("num_val", num_val, minimum=0, example="1000")
        batch_size = check_int("batch_size", batch_size, minimum=1, example="32")
        if batch_size > num_train:
            raise InvalidArgumentError(
                f"batch_size={batch_size} is larger than the training set ({num_train} examples); "
                f"use batch_size <= {num_train}"
            )
        check_memory(num_train + num_val, w_np.size)
        self.b = b  # as given, as d2l keeps it
        self.noise, self.num_train, self.num_val, self.batch_size = noise, num_train, num_val, batch_size
        self.root, self.num_workers = "../data", 4
        self.hparams = {"noise": noise, "num_train": num_train, "num_val": num_val, "batch_size": batch_size}
        self.seed = resolve_seed(seed)
        rng = generator("data", self.seed)
        n = num_train + num_val
        X = rng.standard_normal((n, w_np.size))
        eps = rng.standard_normal((n, 1)) * noise
        y = X @ w_np.astype(np.float64).reshape(-1, 1) + b_value + eps
        self.X, self.y, self.w = self._tensors(X.astype(np.float32), y.astype(np.float32), w_np)

    def _tensors(self, *arrays: np.ndarray) -> tuple[Any, ...]:
        """The arrays as the reader's tensors (on the CPU), or NumPy for the core class."""
        make = type(self).tensor_ops
        if make is None:
            return arrays
        ops = make()
        return tuple(ops.asarray(a) for a in arrays)

    @property
    def num_inputs(self) -> int:
        return int(self.X.shape[1])

    def get_dataloader(self, train: bool) -> ArrayLoader:
        i = slice(0, self.num_train) if train else slice(self.num_train, None)
        return self.get_tensorloader((self.X, self.y), train, i)

    def val_dataloader(self) -> ArrayLoader | None:
        return None if self.num_val == 0 else self.get_dataloader(train=False)


class ArrayData(DataModule):
    """A data module over your own arrays (NumPy or any framework's).

    ``ArrayData(X, y, X_val=None, y_val=None, batch_size=32)``: ``X`` is
    ``(n, num_inputs)``, ``y`` is ``(n, 1)`` (a 1-D ``y`` is made a column).
    Checked up front: numbers (not text, objects or complex), finite, within
    float32, equal lengths, not empty, at least one feature, and the same
    width for the validation set.
    """

    def __init__(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None, batch_size: int = 32, *,
                 seed: int | None = None) -> None:
        self.batch_size = check_int("batch_size", batch_size, minimum=1, example="32")
        self.root, self.num_workers = "../data", 4
        self.hparams = {"batch_size": self.batch_size}
        self.seed = resolve_seed(seed)
        self.X, self.y = self._prepare("training", X, y)
        self.X_val: np.ndarray | None = None
        self.y_val: np.ndarray | None = None
        if X_val is not None or y_val is not None:
            self.X_val, self.y_val = self._prepare("validation", X_val, y_val)
            if self.X_val.shape[1:] != self.X.shape[1:]:
                raise ShapeMismatchError(
                    f"validation X has {self.X_val.shape[1]} features but training X has "
                    f"{self.X.shape[1]}; give both sets the same columns"
                )

    @staticmethod
    def _prepare(split: str, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        if X is None or y is None:
            raise InvalidArgumentError(f"{split} {'X' if X is None else 'y'} is missing; pass both X and y")
        X_np = as_float_array(f"{split} X", X, example="np.ones((n, 2))")
        y_np = as_float_array(f"{split} y", y, example="np.ones((n, 1))")
        if X_np.ndim != 2:
            raise ShapeMismatchError(
                f"{split} X must be 2-D (examples, features), got shape {X_np.shape}; "
                "reshape it, e.g. X.reshape(len(X), -1)"
            )
        if X_np.shape[1] == 0:
            raise ShapeMismatchError(
                f"{split} X has shape {X_np.shape}: no features to learn from; give X at least one column"
            )
        if y_np.ndim == 1:
            y_np = y_np.reshape(-1, 1)
        if y_np.ndim != 2 or y_np.shape[0] != X_np.shape[0]:
            raise ShapeMismatchError(
                f"{split} y has shape {y_np.shape} but X has {X_np.shape[0]} rows; "
                f"y must be ({X_np.shape[0]}, 1)"
            )
        if len(X_np) == 0:
            raise InvalidArgumentError(f"the {split} set is empty (0 examples); provide at least one example")
        return X_np, y_np

    @property
    def num_inputs(self) -> int:
        return int(self.X.shape[1])

    def get_dataloader(self, train: bool) -> ArrayLoader:
        if train:
            return self.get_tensorloader((self.X, self.y), True)
        assert self.X_val is not None and self.y_val is not None
        return self.get_tensorloader((self.X_val, self.y_val), False)

    def val_dataloader(self) -> ArrayLoader | None:
        return None if self.X_val is None else self.get_dataloader(train=False)


def bind_tensors(cls: type[SyntheticRegressionData], ops: Callable[[], ArrayOps]) -> type:
    """``cls`` for one backend namespace: its ``X``, ``y``, ``w`` are that backend's tensors."""
    return type(cls.__name__, (cls,), {"tensor_ops": staticmethod(ops), "__module__": cls.__module__,
                                       "__doc__": cls.__doc__, "__qualname__": cls.__qualname__})
