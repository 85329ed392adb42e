"""The MXNet/Gluon backend package: the adapter behind ``from d2lx import mxnet as d2l``.

``Module`` is a ``gluon.Block``; the concise model uses a hybridized
``nn.Dense``, ``gluon.loss.L2Loss`` (scaled to the MSE) and ``gluon.Trainer``;
the scratch model uses ``mxnet.np`` arrays with ``attach_grad`` and the
hand-written :class:`~d2lx.backends.mxnet.models.SGD` of d2l 3.4.
``NAMESPACE`` is what the reader's namespace holds.

MXNet is retired upstream: 1.9.1 is its last release. It uses ``np.bool``,
which NumPy 1.24 removed, so it imports only with ``numpy<1.24`` and needs an
environment of its own (``backends/mxnet.txt``).

Importing this package calls ``npx.set_np()``, as d2l's MXNet chapters do:
Gluon then takes and returns ``mxnet.np`` arrays (legacy ``mx.nd`` operators
reject them).
"""

from __future__ import annotations

import warnings as _warnings

# MXNet 1.9.1's import touches NumPy names deprecated long after its release
# (`np.bool`, distutils' LooseVersion). The warnings are about MXNet's own
# code, which will never change; silencing them here keeps them out of
# readers' logs and lets `python -W error::DeprecationWarning` import the
# backend. Only the import is covered; later warnings are untouched.
with _warnings.catch_warnings():
    _warnings.simplefilter("ignore", DeprecationWarning)
    import mxnet as _mx
    from mxnet import npx as _npx

_npx.set_np()

from d2lx import namespace as _namespace  # noqa: E402
from d2lx.backends.mxnet import ops as _ops  # noqa: E402
from d2lx.backends.mxnet.models import SGD, LinearRegression, LinearRegressionScratch  # noqa: E402
from d2lx.backends.mxnet.module import Module  # noqa: E402
from d2lx.backends.mxnet.trainer import Trainer  # noqa: E402

BACKEND = "mxnet"


def framework_version() -> str:
    return str(_mx.__version__)


def list_devices() -> list[str]:
    """Devices this backend can use, in d2lx spelling."""
    return ["cpu"] + [f"gpu:{i}" for i in range(_ops.visible_gpus())]


def default_array_ops() -> _ops.MXNetOps:
    return _ops.MXNetOps(_mx.cpu())


NAMESPACE = _namespace.contents(
    backend=BACKEND, aliases=_ops.ALIASES, cpu=_ops.cpu, gpu=_ops.gpu, num_gpus=_ops.num_gpus,
    default_array_ops=default_array_ops, framework_version=framework_version, list_devices=list_devices,
    classes={"Module": Module, "Trainer": Trainer, "LinearRegressionScratch": LinearRegressionScratch,
             "LinearRegression": LinearRegression, "SGD": SGD},
)
