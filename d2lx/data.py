"""Framework-free data modules and the device-resident batch loader.

Design (see ``shared/design.md``, "One source of randomness" and "Performance
contracts"):

* A :class:`DataModule` holds its data as NumPy arrays. Nothing here imports a
  framework, so the same object can be fitted on any backend.
* When a backend's ``Trainer`` prepares the data it binds an :class:`ArrayOps`
  (the adapter's four array primitives, already pointing at the target
  device). :meth:`DataModule.get_tensorloader` then copies each array to the
  device **once** and caches it; :class:`ArrayLoader` batches on the device
  with one gather per epoch (the shuffle) and plain slices per step. No
  host-to-device copy happens per batch.
* The shuffling order is drawn from the data module's own seeded NumPy stream,
  so every backend sees the same batches in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from d2lx.errors import InvalidArgumentError, ShapeMismatchError
from d2lx.hyperparameters import HyperParameters
from d2lx.seeding import generator, resolve_seed
from d2lx.validation import check_finite_array, check_float, check_int


@runtime_checkable
class ArrayOps(Protocol):
    """The array primitives an adapter gives the core loader.

    ``device_key`` identifies backend + device (e.g. ``"torch:cuda:0"``); it
    keys the per-device cache so a dataset is transferred once per device.
    """

    device_key: str

    def asarray(self, array: np.ndarray) -> Any:
        """Copy a NumPy array to the device as the framework's array type."""
        ...

    def indices(self, order: np.ndarray) -> Any:
        """Copy an int64 index vector to the device."""
        ...

    def take(self, array: Any, indices: Any) -> Any:
        """Gather rows ``indices`` of a device array (stays on the device)."""
        ...


def to_numpy(value: Any) -> np.ndarray:
    """Convert a NumPy, PyTorch, JAX, TensorFlow or MXNet array (or list) to NumPy.

    Duck-typed so the core never imports a framework.
    """
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "asnumpy"):  # mxnet
        return np.asarray(value.asnumpy())
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch
        return value.detach().cpu().numpy()
    if hasattr(value, "numpy") and callable(value.numpy):  # tensorflow eager
        return np.asarray(value.numpy())
    return np.asarray(value)


class ArrayLoader:
    """Iterates minibatches of device arrays; d2l's ``DataLoader`` stand-in.

    ``len(loader)`` is the number of batches per epoch (the last batch may be
    shorter, as with ``DataLoader(drop_last=False)``). With ``shuffle=True``
    each pass draws a new permutation from ``rng``.
    """

    def __init__(
        self,
        tensors: Sequence[Any],
        batch_size: int,
        shuffle: bool,
        ops: ArrayOps,
        rng: np.random.Generator | None,
        num_examples: int,
    ) -> None:
        self.tensors = tuple(tensors)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.ops = ops
        self.rng = rng
        self.num_examples = num_examples

    def __len__(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    def epoch_order(self) -> np.ndarray | None:
        """Draw this epoch's example order (``None`` means the natural order).

        Adapters with a fused path call this themselves (instead of iterating)
        so that they consume the random stream exactly as iteration does.
        """
        if not self.shuffle:
            return None
        assert self.rng is not None
        return self.rng.permutation(self.num_examples)

    def epoch_tensors(self) -> tuple[Any, ...]:
        """Return the device arrays in this epoch's order (one gather if shuffled)."""
        order = self.epoch_order()
        if order is None:
            return self.tensors
        idx = self.ops.indices(order)
        return tuple(self.ops.take(t, idx) for t in self.tensors)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        tensors = self.epoch_tensors()
        bs = self.batch_size
        for start in range(0, self.num_examples, bs):
            yield tuple(t[start : start + bs] for t in tensors)


def shard_slices(length: int, parts: int) -> list[slice]:
    """Split ``range(length)`` into ``parts`` contiguous slices, sizes differing by at most 1.

    Used by data-parallel training to give each device its part of a global
    batch (``numpy.array_split`` semantics: the first ``length % parts``
    shards get one example more; a shard may be empty).
    """
    base, extra = divmod(length, parts)
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + base + (1 if i < extra else 0))
    return [slice(bounds[i], bounds[i + 1]) for i in range(parts)]


def check_shardable(num_examples: int, batch_size: int, devices: int) -> None:
    """Refuse batches that would leave a device without examples (data parallelism).

    Every batch, including the shorter last one, must hold at least one
    example per device; one message for every backend that splits batches.
    """
    last = num_examples % batch_size or batch_size
    smallest = min(batch_size, last)
    if smallest < devices:
        raise InvalidArgumentError(
            f"a batch of {smallest} example(s) cannot be split across {devices} "
            f"devices; use batch_size >= {devices} and a num_train whose last batch "
            f"(num_train % batch_size) is 0 or >= {devices}"
        )


