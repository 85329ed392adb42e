"""The TensorFlow/Keras backend package: the adapter behind ``from d2lx import tensorflow as d2l``.

``Module`` is a ``tf.keras.Model`` (with two Keras 3 traps undone, see
:mod:`d2lx.backends.tensorflow.module`); the concise model uses
``tf.keras.layers.Dense(1)``, ``MeanSquaredError`` and Keras' ``SGD``; the
scratch model uses ``tf.Variable`` s and the hand-written
:class:`~d2lx.backends.tensorflow.models.SGD` of d2l 3.4. Training steps are
compiled with ``tf.function`` (:mod:`d2lx.backends.tensorflow.step`).
``NAMESPACE`` is what the reader's namespace holds, with d2l 1.0.3's
TensorFlow alias table and device scopes, defined here.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from types import ModuleType
from typing import Any

# TensorFlow's C++ runtime logs banners (oneDNN, CUDA probing, CPU features) to
# stderr at import. The level is read once, when TensorFlow loads, so it must be
# set before the import below; a value the user chose is left alone.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: absl's log line ``I0000 00:00:...] text``: its first letter is the severity (INFO, WARNING, ERROR, FATAL).
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} ")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def _import_tensorflow() -> ModuleType:
    """``import tensorflow``, with its start-up log lines held to ``TF_CPP_MIN_LOG_LEVEL``.

    TensorFlow 2.21 logs while it loads (oneDNN's INFO banner, once per
    shared library) before absl's logging is initialised, and those lines
    ignore the level. So the import writes to a temporary file, and the
    lines the level admits (with anything that is not an absl line) are
    written back to stderr afterwards, in order.
    """
    try:
        level = int(os.environ["TF_CPP_MIN_LOG_LEVEL"])
        sys.stderr.flush()
        saved = os.dup(2)
    except (ValueError, OSError, AttributeError):  # no usable fd 2, or a level TF reads its own way
        import tensorflow

        return tensorflow
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            kept = [ln for ln in lines if not (m := _ABSL_LINE.match(ln)) or "IWEF".index(m[1]) >= level]
            shown = any(_ABSL_LINE.match(ln) for ln in kept)
            os.write(2, "".join(ln for ln in kept if shown or not ln.startswith(_ABSL_PREAMBLE)).encode())
    return tensorflow


_tf = _import_tensorflow()
# The adapter's modules import TensorFlow themselves: they come after the quiet import above.
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402  (imported already, quietly)

from d2lx import namespace as _namespace  # noqa: E402
from d2lx.backends.tensorflow.distributed import TFOps  # noqa: E402
from d2lx.backends.tensorflow.models import SGD, LinearRegression, LinearRegressionScratch  # noqa: E402
from d2lx.backends.tensorflow.module import Module  # noqa: E402
from d2lx.backends.tensorflow.trainer import Trainer  # noqa: E402
from d2lx.loader import to_numpy  # noqa: E402

BACKEND = "tensorflow"


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


def framework_version() -> str:
    """TensorFlow's version plus the Keras it runs (``"2.21.0, keras 3.15.1"``)."""
    return f"{_tf.__version__}, keras {_tf.keras.__version__}"


def list_devices() -> list[str]:
    """Devices this backend can use, in d2lx spelling (TensorFlow's logical devices)."""
    return ["cpu"] + [f"gpu:{i}" for i in range(len(_tf.config.list_logical_devices("GPU")))]


def default_array_ops() -> TFOps:
    return TFOps("/CPU:0")


NAMESPACE = _namespace.contents(
    backend=BACKEND, aliases=ALIASES, cpu=cpu, gpu=gpu, num_gpus=num_gpus,
    default_array_ops=default_array_ops, framework_version=framework_version, list_devices=list_devices,
    classes={"Module": Module, "Trainer": Trainer, "LinearRegressionScratch": LinearRegressionScratch,
             "LinearRegression": LinearRegression, "SGD": SGD},
)
