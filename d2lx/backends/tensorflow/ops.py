"""TensorFlow arrays and devices: the core's array primitives, d2l's alias table, ``cpu``/``gpu``.

Also the plumbing the compiled step is built from: slicing and checking
batches in the graph, and :class:`Compiled`, concrete functions that later
fits re-bind to their own variables and call without argument binding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from d2lx.errors import ArgumentTypeError
from d2lx.loader import host_array, to_numpy


@functools.lru_cache(maxsize=256)
def _device_key(name: str) -> tuple[str, int]:
    """``("CPU", 0)`` for ``"/job:localhost/replica:0/task:0/device:CPU:0"`` or ``"/CPU:0"``."""
    spec = tf.DeviceSpec.from_string(name)
    return (spec.device_type or "CPU").upper(), spec.device_index or 0


def same_device(current: str, target: str) -> bool:
    """Whether TensorFlow device names ``current`` and ``target`` name the same device.

    An empty name (a tensor whose placement TensorFlow has not fixed) is not
    known to be anywhere, so it is never "the same".
    """
    return bool(current) and _device_key(current) == _device_key(target)


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
        self._on_cpu = _device_key(device)[0] == "CPU"

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


# -- what the compiled step slices and checks with (see ``step.py``) ---------------------------
def batch_spec(batch: Sequence[Any]) -> tuple[tf.TensorSpec, ...]:
    """The signature of a batch like ``batch``: its arrays' shapes with a ``None`` batch dimension."""
    return tuple(tf.TensorSpec((None, *t.shape[1:]), tf.as_dtype(t.dtype)) for t in batch)


def batch_at(tensors: Sequence[Any], order: tf.Tensor | None, i: tf.Tensor,
             batch_size: int) -> tuple[Any, ...]:
    """Batch ``i`` of the epoch, in the graph: its rows of ``order`` gathered (or sliced, unshuffled).

    Each step gathers its own rows (a few MB that stay in the cache) rather
    than the epoch gathering the whole shuffled data set first, which writes
    and reads back a data set-sized array every epoch. The last batch may
    be shorter.
    """
    lo = i * batch_size
    hi = tf.minimum(lo + batch_size, tf.shape(tensors[0], out_type=tf.int64)[0])
    if order is None:
        return tuple(t[lo:hi] for t in tensors)
    rows = order[lo:hi]
    return tuple(tf.gather(t, rows) for t in tensors)


_INDICES: list[tf.Tensor] = []  # index(k) for every k asked so far


def index(k: int) -> tf.Tensor:
    """The int64 scalar ``k`` as a host tensor, made once per process: passing it costs no eager op."""
    while len(_INDICES) <= k:
        with tf.device("/CPU:0"):
            _INDICES.append(tf.constant(len(_INDICES), tf.int64))
    return _INDICES[k]


def all_finite(tensors: Sequence[Any]) -> tf.Tensor:
    """A boolean scalar: are all floating-point values of ``tensors`` finite? (in the graph)"""
    flags = [tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(t))) for t in tensors
             if tf.as_dtype(t.dtype).is_floating]
    return tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)


def loss_scalar(loss: Any, what: str) -> tf.Tensor:
    """A step's loss as a float32 scalar; a loss of several numbers is refused with the fix."""
    loss = tf.convert_to_tensor(loss)
    if loss.shape.num_elements() not in (None, 1):
        raise ArgumentTypeError(f"{what} must return the batch's loss as one number (a scalar, e.g. "
                                f"tf.reduce_mean(l)), got shape {tuple(loss.shape)}")
    return tf.reshape(tf.cast(loss, tf.float32), [])


class Compiled:
    """One fit's compiled epoch functions (``train``, ``val``), reusable by later fits.

    The functions are traced when made, with the variables of the step that
    made them (``owner``: model, optimizer and step variables, in
    ``TFStep.state()`` order). A later fit whose step has the *same
    structure* (see ``TFStep.structure_key``) reuses them: when the
    concrete functions' only captured inputs are those variables' resource
    handles, :meth:`bind` points them at the new fit's variables with
    ``ConcreteFunction.set_external_captures``, TensorFlow's own way of
    re-binding a traced function's state (used when loading a SavedModel).
    The graph is unchanged: no retracing, no graph re-optimisation.
    """

    def __init__(self, fns: dict[str, Any], owner: Sequence[Any], reusable: bool) -> None:
        self.fns = fns
        self.concrete = {name: fn.get_concrete_function() for name, fn in fns.items()}
        # (A mirrored variable has no handle outside its replicas: data-parallel steps are not reused.)
        self._owner = [id(tf_variable(v).handle) for v in owner] if reusable else []
        self._bound = list(self._owner)
        # The captures as traced (set_external_captures replaces a function's list).
        self._captures = {name: list(cf.captured_inputs) for name, cf in self.concrete.items()}
        owned = set(self._owner)
        self.rebindable = reusable and all(id(t) in owned for caps in self._captures.values() for t in caps)

    def bind(self, state: Sequence[Any]) -> None:
        """Make the functions read and write ``state`` (same layout as the owner's variables)."""
        if not self.rebindable:
            return
        handles = [tf_variable(v).handle for v in state]
        ids = [id(h) for h in handles]
        if ids == self._bound:
            return
        position = {owner_id: i for i, owner_id in enumerate(self._owner)}
        for name, cf in self.concrete.items():
            cf.set_external_captures([handles[position[id(t)]] for t in self._captures[name]])
        self._bound = ids

    def caller(self, name: str) -> Callable[..., Any]:
        """Function ``name`` as a call ``(tensors, *indices)`` that skips TensorFlow's argument binding.

        ``ConcreteFunction.__call__`` canonicalises and casts every argument
        against the signature: about a third of a small step's time on a
        CPU. The epoch's inputs are d2lx's own loader's arrays and indices,
        made to fit the signature, so they go straight to ``_call_flat`` (the
        public call stays the fallback). Fetch after :meth:`bind`: it reads
        the bound captures once.
        """
        cf = self.concrete[name]
        call_flat = getattr(cf, "_call_flat", None)
        if call_flat is None:
            return cf
        captured = cf.captured_inputs
        return lambda tensors, *indices: call_flat([*tensors, *indices], captured)


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
