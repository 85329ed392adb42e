"""The TensorFlow/Keras backend: ``from d2lx import tensorflow as d2l``.

``Module`` is a ``tf.keras.Model`` (with Keras 3's ``self.loss = None``
shadowing undone, see :mod:`d2lx.backends.tensorflow.module`); the concise
model uses ``tf.keras.layers.Dense(1)``, ``tf.keras.losses.MeanSquaredError``
and ``tf.keras.optimizers.SGD``; the scratch model uses ``tf.Variable`` s and
the hand-written :class:`SGD` of d2l 3.4. Training steps run in
``tf.function`` (see :mod:`d2lx.backends.tensorflow.trainer`).
"""

from __future__ import annotations

import os

# TensorFlow's C++ runtime logs banners (oneDNN, CUDA probing, CPU features) to
# stderr at import. The level is read once, when TensorFlow loads, so it must be
# set before the import below; a value the user chose is left alone.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as _tf

from d2lx.backends.tensorflow.models import (
    SGD,
    LinearRegression,
    LinearRegressionScratch,
)
from d2lx.backends.tensorflow.module import Module
from d2lx.backends.tensorflow.ops import TFOps
from d2lx.backends.tensorflow.trainer import Trainer
from d2lx.data import ArrayData, DataModule, SyntheticRegressionData
from d2lx.hyperparameters import HyperParameters, add_to_class

BACKEND = "tensorflow"


def framework_version() -> str:
    """TensorFlow's version plus the Keras it runs (``"2.21.0, keras 3.15.1"``)."""
    return f"{_tf.__version__}, keras {_tf.keras.__version__}"


def list_devices() -> list[str]:
    """Devices this backend can use, in d2lx spelling (TensorFlow's logical devices)."""
    return ["cpu"] + [f"gpu:{i}" for i in range(len(_tf.config.list_logical_devices("GPU")))]


def default_array_ops() -> TFOps:
    return TFOps("/CPU:0")


__all__ = [
    "BACKEND",
    "SGD",
    "ArrayData",
    "DataModule",
    "HyperParameters",
    "LinearRegression",
    "LinearRegressionScratch",
    "Module",
    "SyntheticRegressionData",
    "Trainer",
    "add_to_class",
    "default_array_ops",
    "framework_version",
    "list_devices",
]
