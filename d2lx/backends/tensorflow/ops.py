"""TensorFlow array primitives for the core loader (see ``d2lx.data.ArrayOps``)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


class TFOps:
    """Creates tensors on one TensorFlow device (``"/CPU:0"``, ``"/GPU:1"``); gathers with ``tf.gather``.

    Why ``tf.identity`` under ``tf.device``: an eager ``tf.constant`` is built
    in host memory; the identity op placed on the target device is what copies
    it there, once, so the loader's per-step slices never cross the bus.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.device_key = f"tensorflow:{device}"

    def asarray(self, array: np.ndarray) -> tf.Tensor:
        with tf.device(self.device):
            return tf.identity(tf.constant(np.ascontiguousarray(array)))

    def indices(self, order: np.ndarray) -> tf.Tensor:
        with tf.device(self.device):
            return tf.identity(tf.constant(order.astype(np.int64)))

    def take(self, array: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
        with tf.device(self.device):
            return tf.gather(array, indices, axis=0)
