"""The TensorFlow/Keras backend package: the adapter behind ``from d2lx import tensorflow as d2l``.

``Module`` is a ``tf.keras.Model`` (with two Keras 3 traps undone, see
:mod:`d2lx.backends.tensorflow.module`); the concise model uses
``tf.keras.layers.Dense(1)``, ``MeanSquaredError`` and Keras' ``SGD``; the
scratch model uses ``tf.Variable`` s and the hand-written
:class:`~d2lx.backends.tensorflow.models.SGD` of d2l 3.4. Training steps are
compiled with ``tf.function`` (:mod:`d2lx.backends.tensorflow.step`).
``NAMESPACE`` is what the reader's namespace holds.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from types import ModuleType

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
from d2lx import namespace as _namespace  # noqa: E402
from d2lx.backends.tensorflow import ops as _ops  # noqa: E402
from d2lx.backends.tensorflow.models import SGD, LinearRegression, LinearRegressionScratch  # noqa: E402
from d2lx.backends.tensorflow.module import Module  # noqa: E402
from d2lx.backends.tensorflow.trainer import Trainer  # noqa: E402

BACKEND = "tensorflow"


def framework_version() -> str:
    """TensorFlow's version plus the Keras it runs (``"2.21.0, keras 3.15.1"``)."""
    return f"{_tf.__version__}, keras {_tf.keras.__version__}"


def list_devices() -> list[str]:
    """Devices this backend can use, in d2lx spelling (TensorFlow's logical devices)."""
    return ["cpu"] + [f"gpu:{i}" for i in range(len(_tf.config.list_logical_devices("GPU")))]


def default_array_ops() -> _ops.TFOps:
    return _ops.TFOps("/CPU:0")


NAMESPACE = _namespace.contents(
    backend=BACKEND, aliases=_ops.ALIASES, cpu=_ops.cpu, gpu=_ops.gpu, num_gpus=_ops.num_gpus,
    default_array_ops=default_array_ops, framework_version=framework_version, list_devices=list_devices,
    classes={"Module": Module, "Trainer": Trainer, "LinearRegressionScratch": LinearRegressionScratch,
             "LinearRegression": LinearRegression, "SGD": SGD},
)
