"""MXNet arrays and contexts: the core's array primitives, d2l's alias table, ``cpu``/``gpu``.

Everything here is ``mxnet.np`` (not the legacy ``mx.nd``): the backend runs
in NumPy mode (``npx.set_np()``, as d2l's MXNet chapters do), where legacy
``nd`` operators reject these arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mxnet as mx
import numpy as onp
from mxnet import np, npx
from mxnet.gluon import nn

from d2lx.helpers import method
from d2lx.loader import gather_block_bytes, host_array, to_numpy


def as_np(value: Any) -> Any:
    """A legacy ``mx.nd.NDArray`` as an ``mxnet.np`` view (zero-copy); anything else unchanged.

    A reader's code in a legacy scope can hand back ``nd`` arrays, which the
    ``mxnet.np`` operators used here would reject.
    """
    if isinstance(value, mx.nd.NDArray) and not isinstance(value, np.ndarray):
        return value.as_np_ndarray()
    return value


class MXNetOps:
    """:class:`d2lx.loader.ArrayOps` on one context; rows are gathered with ``np.take``."""

    def __init__(self, ctx: mx.Context) -> None:
        self.ctx = ctx
        self.device_key = f"mxnet:{ctx}"
        self.gather_block_bytes = gather_block_bytes(ctx.device_type == "cpu")

    def asarray(self, array: onp.ndarray) -> np.ndarray:
        return np.array(onp.ascontiguousarray(array), dtype=array.dtype, ctx=self.ctx)

    def indices(self, order: onp.ndarray) -> np.ndarray:
        return np.array(order.astype(onp.int64), dtype=onp.int64, ctx=self.ctx)

    def take(self, array: np.ndarray, indices: np.ndarray) -> np.ndarray:
        return np.take(array, indices, axis=0)

    def split(self, array: np.ndarray, size: int) -> Sequence[np.ndarray]:
        # Slices, not np.split: a row slice is a view, where np.split copies every batch
        return [array[i:i + size] for i in range(0, array.shape[0], size)]

    def to_device(self, value: Any) -> np.ndarray:
        """MXNet arrays move with ``as_in_ctx`` only if elsewhere; host values become float32 arrays.

        A Gluon ``DataLoader`` over ``ArrayDataset`` yields ``mxnet.np`` arrays
        already on the CPU context: those are returned as they are.
        """
        value = as_np(value)
        if isinstance(value, np.ndarray):
            return value if value.ctx == self.ctx else value.as_in_ctx(self.ctx)
        array = host_array(to_numpy(value))
        return np.array(array, dtype=array.dtype, ctx=self.ctx)

    def to_host(self, values: Sequence[Any]) -> onp.ndarray:
        """The values as one float64 NumPy vector: one operator on the device, one copy.

        An epoch of d2lx's loop gives one loss per step, all of one shape
        (scalars): they are stacked, one ``np.stack`` (about 0.1 ms for 32
        losses on the CPU). Values of mixed shapes or dtypes are flattened and
        concatenated instead, which costs one ``reshape`` operator per value
        (about 20 us each: 1 ms for 32). Host values (NumPy, Python floats:
        what a reader's own loop may plot) are converted on the host and put
        back in their places.
        """
        device: list[tuple[int, np.ndarray]] = []
        host: list[onp.ndarray | None] = []
        for value in values:
            value = as_np(value)
            if isinstance(value, np.ndarray):
                device.append((len(host), value))
                host.append(None)
            else:
                host.append(onp.asarray(to_numpy(value), dtype=onp.float64).reshape(-1))
        if device:
            flat = _flat_on_host([v for _, v in device])
            start = 0
            for index, value in device:
                host[index] = flat[start:start + value.size]
                start += value.size
        parts = [h for h in host if h is not None]
        return onp.concatenate(parts) if parts else onp.zeros((0,), dtype=onp.float64)


def _flat_on_host(arrays: list[np.ndarray]) -> onp.ndarray:
    """Device arrays (any contexts) as one float64 NumPy vector, in order: one device operator, one copy."""
    ctx = arrays[0].ctx
    arrays = [a if a.ctx == ctx else a.as_in_ctx(ctx) for a in arrays]
    first = arrays[0]
    shape, dtype = first.shape, first.dtype
    if all(a.shape == shape and a.dtype == dtype for a in arrays):
        joined = np.stack(arrays) if len(arrays) > 1 else first
    else:
        if len({a.dtype for a in arrays}) > 1:
            arrays = [a.astype(onp.float64) for a in arrays]
        joined = np.concatenate([a.reshape(-1) for a in arrays])
    return onp.asarray(joined.asnumpy(), dtype=onp.float64).reshape(-1)


def visible_gpus() -> int:
    """GPUs MXNet can use; 0 on a CPU-only build (whose query may also raise)."""
    try:
        return int(npx.num_gpus())
    except mx.base.MXNetError:
        return 0


def cpu() -> mx.Context:
    """The CPU context (d2l: ``npx.cpu()``)."""
    return npx.cpu()


def gpu(i: int = 0) -> mx.Context:
    """GPU context ``i`` (d2l: ``npx.gpu(i)``); made without checking that the GPU exists, as in MXNet."""
    return npx.gpu(i)


def num_gpus() -> int:
    """The number of GPUs MXNet can use (d2l: ``npx.num_gpus()``; 0 where a CPU-only build raises)."""
    return visible_gpus()


def _size(a: Any) -> Any:
    """The number of elements (d2l: ``a.size``)."""
    return a.size


def _transpose(a: Any) -> Any:
    """The transpose (d2l: ``a.T``)."""
    return a.T


def _numpy(x: Any, *args: Any, **kwargs: Any) -> onp.ndarray:
    """A NumPy copy of an array from any context (d2l: ``x.asnumpy()``)."""
    return to_numpy(x)


#: d2l 1.0.3's alias table for MXNet: the same names, the same meaning.
ALIASES: dict[str, Any] = {
    "nn_Module": nn.Block, "size": _size, "transpose": _transpose, "sigmoid": npx.sigmoid,
    "batch_matmul": npx.batch_dot,
    "ones_like": np.ones_like, "ones": np.ones, "zeros_like": np.zeros_like, "zeros": np.zeros,
    "arange": np.arange, "meshgrid": np.meshgrid, "sin": np.sin, "sinh": np.sinh, "cos": np.cos,
    "cosh": np.cosh, "tanh": np.tanh, "linspace": np.linspace, "exp": np.exp, "log": np.log,
    "tensor": np.array, "normal": np.random.normal, "randn": np.random.randn,
    "expand_dims": np.expand_dims, "rand": np.random.rand, "matmul": np.dot, "int32": np.int32,
    "int64": np.int64, "float32": np.float32, "concat": np.concatenate, "stack": np.stack,
    "abs": np.abs, "eye": np.eye,
    "numpy": _numpy, "reshape": method("reshape"), "to": method("as_in_ctx"),
    "reduce_sum": method("sum"), "argmax": method("argmax"), "astype": method("astype"),
    "reduce_mean": method("mean"), "swapaxes": method("swapaxes"), "repeat": method("repeat"),
}