class DataModule(HyperParameters):
    """Base class of data: d2l's ``DataModule`` without a framework inside.

    Subclasses implement :meth:`get_dataloader` (usually by calling
    :meth:`get_tensorloader` with NumPy arrays). ``seed`` fixes the shuffling
    order; by default the global seed (:func:`d2lx.seed`) is used.
    """

    batch_size: int

    def __init__(self, root: str = "../data", num_workers: int = 4, *, seed: int | None = None) -> None:
        self.save_hyperparameters(ignore=["seed"])
        self._init_rng(seed)

    def _init_rng(self, seed: int | None) -> None:
        self.seed = resolve_seed(seed)
        self.shuffle_rng = generator("shuffle", self.seed)
        self._ops: ArrayOps | None = None
        self._device_cache: dict[tuple[Any, ...], tuple[np.ndarray, Any]] = {}

    # -- binding to a backend/device (done by Trainer.prepare_data) -----------
    def bind(self, ops: ArrayOps) -> None:
        """Make later loaders produce arrays of ``ops``' framework and device."""
        self._ops = ops

    def _require_ops(self) -> ArrayOps:
        if getattr(self, "_ops", None) is None:
            from d2lx import registry  # local: the registry imports backends lazily

            self.bind(registry.load().default_array_ops())
        assert self._ops is not None
        return self._ops

    def _on_device(self, array: np.ndarray) -> Any:
        """Return ``array`` on the bound device, copying it there only the first time.

        The key is the memory the NumPy view points at (address, shape,
        strides, dtype): slicing ``self.X`` again in a later
        ``train_dataloader()`` call finds the same device copy. The cache keeps
        the view alive, so an address cannot be reused by another array. (Data
        changed in place after the first fit is not re-sent: build a new data
        module instead.)
        """
        ops = self._require_ops()
        key = (ops.device_key, array.__array_interface__["data"][0], array.shape,
               array.strides, array.dtype.str)
        hit = self._device_cache.get(key)
        if hit is not None:
            return hit[1]
        canonical = np.ascontiguousarray(array, dtype=np.float32 if array.dtype.kind == "f" else None)
        moved = ops.asarray(canonical)
        self._device_cache[key] = (array, moved)
        return moved

    # -- the d2l surface -------------------------------------------------------
    def get_dataloader(self, train: bool) -> ArrayLoader:
        raise NotImplementedError(f"{type(self).__name__} must implement get_dataloader(train)")

    def train_dataloader(self) -> ArrayLoader:
        return self.get_dataloader(train=True)

    def val_dataloader(self) -> ArrayLoader | None:
        return self.get_dataloader(train=False)

    def get_tensorloader(
        self, tensors: Sequence[Any], train: bool, indices: slice | np.ndarray = slice(0, None)
    ) -> ArrayLoader:
        """Batch ``tensors[i][indices]`` on the bound device (d2l's signature).

        The arrays are validated (same length, not empty, finite) and copied
        to the device once; later calls reuse the device copy.
        """
        arrays = [to_numpy(t)[indices] for t in tensors]
        if not arrays:
            raise InvalidArgumentError("get_tensorloader needs at least one array")
        n = len(arrays[0])
        split = "training" if train else "validation"
        for i, a in enumerate(arrays):
            if len(a) != n:
                raise ShapeMismatchError(
                    f"{split} arrays have different lengths ({n} vs {len(a)} for array {i}); "
                    "every array must have one row per example"
                )
        if n == 0:
            raise InvalidArgumentError(
                f"the {split} set is empty (0 examples); provide at least one example"
            )
        batch_size = check_int("batch_size", self.batch_size, minimum=1, example="32")
        if train and batch_size > n:
            raise InvalidArgumentError(
                f"batch_size={batch_size} is larger than the training set ({n} examples); "
                f"use batch_size <= {n}"
            )
        for i, a in enumerate(arrays):
            check_finite_array(f"{split} array {i}", a)
        device_arrays = [self._on_device(a) for a in arrays]
        return ArrayLoader(
            device_arrays, batch_size, shuffle=train, ops=self._require_ops(),
            rng=self.shuffle_rng if train else None, num_examples=n,
        )


def _scalar(name: str, value: Any, example: str) -> float:
    """Accept a Python number or a one-element array of any framework."""
    if not isinstance(value, (int, float, str)) and value is not None:
        arr = to_numpy(value).reshape(-1)
        if arr.size != 1:
            raise InvalidArgumentError(f"{name} must be a single number, got {arr.size} values")
        value = arr[0].item()
    return check_float(name, value, example=example)


