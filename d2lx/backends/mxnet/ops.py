"""MXNet array primitives for the core loader (see ``d2lx.data.ArrayOps``)."""

from __future__ import annotations

import mxnet as mx
import numpy as onp
from mxnet import np


class MXNetOps:
    """Creates ``mxnet.np`` arrays on one context; gathers rows with ``np.take``.

    ``mxnet.np`` (not the legacy ``mx.nd``) because the backend runs in NumPy
    mode (``npx.set_np()``), where legacy ``nd`` operators reject these arrays.
    """

    def __init__(self, ctx: mx.Context) -> None:
        self.ctx = ctx
        self.device_key = f"mxnet:{ctx}"

    def asarray(self, array: onp.ndarray) -> np.ndarray:
        return np.array(onp.ascontiguousarray(array), dtype=array.dtype, ctx=self.ctx)

    def indices(self, order: onp.ndarray) -> np.ndarray:
        return np.array(order.astype(onp.int64), dtype=onp.int64, ctx=self.ctx)

    def take(self, array: np.ndarray, indices: np.ndarray) -> np.ndarray:
        return np.take(array, indices, axis=0)
