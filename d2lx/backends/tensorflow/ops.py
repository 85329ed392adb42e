"""TensorFlow arrays and devices: the core's array primitives, d2l's alias table, ``cpu``/``gpu``."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from d2lx.loader import gather_block_bytes, host_array, to_numpy


@functools.lru_cache(maxsize=256)
def device_key(name: str) -> tuple[str, int]:
    """``("CPU", 0)`` for ``"/job:localhost/replica:0/task:0/device:CPU:0"`` or ``"/CPU:0"``."""
    spec = tf.DeviceSpec.from_string(name)
    return (spec.device_type or "CPU").upper(), spec.device_index or 0


def same_device(current: str, target: str) -> bool:
    """Whether TensorFlow device names ``current`` and ``target`` name the same device.

    An empty name (a tensor whose placement TensorFlow has not fixed) is not
    known to be anywhere, so it is never "the same".
    """
    return bool(current) and device_key(current) == device_key(target)


def tf_variable(variable: Any) -> tf.Variable:
    """The ``tf.Variable`` behind a Keras variable (or ``variable`` itself)."""
    return variable if isinstance(variable, tf.Variable) else variable.value


class TFOps:
    """:class:`d2lx.loader.ArrayOps` on one TensorFlow device (``"/CPU:0"``, ``"/GPU:1"``).

    Why ``tf.identity`` under ``tf.device`` for a GPU: an eager ``tf.constant``
    is built in host memory; the identity op placed on the target device is
    what copies it there, once, so the loader's per-step slices never cross
    the bus. On the CPU the constant already is where it belongs.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.device_key = f"tensorflow:{device}"
        self._on_cpu = device_key(device)[0] == "CPU"
        self.gather_block_bytes = gather_block_bytes(self._on_cpu)

    def _put(self, array: np.ndarray) -> tf.Tensor:
        with tf.device(self.device):
            tensor = tf.constant(array)
            return tensor if self._on_cpu else tf.identity(tensor)

    def asarray(self, array: np.ndarray) -> tf.Tensor:
        return self._put(np.ascontiguousarray(array))

    def indices(self, order: np.ndarray) -> tf.Tensor:
        return self._put(order.astype(np.int64))

    def take(self, array: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
        """Rows ``indices`` of ``array``, on the device."""
        with tf.device(self.device):
            return tf.gather(array, indices, axis=0)

    def split(self, array: tf.Tensor, size: int) -> Sequence[tf.Tensor]:
        full, rest = divmod(int(array.shape[0]), size)
        with tf.device(self.device):
            return tf.split(array, [size] * full + ([rest] if rest else []))

    def to_device(self, value: Any) -> Any:
        """NumPy (float64 narrowed to float32) onto the device; a tensor only if it lives elsewhere.

        Inside a ``tf.function`` trace a tensor is symbolic: it is returned
        as it is (the graph's placement decides), so a ``prepare_batch`` that
        calls this runs unchanged in the compiled step.
        """
        if isinstance(value, (tf.Tensor, tf.Variable)):
            if not tf.executing_eagerly() or same_device(value.device, self.device):
                return value
            with tf.device(self.device):
                return tf.identity(value)
        return self._put(host_array(value))

    def to_host(self, values: Sequence[Any]) -> np.ndarray:
        """One device op (a stack or a concat) and one transfer for tensors of one dtype.

        Host values (NumPy, Python numbers: a reader's ``self.plot`` of a
        float, or losses the step already read) are converted without
        touching the device.
        """
        if not values:
            return np.zeros((0,), np.float64)
        tensors = [v for v in values if isinstance(v, (tf.Tensor, tf.Variable))]
        if len(tensors) == len(values) and len({t.dtype for t in tensors}) == 1:
            with tf.device(self.device):
                if all(t.shape.rank == 0 for t in tensors):
                    flat = tf.stack(tensors)
                else:
                    flat = tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)
            return np.asarray(flat.numpy(), dtype=np.float64).reshape(-1)
        return np.concatenate([np.asarray(to_numpy(v), dtype=np.float64).reshape(-1) for v in values])


# -- d2l's TensorFlow names: device scopes and the alias table ------------------------------------
class DeviceScope:
    """d2l's ``tf.device(name)``: a scope (``with d2l.try_gpu(): ...``) that prints as its device.

    TensorFlow's own scope object prints as an address, so two scopes of
    one device would not compare as the same device; this one is re-entrant
    and equal to any scope of the same device.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._open: list[Any] = []

    def __enter__(self) -> Any:
        scope = tf.device(self.name)
        self._open.append(scope)
        return scope.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self._open.pop().__exit__(*exc)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeviceScope) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"tf.device({self.name!r})"


def cpu() -> DeviceScope:
    """The CPU device, as d2l's TensorFlow module gives it: a ``tf.device('/CPU:0')`` scope."""
    return DeviceScope("/CPU:0")


def gpu(i: int = 0) -> DeviceScope:
    """GPU ``i``, as a ``tf.device(f'/GPU:{i}')`` scope (d2l's meaning)."""
    return DeviceScope(f"/GPU:{i}")


def num_gpus() -> int:
    """The number of GPUs TensorFlow sees (physical devices: listing them starts no runtime)."""
    return len(tf.config.list_physical_devices("GPU"))


def _size(a: Any) -> int:
    """The number of elements of ``a``, as a Python int (d2l: ``tf.size(a).numpy()``)."""
    return int(tf.size(a).numpy())


def _numpy(x: Any, *args: Any, **kwargs: Any) -> np.ndarray:
    """A NumPy copy of a tensor or variable (d2l: ``x.numpy()``); NumPy input is returned as is."""
    return to_numpy(x)


#: d2l 1.0.3's alias table for TensorFlow: the same names, the same meaning.
ALIASES: dict[str, Any] = {
    "nn_Module": tf.keras.Model,
    "size": _size, "numpy": _numpy, "reshape": tf.reshape,
    "ones_like": tf.ones_like, "ones": tf.ones, "zeros_like": tf.zeros_like, "zeros": tf.zeros,
    "meshgrid": tf.meshgrid, "sin": tf.sin, "sinh": tf.sinh, "cos": tf.cos, "cosh": tf.cosh,
    "tanh": tf.tanh, "linspace": tf.linspace, "exp": tf.exp, "log": tf.math.log,
    "normal": tf.random.normal, "rand": tf.random.uniform, "matmul": tf.matmul,
    "batch_matmul": tf.matmul, "reduce_sum": tf.reduce_sum, "reduce_mean": tf.reduce_mean,
    "argmax": tf.argmax, "tensor": tf.constant, "arange": tf.range, "astype": tf.cast,
    "int32": tf.int32, "int64": tf.int64, "float32": tf.float32, "transpose": tf.transpose,
    "concat": tf.concat, "stack": tf.stack, "abs": tf.abs, "eye": tf.eye, "sigmoid": tf.sigmoid,
    "expand_dims": tf.expand_dims, "repeat": tf.repeat,
}