class SyntheticRegressionData(DataModule):
    """Synthetic data for linear regression: ``y = X w + b + noise`` (d2l 3.3).

    ``X`` is standard normal, ``noise`` is normal(0, ``noise``); both come from
    the seeded NumPy stream, so every backend trains on identical numbers. The
    first ``num_train`` rows are the training set, the next ``num_val`` the
    validation set. ``w`` may be a list or any framework's 1-D array; ``data.w``
    and ``data.b`` keep the true values as NumPy / float for comparison.
    """

    def __init__(
        self,
        w: Any,
        b: Any,
        noise: float = 0.01,
        num_train: int = 1000,
        num_val: int = 1000,
        batch_size: int = 32,
        *,
        seed: int | None = None,
    ) -> None:
        w_np = to_numpy(w).astype(np.float64).reshape(-1)
        if w_np.size == 0:
            raise InvalidArgumentError("w is empty; pass at least one weight, e.g. w=[2, -3.4]")
        check_finite_array("w", w_np)
        b_value = _scalar("b", b, example="4.2")
        noise = check_float("noise", noise, nonnegative=True, example="0.01")
        num_train = check_int("num_train", num_train, minimum=1, example="1000")
        num_val = check_int("num_val", num_val, minimum=0, example="1000")
        batch_size = check_int("batch_size", batch_size, minimum=1, example="32")
        if batch_size > num_train:
            raise InvalidArgumentError(
                f"batch_size={batch_size} is larger than the training set ({num_train} examples); "
                f"use batch_size <= {num_train}"
            )
        self.w = w_np.astype(np.float32)
        self.b = b_value
        self.noise = noise
        self.num_train = num_train
        self.num_val = num_val
        self.batch_size = batch_size
        self.root, self.num_workers = "../data", 4
        self.hparams = {"noise": noise, "num_train": num_train, "num_val": num_val,
                        "batch_size": batch_size}
        self._init_rng(seed)
        rng = generator("data", self.seed)
        n = num_train + num_val
        X = rng.standard_normal((n, w_np.size))
        eps = rng.standard_normal((n, 1)) * noise
        y = X @ w_np.reshape(-1, 1) + b_value + eps
        self.X = X.astype(np.float32)
        self.y = y.astype(np.float32)

    @property
    def num_inputs(self) -> int:
        return int(self.X.shape[1])

    def get_dataloader(self, train: bool) -> ArrayLoader:
        i = slice(0, self.num_train) if train else slice(self.num_train, None)
        return self.get_tensorloader((self.X, self.y), train, i)

    def val_dataloader(self) -> ArrayLoader | None:
        return None if self.num_val == 0 else self.get_dataloader(train=False)


class ArrayData(DataModule):
    """A data module over your own NumPy (or framework) arrays.

    ``ArrayData(X, y, X_val=None, y_val=None, batch_size=32)``: ``X`` is
    ``(n, num_inputs)``, ``y`` is ``(n, 1)`` (a 1-D ``y`` is reshaped). The
    arrays are checked up front: equal lengths, not empty, finite.
    """

    def __init__(
        self,
        X: Any,
        y: Any,
        X_val: Any = None,
        y_val: Any = None,
        batch_size: int = 32,
        *,
        seed: int | None = None,
    ) -> None:
        self.batch_size = check_int("batch_size", batch_size, minimum=1, example="32")
        self.root, self.num_workers = "../data", 4
        self.hparams = {"batch_size": self.batch_size}
        self._init_rng(seed)
        self.X, self.y = self._prepare("training", X, y)
        self.X_val: np.ndarray | None = None
        self.y_val: np.ndarray | None = None
        if X_val is not None:
            self.X_val, self.y_val = self._prepare("validation", X_val, y_val)

    @staticmethod
    def _prepare(split: str, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        if y is None:
            raise InvalidArgumentError(f"{split} X was given without y; pass both")
        X_np = to_numpy(X).astype(np.float32)
        y_np = to_numpy(y).astype(np.float32)
        if X_np.ndim != 2:
            raise ShapeMismatchError(
                f"{split} X must be 2-D (examples, features), got shape {X_np.shape}; "
                "reshape it, e.g. X.reshape(len(X), -1)"
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
        check_finite_array(f"{split} X", X_np)
        check_finite_array(f"{split} y", y_np)
        return X_np, y_np

    @property
    def num_inputs(self) -> int:
        return int(self.X.shape[1])

    def get_dataloader(self, train: bool) -> ArrayLoader:
        if train:
            return self.get_tensorloader((self.X, self.y), True)
        assert self.X_val is not None
        return self.get_tensorloader((self.X_val, self.y_val), False)

    def val_dataloader(self) -> ArrayLoader | None:
        return None if self.X_val is None else self.get_dataloader(train=False)
